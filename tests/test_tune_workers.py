"""Two worker processes share one study on a real PostgreSQL server and one MLflow server."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_env


@pytest.mark.faults
def test_two_workers_share_one_study(postgres_url, mlflow_server, imagefolder, tmp_path) -> None:
    args = [sys.executable, "-m", "cifar_mlflow.tune", "--trials", "3", "--study-name", "shared",
            "--storage", postgres_url, "--dataset", "imagefolder", "--data-dir", str(imagefolder),
            "--arch", "lenet", "--epochs", "2", "--batch-size", "16", "--no-progress", "--pruner", "none",
            "--experiment-name", "workers"]
    env = run_env(MLFLOW_TRACKING_URI=mlflow_server)
    workers = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    # The same command again resumes the study with the same --seed (0, the default).
    resume = subprocess.run([*args[:4], "2", *args[5:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "8 distinct configurations" in resume.stdout  # the study's report counts them

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(8))  # exactly the requested trials, numbers never collide
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    configurations = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(configurations) == 8  # no worker and no resumption repeated another's draws

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("workers")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`cifar_mlflow.kind` = 'study'")
    assert len(parents) == 1  # both workers adopted one parent run
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(int(c.data.params["trial_number"]) for c in children) == list(range(8))
    assert parents[0].data.metrics["distinct_configurations"] == 8
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {c.info.run_id for c in children}
    assert all(c.info.status == "FINISHED" for c in children)
