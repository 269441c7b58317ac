"""`mlflow run . --env-manager local` end to end: the project's MLproject as users run it."""

from __future__ import annotations

import subprocess

import mlflow
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, mlflow_bin, run_env


def test_mlflow_run_logs_into_the_run_it_created(imagefolder, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.run(
        [mlflow_bin(), "run", str(ROOT), "--env-manager", "local", "--experiment-name", "project-test",
         "-P", "arch=lenet", "-P", "dataset=imagefolder", "-P", f"data_dir={imagefolder}", "-P", "epochs=2",
         "-P", "batch_size=16", "-P", "progress=false", "-P", "model_args={}", "-P", "experiment_name=not-this-one"],
        cwd=tmp_path, env=run_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "experiment_name 'not-this-one' is not used" in proc.stderr
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    assert client.get_experiment_by_name("not-this-one") is None
    experiment = client.get_experiment_by_name("project-test")  # mlflow run's experiment wins
    (run,) = client.search_runs([experiment.experiment_id])  # one run: ours is the one it created
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.info.run_name == "lenet-sgd-lr0.05-e2-s0"  # named after what it is, not at random
    params = run.data.params
    assert params["arch"] == "lenet" and params["epochs"] == "2"
    # The values used, under their own names: lenet's recommended lr, this machine's device and precision.
    assert params["lr"] == "0.05" and params["optimizer"] == "sgd" and params["batch_size"] == "16"
    assert params["device"] == "cpu" and params["precision"] in ("bf16", "fp32")
    assert "auto" not in params.values(), params
    assert not [k for k in params if k.startswith("resolved.")], params
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2]
    assert "test_acc" in run.data.metrics
    assert client.list_artifacts(run.info.run_id, "plots")


def test_mlflow_run_tune_entry_point_nests_trials_under_its_run(imagefolder, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.run(
        [mlflow_bin(), "run", str(ROOT), "-e", "tune", "--env-manager", "local", "--experiment-name", "tune-project",
         "-P", "trials=2", "-P", "arch=cnn_small", "-P", "dataset=imagefolder", "-P", f"data_dir={imagefolder}",
         "-P", "epochs=1", "-P", "batch_size=16", "-P", "progress=false",
         "-P", f"storage=sqlite:///{tmp_path / 'optuna.db'}"],
        cwd=tmp_path, env=run_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tune-project")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "tune"]
    assert parent.data.tags["cifar_mlflow.kind"] == "study" and parent.info.status == "FINISHED"
    assert parent.info.run_name == "cnn_small-imagefolder"  # the study's name
    assert parent.data.params["tune.search_space"] == "default (cifar_mlflow/tune/search_spaces/default.yaml)"
    assert "search_space.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    assert len(runs) == 3


def test_mlflow_run_compare_entry_point_logs_into_its_run(two_runs, mlflow_server, tmp_path) -> None:
    proc = subprocess.run(
        [mlflow_bin(), "run", str(ROOT), "-e", "compare", "--env-manager", "local", "--experiment-name", "compare-test",
         "-P", f"runs={two_runs[0]} {two_runs[1]}"],
        cwd=tmp_path, env=run_env(MLFLOW_TRACKING_URI=mlflow_server), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("compare-test")
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`mlflow.project.entryPoint` = 'compare'")
    assert run.data.tags["cifar_mlflow.kind"] == "comparison" and run.info.status == "FINISHED"
    assert run.info.run_name == "Comparison of 2 runs"
    assert run.data.tags["compared_runs"] == ",".join(two_runs)
    assert "comparison/report.html" in {a.path for a in client.list_artifacts(run.info.run_id, "comparison")}
