"""`--help` and bad input answer before the heavy libraries load (MLflow, Optuna, scikit-learn,
matplotlib, pandas, torchvision): each of those costs seconds a user would wait for a usage line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_env

HEAVY = ("mlflow", "optuna", "sklearn", "matplotlib", "pandas", "torchvision")

# What each command may load first: the model registry needs PyTorch to list the architectures.
CASES = [
    ("cifar_mlflow.train", ["--help"], 0, {"torch"}),
    ("cifar_mlflow.train", ["--recipe", "fast", "--print-config"], 0, {"torch"}),
    ("cifar_mlflow.train", ["--lr", "-1"], 2, {"torch"}),
    ("cifar_mlflow.train", ["--arch", "alexnet9000"], 2, {"torch"}),
    ("cifar_mlflow.tune", ["--help"], 0, {"torch"}),
    ("cifar_mlflow.tune", ["--trials", "0"], 2, {"torch"}),
    ("cifar_mlflow.bench", ["--sections", "nope"], 2, {"torch"}),
    ("cifar_mlflow.compare", ["--help"], 0, set()),
    ("cifar_mlflow.compare", ["--top", "0"], 2, set()),
    ("cifar_mlflow.cli", ["--help"], 0, set()),
    ("cifar_mlflow.cli", ["train", "--lr", "-1"], 2, {"torch"}),
]

PROBE = """
import contextlib, importlib, io, json, sys
module, argv = sys.argv[1], sys.argv[2:]
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as exc:
        code = exc.code
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"code": code, "loaded": loaded, "stdout": out.getvalue(), "stderr": err.getvalue()}))
"""


@pytest.mark.parametrize(("module", "argv", "code", "allowed"), CASES,
                         ids=[f"{m.split('.')[1]} {' '.join(a)}" for m, a, _, _ in CASES])
def test_answers_before_heavy_imports(module, argv, code, allowed, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, module, *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=run_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == code, result["stderr"]
    if code == 2:  # one clear line, nothing created where the command ran
        assert result["stderr"].startswith("error: ") and result["stderr"].count("\n") == 1, result["stderr"]
        assert list(tmp_path.iterdir()) == []
    elif "--print-config" in argv:
        assert result["stdout"].startswith("recipe: ")
    else:
        assert "usage:" in result["stdout"]
    loaded = set(result["loaded"])
    assert not loaded & set(HEAVY), f"{module} {argv} loaded {sorted(loaded & set(HEAVY))}"
    assert "torch" not in loaded or "torch" in allowed


def test_package_names_load_on_first_use():
    proc = subprocess.run([sys.executable, "-c", (
        "import sys, cifar_mlflow\n"
        "before = 'torch' in sys.modules\n"
        "from cifar_mlflow import TrainConfig, list_models, run\n"
        "print(before, 'cnn' in list_models(), TrainConfig.__name__, run.__module__)")],
        capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.stdout.split() == ["False", "True", "TrainConfig", "cifar_mlflow.train.run"], proc.stderr[-2000:]
