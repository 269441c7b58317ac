"""optuna-dashboard opens a study the tuner wrote, as docs/tuning.md tells users to run it and as the compose
stack's service runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cifar_mlflow.tracking.local_server import free_port
from cifar_mlflow.tune import main
from tests.conftest import ROOT, run_env


def dashboard_command(how: str, storage: str, port: int) -> tuple[list[str], dict[str, str]]:
    """optuna-dashboard as docs/tuning.md runs it, or as the compose stack's service does (its own entrypoint,
    the storage URL from the environment; only the address and port changed for a test on loopback)."""
    if how == "command line":
        return [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1",
                "--port", str(port)], run_env()
    service = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())["services"]["optuna-dashboard"]
    command = [sys.executable, *service["entrypoint"][1:]]
    command[-1] = command[-1].replace("host='0.0.0.0', port=8080", f"host='127.0.0.1', port={port}")
    assert str(port) in command[-1] and "OPTUNA_STORAGE" in command[-1] and storage not in " ".join(command)
    return command, run_env(OPTUNA_STORAGE=storage)


@pytest.mark.parametrize("how", ["command line", "compose service"])
def test_optuna_dashboard_opens_the_study_storage(how, imagefolder, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "1",
                 "--batch-size", "16", "--no-progress", "--trials", "2", "--study-name", "dash", "--storage", storage,
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--checkpoint-dir", str(tmp_path)]) == 0
    port = free_port()
    command, env = dashboard_command(how, storage, port)
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
            except OSError:
                why = proc.stderr.read() if proc.poll() else "no answer"
                assert proc.poll() is None and time.time() < deadline, why
                time.sleep(0.5)
        (study,) = studies
        assert study["study_name"] == "dash" and study["directions"] == ["maximize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10) as response:
            detail = json.load(response)
        assert len(detail["trials"]) == 2
        attrs = {a["key"] for trial in detail["trials"] for a in trial["user_attrs"]}
        assert "mlflow_run_id" in attrs  # from a trial in the dashboard to its MLflow run
    finally:
        proc.terminate()
        proc.wait(timeout=30)
