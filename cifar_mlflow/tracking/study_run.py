"""The tuning study's parent run, and the trials of workers that died."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cifar_mlflow.interrupts import deferring
from cifar_mlflow.tracking.faults import install_request_hooks, is_tracking_server
from cifar_mlflow.tracking.heartbeat import Heartbeat, mark_stale_runs
from cifar_mlflow.tracking.run_inputs import log_datasets
from cifar_mlflow.tracking.store import experiment_id_for, filter_value, log_params_once, name_attached_run, set_tags


def fail_stale_run(uri: str, run_id: str) -> None:
    """Close the MLflow run of a trial whose worker died, so it is not left RUNNING."""
    client = MlflowClient(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        set_tags(client, run_id, {"optuna.state": "FAIL",
                                  "optuna.fail_reason": "worker stopped sending heartbeats (killed or crashed)"})
        client.set_terminated(run_id, status="FAILED")


class StudyTracker:
    """The parent run of a tuning study: created once, reused when the study is resumed.

    Written through `MlflowClient` (not the fluent, per-thread active run), so trials running
    in parallel threads can nest their own runs under it.
    """

    def __init__(self, uri: str, experiment_name: str, study_name: str) -> None:
        self.uri = uri
        if is_tracking_server(uri):
            install_request_hooks()
        self.experiment_name = experiment_name
        self.study_name = study_name
        self.run_id: str | None = None
        self.closed_stale: list[str] = []
        self._heartbeat: Heartbeat | None = None
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)

    @deferring
    def open(self, known_run_id: str | None) -> str:
        """Reopen the study's parent run (`known_run_id`, or the run `mlflow run` created), else create it."""
        env_run = os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run -e tune`: that run is the parent
        run_id = env_run or known_run_id
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except mlflow.exceptions.MlflowException:
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.client.update_run(run_id, status="RUNNING")
                name_attached_run(self.client, run, self.study_name)
                self.run_id = run_id
        kind = {"optuna.study_name": self.study_name, "cifar_mlflow.kind": "study"}
        if self.run_id is None:  # tagged as it is created: workers electing a parent see every candidate at once
            run = self.client.create_run(experiment_id_for(self.client, self.experiment_name),
                                         run_name=self.study_name, tags=kind)
            self.run_id = run.info.run_id
        set_tags(self.client, self.run_id, kind)
        # Trials go where the parent is (under `mlflow run`, that run's experiment).
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        self.experiment_name = self.client.get_experiment(experiment_id).name
        self.closed_stale = mark_stale_runs(self.uri, experiment_id, keep=self.run_id)
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.uri, self.run_id)
        return self.run_id

    def first_parent(self) -> str:
        """Of the study's parent runs that exist (workers that started together each created one), the one
        created first (ties: the smaller id). Every worker that asks once they all exist gets the same answer,
        however long each took to start; a worker slower than the rest finds the others' run older than its
        own."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        runs = self.client.search_runs(  # RUNNING: not a finished study's run of the same name
            [experiment_id], max_results=1000,
            filter_string=f"tags.`optuna.study_name` = {filter_value(self.study_name)} "
                          "and tags.`cifar_mlflow.kind` = 'study' and attributes.status = 'RUNNING'")
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id

    def discard(self) -> None:
        """Delete a parent run that lost the race to another worker's."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.client.delete_run(self.run_id)

    @deferring
    def log_params(self, params: dict[str, Any]) -> None:
        log_params_once(self.client, self.run_id, params)

    @deferring
    def log_progress(self, metrics: dict[str, float], params: dict[str, Any], step: int) -> None:
        """Study-level metrics (step = finished trials) and the best params so far (as tags: they change)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        set_tags(self.client, self.run_id, params)  # workers sharing the study update these at once

    @deferring
    def mark_best(self, best_run_id: str | None, previous_run_id: str | None) -> None:
        if previous_run_id and previous_run_id != best_run_id:
            set_tags(self.client, previous_run_id, {"best_trial": "false"})
        if best_run_id:
            set_tags(self.client, best_run_id, {"best_trial": "true"})

    def log_artifact_dir(self, local_dir: Path) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir))

    @deferring
    def describe(self, *, tags: dict[str, str], datasets: list[dict[str, Any]], search_space_yaml: str) -> None:
        """What the study searches, on the parent run: tags (the code's commit), the data its trials train
        and validate on, and the search space as `search_space.yaml`."""
        set_tags(self.client, self.run_id, tags)
        log_datasets(self.client, self.run_id, datasets)
        self.client.log_text(self.run_id, search_space_yaml, "search_space.yaml")

    @deferring
    def close(self, status: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
