"""A run's sign of life: a heartbeat tag while it trains, and stale RUNNING runs (a SIGKILLed process,
a lost machine) closed as KILLED by the next run, `--resume` or study in the experiment."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.tracking.store import set_tags

HEARTBEAT_TAG = "cifar_mlflow.heartbeat"  # epoch milliseconds of the last sign of life
HEARTBEAT_INTERVAL_TAG = "cifar_mlflow.heartbeat_interval"  # seconds between heartbeats
HEARTBEAT_ENV = "CIFAR_MLFLOW_HEARTBEAT_SECONDS"
STALE_AFTER = 3  # heartbeats missed before a RUNNING run counts as gone


def heartbeat_interval() -> float:
    return float(os.environ.get(HEARTBEAT_ENV) or 60)


class Heartbeat:
    """Sets the run's heartbeat tag every `heartbeat_interval()` seconds on a background thread, as
    Optuna's trial heartbeat does: a RUNNING run whose process is gone stops beating, and
    `mark_stale_runs` (the next `--resume` or `tune` there) closes it as KILLED."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.interval = heartbeat_interval()
        self._stop = threading.Event()
        self._beat({HEARTBEAT_INTERVAL_TAG: f"{self.interval:g}"})
        self._thread = threading.Thread(target=self._loop, name="mlflow-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, extra: dict[str, str] | None = None) -> None:
        set_tags(self.client, self.run_id, {HEARTBEAT_TAG: str(int(time.time() * 1000)), **(extra or {})})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a server hiccup: the next beat tries again
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _silent_for(run) -> float | None:
    """Seconds since a RUNNING run's last heartbeat beyond its allowance, or None while it is alive
    (or not ours: no heartbeat tags)."""
    beat, interval = run.data.tags.get(HEARTBEAT_TAG), run.data.tags.get(HEARTBEAT_INTERVAL_TAG)
    if run.info.status != "RUNNING" or beat is None or interval is None:
        return None
    silent = time.time() - float(beat) / 1000
    return silent if silent > STALE_AFTER * float(interval) else None


def refuse_live_run(uri: str, run_id: str) -> None:
    """`ConfigError` when `run_id` is RUNNING with a live heartbeat: another process is training it."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return  # no store yet: no run, and opening it would create one
    try:
        run = MlflowClient(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return  # an unknown run is reported where its checkpoint is looked for
    if run.info.status == "RUNNING" and HEARTBEAT_TAG in run.data.tags and _silent_for(run) is None:
        age = time.time() - float(run.data.tags[HEARTBEAT_TAG]) / 1000
        raise ConfigError(f"run {run_id} is still being trained by another process (heartbeat {age:.0f} s ago); "
                          "stop that one first, or wait until it is stale")


def mark_stale_runs(uri: str, experiment_id: str, keep: str | None = None) -> list[str]:
    """Close as KILLED the RUNNING runs of the experiment whose heartbeat stopped (their process is
    gone: SIGKILL, a lost machine), except `keep` (the run being reopened); returns their ids."""
    client = MlflowClient(uri)
    stale = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        beat = run.data.tags.get(HEARTBEAT_TAG)
        if run.info.run_id != keep and _silent_for(run) is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(beat) / 1000))
            set_tags(client, run.info.run_id, {"cifar_mlflow.stale": f"no heartbeat since {when}: its process "
                                                                     "is gone; marked KILLED"})
            client.set_terminated(run.info.run_id, status="KILLED")
            stale.append(run.info.run_id)
    return stale
