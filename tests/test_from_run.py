"""`train --from-run RUN_ID`: a run re-created from its record on a real `mlflow server` reproduces it
exactly on the CPU; options given win; a different commit or data is said."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow import train
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.records import SourceRun
from cifar_mlflow.train.from_run import options_from_params, provenance_warnings
from tests.conftest import ROOT, mlflow_bin, run_env, write_imagefolder

EXPERIMENT = "from-run-test"
TIMING = {"epoch_seconds", "train_images_per_second"}  # the machine's speed, not the run's result
NOT_COPIED_PARAMS = {"from_run", "run_name", "experiment_name", "tracking_uri", "checkpoint_dir"}  # where, not what


@pytest.fixture(scope="module")
def recorded_run(mlflow_server, imagefolder, tmp_path_factory) -> str:
    """A 2-epoch run with a validation split, early stopping off, the machine's default precision."""
    workdir = tmp_path_factory.mktemp("recorded")
    assert train.main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "cnn_small",
                       "--epochs", "2", "--batch-size", "16", "--lr", "0.02", "--model-args", '{"dropout": 0.3}',
                       "--no-progress", "--experiment-name", EXPERIMENT, "--tracking-uri", mlflow_server,
                       "--checkpoint-dir", str(workdir), "--log-model", "false", "--no-system-metrics"]) == 0
    mlflow.set_tracking_uri(mlflow_server)
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
    (run,) = MlflowClient().search_runs([experiment.experiment_id])
    return run.info.run_id


def rerun(uri: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar_mlflow.train", *args, "--no-progress"], cwd=cwd,
                          env=run_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=600)


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    keys = [k for k in run.data.metrics if k not in TIMING and not k.startswith("system/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in keys}


def test_a_rerun_on_the_cpu_reproduces_every_metric_exactly(mlflow_server, recorded_run, tmp_path) -> None:
    proc = rerun(mlflow_server, "--from-run", recorded_run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning:" not in proc.stderr  # same commit, same data
    client = MlflowClient(mlflow_server)
    original = client.get_run(recorded_run)
    experiment = client.get_experiment(original.info.experiment_id)
    (again,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != recorded_run]
    assert again.info.run_name == f"{original.info.run_name}-rerun" and again.info.status == "FINISHED"
    assert again.data.params["from_run"] == recorded_run
    differing = {k for k in original.data.params if original.data.params[k] != again.data.params.get(k)}
    assert differing <= NOT_COPIED_PARAMS, differing
    assert again.data.params["model_args"] == original.data.params["model_args"] == '{"dropout": 0.3}'
    assert histories(client, again) == histories(client, original)
    assert again.data.tags["data_digest"] == original.data.tags["data_digest"]


def test_options_given_win_and_are_said(mlflow_server, recorded_run, tmp_path) -> None:
    proc = rerun(mlflow_server, "--from-run", recorded_run, "--epochs", "1", "--run-name", "shorter", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"note: re-creating run {recorded_run} with epochs=1 changed" in proc.stderr
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_run(recorded_run).info.experiment_id], "attributes.run_name = 'shorter'")
    assert run.data.params["epochs"] == "1" and run.data.params["lr"] == "0.02"


def test_other_data_is_warned_about(mlflow_server, recorded_run, tmp_path) -> None:
    other = write_imagefolder(tmp_path / "other", n_train=20)
    proc = rerun(mlflow_server, "--from-run", recorded_run, "--data-dir", str(other), "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("warning: the data differs")]
    assert recorded_run in line


def test_bad_requests_exit_2_before_anything_is_created(mlflow_server, recorded_run, tmp_path) -> None:
    proc = rerun(mlflow_server, "--from-run", "0" * 32, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: no MLflow run '{'0' * 32}' at {mlflow_server}; --from-run takes the id of a finished run"]
    proc = rerun(mlflow_server, "--from-run", recorded_run, "--resume", recorded_run, cwd=tmp_path)
    assert proc.returncode == 2 and "give one of them" in proc.stderr


def source(params: dict[str, str], tags: dict[str, str] | None = None) -> SourceRun:
    return SourceRun("abc", "a-run", "exp", params, tags or {})


def test_params_become_typed_options_and_the_value_used_wins() -> None:
    options = options_from_params(source({
        "arch": "cnn", "dataset": "cifar10", "lr": "auto", "resolved.lr": "0.05", "epochs": "30", "patience": "None",
        "nesterov": "True", "model_args": "{dropout: 0.2}", "tracking_uri": "http://x", "num_parameters": "123"}))
    assert options == {"arch": "cnn", "dataset": "cifar10", "lr": 0.05, "epochs": 30, "patience": None,
                       "nesterov": True, "model_args": {"dropout": 0.2}}
    with pytest.raises(ConfigError, match="not a training run"):
        options_from_params(source({"tune.trials": "5"}))


def test_a_different_or_unknown_commit_is_said() -> None:
    run = source({}, {"git_commit": "a" * 40, "data_digest": "d1"})
    assert provenance_warnings(run, "a" * 40, "d1") == []
    (warning,) = provenance_warnings(run, "b" * 40, "d1")
    assert "trained by code commit aaaaaaaaaaaa, this is bbbbbbbbbbbb" in warning and "git checkout" in warning
    (warning,) = provenance_warnings(run, None, "d1")
    assert "this code is not a git checkout" in warning
    (warning,) = provenance_warnings(run, "a" * 40, "d2")
    assert "the data differs" in warning


def test_mlflow_run_from_run_entry_point(mlflow_server, recorded_run, tmp_path) -> None:
    proc = subprocess.run(
        [mlflow_bin(), "run", str(ROOT), "-e", "from_run", "--env-manager", "local", "--experiment-name",
         "from-run-project", "-P", f"from_run={recorded_run}", "-P", "progress=false"],
        cwd=tmp_path, env=run_env(MLFLOW_TRACKING_URI=mlflow_server), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("from-run-project").experiment_id])
    original = client.get_run(recorded_run)
    assert run.info.run_name == f"{original.info.run_name}-rerun"
    assert run.data.tags["mlflow.project.entryPoint"] == "from_run"
    assert histories(client, run) == histories(client, original)
