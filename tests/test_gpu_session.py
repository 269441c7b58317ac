"""tools/gpu_session.sh, the GPU section of docs/benchmarks.md as one script, rehearsed on the CPU
(`DEVICE=cpu`, tiny runs): what a session lent a GPU machine runs first, with no time to debug it there."""

from __future__ import annotations

import sqlite3
import subprocess
import tarfile

import pytest

from tests.conftest import ROOT, run_env, write_imagefolder

SCRIPT = ROOT / "tools" / "gpu_session.sh"


def session(*sections: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    env = run_env(OUT=str(tmp_path / "out"), STORE=str(tmp_path / "store"), DEVICE="cpu", **env)
    return subprocess.run(["bash", str(SCRIPT), *sections], env=env, capture_output=True, text=True, timeout=600)


def test_an_unknown_section_is_refused_before_anything_is_created(tmp_path) -> None:
    proc = session("check", "benchmark", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "unknown section: benchmark (choose from: check bench fast tune reference)"
    assert list(tmp_path.iterdir()) == []


def test_the_check_section_trains_logs_and_brings_back_the_store(tmp_path) -> None:
    proc = session("check", tmp_path=tmp_path, EXTRA_ARGS="--epochs 1 --max-train-samples 256 --max-eval-samples 256 "
                                                        "--batch-size 32")
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu.log", "stores.tar.gz", "summary.txt"]
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0].split() == ["experiment", "run", "id", "status", "wall", "s", "epochs", "val_acc", "test_acc"]
    (row,) = summary[1:]
    assert row.split()[:2] == ["gpu-check", "check-cpu"] and row.split()[3] == "FINISHED"
    assert "python " in proc.stdout and "torch " in proc.stdout and "cuda: not available" in proc.stdout
    with tarfile.open(out / "stores.tar.gz") as tar:
        tar.extract("mlflow.db", tmp_path / "unpacked", filter="data")
    with sqlite3.connect(tmp_path / "unpacked" / "mlflow.db") as db:
        assert db.execute("select status from runs").fetchall() == [("FINISHED",)]


@pytest.mark.faults
def test_a_run_over_its_limit_ends_killed_and_the_script_goes_on(tmp_path) -> None:
    write_imagefolder(tmp_path / "data", n_train=40, n_test=10)
    proc = session("reference", tmp_path=tmp_path, DATA_DIR=str(tmp_path / "data"),
                   REFERENCE_ARCHS="mobilenetv3_small mlp", REFERENCE_S="20",
                   EXTRA_ARGS="--epochs 1000 --batch-size 16")
    assert proc.returncode == 2, proc.stdout[-4000:]  # both stopped at their limit, the second after the first
    assert proc.stdout.count("stopped after 20s") == 2
    with sqlite3.connect(tmp_path / "store" / "mlflow.db") as db:
        runs = sorted(db.execute("select name, status from runs"))
    ended = [(name.split("-")[0], status) for name, status in runs]
    assert ended == [("mlp", "KILLED"), ("mobilenetv3_small", "KILLED")]
