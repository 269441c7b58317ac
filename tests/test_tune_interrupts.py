"""A study survives Ctrl-C and a worker killed mid-trial: nothing stays RUNNING, it resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import RetryFailedTrialCallback

from tests.conftest import as_foreground, run_env


def start_worker(imagefolder, tmp_path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "cifar_mlflow.tune", "--study-name", "s", "--storage",
            f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--experiment-name", "tuning", "--dataset", "imagefolder", "--data-dir", str(imagefolder),
            "--arch", "lenet", "--batch-size", "16", "--no-progress", "--pruner", "none", *extra]
    return subprocess.Popen(args, cwd=tmp_path, env=run_env(), stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_foreground)


def wait_for_first_epoch(worker: subprocess.Popen) -> None:
    for line in worker.stderr:
        if line.startswith("epoch 1/"):
            return
    raise AssertionError("the worker ended before its first epoch")


def runs(tmp_path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name("tuning").experiment_id])


@pytest.mark.faults  # a real Ctrl-C mid-study (make test-faults)
def test_ctrl_c_marks_the_trial_and_the_study_resumes(imagefolder, tmp_path) -> None:
    worker = start_worker(imagefolder, tmp_path, "--trials", "20", "--epochs", "200")
    wait_for_first_epoch(worker)
    worker.send_signal(signal.SIGINT)
    rest = worker.stderr.read()
    assert worker.wait(timeout=120) == 130, rest[-3000:]
    assert "run the same command to resume" in rest
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("cifar_mlflow.kind") == "study"]
    (child,) = [r for r in runs(tmp_path) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"
    assert child.data.tags["optuna.state"] == "FAIL"

    resumed = start_worker(imagefolder, tmp_path, "--trials", "1", "--epochs", "1")
    resumed.stderr.read()
    assert resumed.wait(timeout=300) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    all_runs = runs(tmp_path)
    assert [r.info.run_id for r in all_runs if r.data.tags.get("cifar_mlflow.kind") == "study"] == [parent.info.run_id]
    assert not [r for r in all_runs if r.info.status == "RUNNING"]


@pytest.mark.faults
def test_killed_worker_trial_is_failed_and_retried(imagefolder, tmp_path) -> None:
    worker = start_worker(imagefolder, tmp_path, "--trials", "5", "--epochs", "200", "--heartbeat-interval", "1",
                          "--retry-failed", "1")
    wait_for_first_epoch(worker)
    worker.kill()  # no handler runs: the trial and its MLflow run stay RUNNING
    worker.wait(timeout=60)
    (stale,) = [r for r in runs(tmp_path) if r.data.tags.get("trial_number") == "0"]
    assert stale.info.status == "RUNNING"
    time.sleep(4)  # past the grace period of three missed heartbeats

    resumed = start_worker(imagefolder, tmp_path, "--trials", "1", "--epochs", "1", "--heartbeat-interval", "1",
                           "--retry-failed", "1")
    err = resumed.stderr.read()
    assert resumed.wait(timeout=300) == 0, err[-3000:]
    assert "trial 0 failed: its worker stopped sending heartbeats" in err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert RetryFailedTrialCallback.retried_trial_number(study.trials[1]) == 0
    (stale,) = [r for r in runs(tmp_path) if r.info.run_id == stale.info.run_id]
    assert stale.info.status == "FAILED" and "heartbeats" in stale.data.tags["optuna.fail_reason"]


def test_trials_failed_under_their_worker_are_left_and_the_worker_goes_on(imagefolder, tmp_path) -> None:
    """Another worker fails this worker's running trial (its heartbeats came later than the grace period: a
    storage unreachable that long, a machine that loaded): the worker says so in one line, without a
    traceback, closes the trial's run and runs another trial in its place instead of crashing (the trial
    was the storage's failure, not its settings', so it does not use up --trials). Here it asked for one
    trial and both it and the one in its place are taken, each in its first epochs: after as many trials
    in place of others as it asked for, it stops (an outage cannot keep it going for ever)."""
    worker = start_worker(imagefolder, tmp_path, "--trials", "1", "--epochs", "200")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    said = []
    for number in (0, 1):
        for line in worker.stderr:
            said.append(line)
            if line.startswith("epoch 1/"):
                break
        running = optuna.load_study(study_name="s", storage=storage).trials[number]
        storage.set_trial_state_values(running._trial_id, state=optuna.trial.TrialState.FAIL)  # as a stale check does
    rest = "".join(said) + worker.stderr.read()
    assert worker.wait(timeout=300) == 0, rest[-3000:]
    assert "Traceback" not in rest and rest.count("was failed by another worker") == 2
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("cifar_mlflow.kind") == "study"]
    children = sorted((r for r in runs(tmp_path) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.info.run_name)
    assert [(c.info.run_name, c.info.status) for c in children] == [("trial-0", "FAILED"), ("trial-1", "FAILED")]
    client = MlflowClient()
    assert all(len(client.get_metric_history(c.info.run_id, "val_acc")) < 10 for c in children)  # stopped there
    assert parent.info.status == "FINISHED"
