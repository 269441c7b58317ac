"""optuna-dashboard opens a study the tuner wrote, as docs/tuning.md tells users to run it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cifar_mlflow.tracking.local_server import free_port
from cifar_mlflow.tune import main
from tests.conftest import run_env


def test_optuna_dashboard_opens_the_study_storage(imagefolder, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "1",
                 "--batch-size", "16", "--no-progress", "--trials", "2", "--study-name", "dash", "--storage", storage,
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--checkpoint-dir", str(tmp_path)]) == 0
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(dashboard), storage, "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                            env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "no answer"
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
