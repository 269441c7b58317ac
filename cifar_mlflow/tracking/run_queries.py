"""Runs read back for a comparison, and the comparison's own run."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from cifar_mlflow.core.run_logger import ending_with_status
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.records import RunRecord, SourceRun
from cifar_mlflow.tracking.store import filter_value, name_attached_run, set_tags

# Runs of these kinds are not training runs and are left out of comparisons found by search.
NOT_COMPARABLE_KINDS = {"comparison", "study", "benchmark"}
HISTORY_KEYS = ("val_acc", "val_loss", "train_acc", "train_loss", "train_images_per_second")


def select_runs(uri: str, *, run_ids: list[str] | None = None, experiment: str | None = None,
                filter_string: str = "", top: int | None = None, metric: str = "test_acc",
                study: str | None = None) -> list:
    """MLflow runs by id, by experiment and filter, by the top `top` of `metric`, or a study's trials.

    Raises:
        ConfigError: an unknown run id or experiment, a bad filter, or an empty selection.
    """
    client = MlflowClient(uri)
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except mlflow.exceptions.MlflowException:
                raise ConfigError(f"no run {run_id!r} at {uri}") from None
        return runs
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(e.name for e in client.search_experiments())
            raise ConfigError(f"no experiment {experiment!r} at {uri}; experiments: {names or 'none'}")
        experiment_ids = [found.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    filters = [f for f in (filter_string, f"tags.`optuna.study_name` = {filter_value(study)}" if study else "") if f]
    order = [f"metrics.{metric} {'ASC' if 'loss' in metric else 'DESC'}"] if top else None
    try:
        runs = client.search_runs(experiment_ids, filter_string=" and ".join(filters), order_by=order,
                                  max_results=1000)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"bad run selection: {str(exc).splitlines()[0][:200]}") from None
    runs = [r for r in runs if r.data.tags.get("cifar_mlflow.kind") not in NOT_COMPARABLE_KINDS]
    if study:
        runs = [r for r in runs if "trial_number" in r.data.params]
    if top:
        runs = [r for r in runs if metric in r.data.metrics][:top]
    if not runs:
        raise ConfigError("no runs match this selection (finished training runs with the asked metric)")
    return runs


def fetch_source_run(uri: str, run_id: str) -> SourceRun:
    """The run `--from-run` re-creates; `ConfigError` when there is no such run."""
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} at {uri}; --from-run takes the id of a finished run") from None
    experiment = client.get_experiment(run.info.experiment_id)
    return SourceRun(run_id, run.info.run_name or run_id, experiment.name, dict(run.data.params), dict(run.data.tags))


def fetch_run_records(uri: str, runs: list, workdir: Path) -> list:
    """`RunRecord`s with per-epoch histories and, where logged, the confusion matrix."""

    client = MlflowClient(uri)
    records = []
    for run in runs:
        run_id = run.info.run_id
        history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                   for key in HISTORY_KEYS}
        confusion, classes = None, None
        try:
            local = client.download_artifacts(run_id, "reports/confusion_matrix.csv", str(workdir / run_id))
            rows = Path(local).read_text().strip().splitlines()
            classes = rows[0].split(",")[1:]
            confusion = np.array([[int(v) for v in row.split(",")[1:]] for row in rows[1:]])
        except Exception:  # noqa: BLE001 - a run without the artifact is compared on what it has
            pass
        wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
        records.append(RunRecord(run_id, run.info.run_name or run_id[:7], dict(run.data.params),
                                 dict(run.data.metrics), history, confusion, classes, wall))
    return records


def log_comparison(uri: str, experiment_id: str, name: str, compared: list[str], out_dir: Path) -> str:
    """A run tagged `cifar_mlflow.kind=comparison` holding the report (under `mlflow run -e compare`,
    the run it created, which it also closes); returns its id."""
    client = MlflowClient(uri)
    tags = {"cifar_mlflow.kind": "comparison", "compared_runs": ",".join(compared)}
    attached = os.environ.get("MLFLOW_RUN_ID")
    run_id = attached or client.create_run(experiment_id, run_name=name).info.run_id
    if attached:
        name_attached_run(client, client.get_run(attached), name)
    # The run `mlflow run` created is closed by `mlflow run`.
    end = (lambda status: None) if attached else functools.partial(client.set_terminated, run_id)
    with ending_with_status(end):
        set_tags(client, run_id, tags)
        client.log_artifacts(run_id, str(out_dir), "comparison")
    return run_id
