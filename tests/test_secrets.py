"""Passwords in URLs never leave the process: not in params, tags, artifacts, checkpoints or the console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.core.fit import fit
from cifar_mlflow.core.prepare import prepare
from cifar_mlflow.redaction import redact, split_tracking_credentials
from tests.conftest import run_env
from tests.test_auth import ADMIN, ADMIN_PASSWORD, auth_server  # noqa: F401 - the fixture

DB_PASSWORD = "Pg-Secret-4471z"


@pytest.mark.parametrize("text, shown", [
    ("http://alice:pw@host:5000", "http://alice:***@host:5000"),
    ("postgresql://u:p%40ss@db:5432/optuna", "postgresql://u:***@db:5432/optuna"),
    ("postgresql://u:raw@pass@db/optuna", "postgresql://u:***@db/optuna"),  # an unescaped @ in the password
    ("cannot open postgresql+psycopg://u:pw@db/x: refused", "cannot open postgresql+psycopg://u:***@db/x: refused"),
    ("http://host:5000/#/experiments/1", "http://host:5000/#/experiments/1"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
])
def test_redact_masks_url_passwords_only(text, shown) -> None:
    assert redact(text) == shown
    assert redact({"a": [text]}) == {"a": [shown]}


def test_tracking_credentials_move_to_mlflow_environment(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert split_tracking_credentials("https://al%40ice:p%3Aw@mlflow.example:443/x") == "https://mlflow.example:443/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "al@ice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p:w"
    assert split_tracking_credentials("postgresql://u:pw@db/mlflow") == "postgresql://u:pw@db/mlflow"


def test_checkpoint_keeps_no_password(imagefolder, tmp_path) -> None:
    config = TrainConfig(arch="lenet", dataset="imagefolder", data_dir=str(imagefolder), epochs=1, batch_size=16,
                         progress=False, log_model=False,
                         tracking_uri=f"postgresql://u:{DB_PASSWORD}@127.0.0.1/mlflow")
    fit(prepare(config), checkpoint_file=tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["tracking_uri"] == "postgresql://u:***@127.0.0.1/mlflow"
    assert DB_PASSWORD.encode() not in (tmp_path / "last.pt").read_bytes()


def _everything_logged(client: MlflowClient, run_ids: list[str], dest: Path) -> bytes:
    """Every param, tag and artifact byte of the runs, for searching."""
    blobs = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        blobs.append(json.dumps({"params": run.data.params, "tags": run.data.tags}).encode())
        local = Path(client.download_artifacts(run_id, "", str(dest / run_id)))
        files = [p for p in local.rglob("*") if p.is_file()]
        assert files, f"run {run_id} logged no artifacts to search"
        blobs += [p.read_bytes() for p in files]
    return b"\n".join(blobs)


@pytest.mark.faults
def test_passwords_in_urls_leak_nowhere(auth_server, postgres_url, imagefolder, tmp_path) -> None:  # noqa: F811
    host = auth_server.removeprefix("http://")
    uri_with_password = f"http://{ADMIN}:{ADMIN_PASSWORD}@{host}"
    # The test server trusts loopback, so any password opens it: the point is where it shows up.
    storage = postgres_url.replace("postgresql://test@", f"postgresql://test:{DB_PASSWORD}@")
    common = ["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "1",
              "--batch-size", "16", "--no-progress", "--tracking-uri", uri_with_password,
              "--experiment-name", "secrets"]
    env = run_env()  # no MLFLOW_TRACKING_* in the environment: the URL is the only place they are
    train = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", *common], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    tune = subprocess.run([sys.executable, "-m", "cifar_mlflow.tune", *common, "--trials", "1", "--storage", storage,
                           "--study-name", "secrets", "--log-models"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert tune.returncode == 0, tune.stderr[-3000:]
    bad_storage = subprocess.run([sys.executable, "-m", "cifar_mlflow.tune", *common, "--storage",
                                  f"postgresql://test:{DB_PASSWORD}@127.0.0.1:1/optuna"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
    assert bad_storage.returncode == 2
    assert "postgresql://test:***@127.0.0.1:1/optuna" in bad_storage.stderr  # the error names the store, masked

    console = "".join(p.stdout + p.stderr for p in (train, tune, bad_storage))
    assert "View run" in console or "FINISHED" in console  # MLflow's and our lines were captured
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, ADMIN_PASSWORD
    try:
        client = MlflowClient(auth_server)
        experiment = client.get_experiment_by_name("secrets")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 3  # the training run, the study's parent run and its trial
        study = next(r for r in runs if r.data.tags.get("cifar_mlflow.kind") == "study")
        assert study.data.params["tune.storage"] == storage.replace(DB_PASSWORD, "***")
        logged = _everything_logged(client, [r.info.run_id for r in runs], tmp_path / "artifacts")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".pt", ".yaml", ".json", ".txt")]
    local = b"".join(p.read_bytes() for p in leftovers)
    for secret in (ADMIN_PASSWORD, DB_PASSWORD):
        assert secret not in console, secret
        assert secret.encode() not in logged, secret
        assert secret.encode() not in local, secret
