"""`cifar-mlflow COMMAND`: the installed console script, its dispatch to the commands, and the shell
completion generated from the commands' parsers, run in a real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_env

SCRIPT = Path(sys.executable).parent / "cifar-mlflow"


def cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=run_env(), cwd=cwd, timeout=120)


def test_the_console_script_lists_every_command():
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "tune", "compare", "bench", "completion"):
        assert f"\n    {command}" in proc.stdout, proc.stdout


def test_a_command_answers_as_its_module_does_with_its_own_name_in_the_usage(tmp_path):
    proc = cli("train", "--arch", "cnn", "--epochs", "3", "--print-config")
    module = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--arch", "cnn", "--epochs", "3",
                             "--print-config"], capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.returncode == module.returncode == 0, proc.stderr
    assert proc.stdout == module.stdout and "arch: cnn" in proc.stdout and "epochs: 3" in proc.stdout
    assert cli("tune", "--help").stdout.startswith("usage: cifar-mlflow tune ")
    package = subprocess.run([sys.executable, "-m", "cifar_mlflow", "compare", "--help"], capture_output=True,
                             text=True, env=run_env(), timeout=120)
    assert package.stdout.startswith("usage: python -m cifar_mlflow compare "), package.stdout[:200]
    bad = cli("train", "--lr", "-1", cwd=tmp_path)  # the command's own checks, its own exit status
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_command_is_one_line_naming_the_commands():
    proc = cli("trian", "--arch", "cnn")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "invalid choice: 'trian'" in proc.stderr and "'train'" in proc.stderr


@pytest.fixture(scope="module")
def bash_completion(tmp_path_factory) -> Path:
    proc = cli("completion", "bash")
    assert proc.returncode == 0, proc.stderr
    script = tmp_path_factory.mktemp("completion") / "cifar-mlflow.bash"
    script.write_text(proc.stdout)
    return script


def complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of `words`, by the generated completion function."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
               f"COMP_LINE=\"{' '.join(words)}\"; COMP_POINT=${{#COMP_LINE}}; _shtab_cifar_mlflow; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sorted(filter(None, proc.stdout.splitlines()))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_options_their_words_and_folders(bash_completion, tmp_path):
    (tmp_path / "data-cifar").mkdir()
    (tmp_path / "data.txt").write_text("")
    assert complete(bash_completion, ["cifar-mlflow", "t"], tmp_path) == ["train", "tune"]
    assert complete(bash_completion, ["cifar-mlflow", "train", "--ar"], tmp_path) == ["--arch"]
    assert complete(bash_completion, ["cifar-mlflow", "tune", "--pruner-"], tmp_path) == [
        "--pruner-percentile", "--pruner-startup-trials", "--pruner-warmup-epochs"]
    assert complete(bash_completion, ["cifar-mlflow", "train", "--precision", ""], tmp_path) == [
        "auto", "bf16", "fp16", "fp32"]
    assert complete(bash_completion, ["cifar-mlflow", "tune", "--sampler", "c"], tmp_path) == ["cmaes"]
    assert complete(bash_completion, ["cifar-mlflow", "train", "--data-dir", "da"], tmp_path) == ["data-cifar"]


def test_zsh_completion_is_a_compdef_for_the_script():
    proc = cli("completion", "zsh")
    assert proc.returncode == 0 and proc.stdout.startswith("#compdef cifar-mlflow")
    assert "--precision" in proc.stdout and "bf16" in proc.stdout
