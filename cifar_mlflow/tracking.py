"""MLflow at the edge: the only module that talks to MLflow."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.interrupts import deferring
from cifar_mlflow.redaction import redact, split_tracking_credentials

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Params that `mlflow run` logged with a value we resolved differently (e.g. lr=auto) are kept,
# and the resolved value is logged under this prefix (MLflow params cannot change).
RESOLVED_PREFIX = "resolved."


def tracking_uri(explicit: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store in the working directory.

    Credentials in an http(s) URI move to `MLFLOW_TRACKING_USERNAME/PASSWORD`; the URI returned has none.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    clean = split_tracking_credentials(uri)
    if clean != uri and not explicit:
        os.environ["MLFLOW_TRACKING_URI"] = clean  # MLflow reads it too (and prints it)
    return clean


def _same_value(logged: str, ours: str) -> bool:
    if logged == ours:
        return True
    try:
        a, b = float(logged), float(ours)
    except ValueError:
        return logged.strip().lower() == ours.strip().lower()
    return math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def check_tracking_server(uri: str, timeout: float = 10.0) -> None:
    """Ask an http(s) tracking server one cheap question, before any data is read.

    Raises:
        ConfigError: the server cannot be reached, refuses the credentials, or answers with an error.
    """
    if not uri.startswith(("http://", "https://")):
        return  # the embedded store (or a database) is opened where it is used
    import requests

    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"} \
        if os.environ.get("MLFLOW_TRACKING_TOKEN") else {}
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or \
        os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    where = f"the MLflow tracking server at {uri}"
    try:
        response = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                                params={"max_results": 1}, auth=auth, headers=headers, timeout=timeout,
                                verify=verify)
    except requests.RequestException as exc:
        if isinstance(exc, requests.Timeout):
            reason = f"no answer in {timeout:g} s"
        elif "Connection refused" in str(exc):
            reason = "connection refused"
        elif "Name or service not known" in str(exc) or "NameResolutionError" in str(exc):
            reason = "unknown host name"
        else:
            reason = type(exc).__name__
        raise ConfigError(f"cannot reach {where} ({reason}); start it, or point --tracking-uri / "
                          "$MLFLOW_TRACKING_URI at a running one") from None
    if response.status_code == 401:
        raise ConfigError(f"{where} refused the credentials (401): set MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD (docs/deployment.md)")
    if response.status_code == 403:
        raise ConfigError(f"{where} denied access (403): ask its admin for permission")
    if response.status_code >= 400:
        raise ConfigError(f"{where} answered HTTP {response.status_code} to a search; is it an MLflow server "
                          "(docs/tracking.md)?")


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing; safe when many processes create it at once.

    `mlflow.set_experiment` is not: when its create loses the race to another process it returns the
    experiment without making it active, and the next `start_run` lands in "Default". So: get,
    create, and on "already exists" get again; every run is started with the explicit id.
    """
    for attempt in range(5):
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ConfigError(f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
                                  f"--experiment-id {found.experiment_id}) or choose another name")
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc):
                raise
            time.sleep(0.1 * attempt)  # another process created it: read it back
    raise RuntimeError(f"experiment {name!r} was created by another process but cannot be read back")


def download_checkpoint(uri: str, run_id: str, dest: Path) -> Path:
    """Fetch `checkpoint/last.pt` of `run_id`; `ConfigError` when the run or the file is missing."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} at {uri}; --resume takes the run id of an interrupted run") from None
    try:
        local = client.download_artifacts(run_id, "checkpoint/last.pt", str(dest))
    except Exception:  # noqa: BLE001 - any artifact-store failure means: no checkpoint to resume from
        raise ConfigError(f"run {run_id} has no checkpoint to resume from (neither checkpoint/last.pt "
                          "in MLflow nor a local one under --checkpoint-dir)") from None
    return Path(local)


def log_params_once(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params a run does not have yet; a different existing value gets a `resolved.` twin."""
    existing = client.get_run(run_id).data.params
    batch = []
    for key, value in params.items():
        text = redact(str(value))
        if key not in existing:
            batch.append(Param(key, text))
        elif not _same_value(existing[key], text) and RESOLVED_PREFIX + key not in existing:
            batch.append(Param(RESOLVED_PREFIX + key, text))
    for start in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[start:start + 100])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    """Tags in one `log_batch`: MLflow's SQL store retries the insert when another worker's tags on the same
    run race it (single `set_tag` calls fail with a UNIQUE-constraint error there)."""
    if tags:
        client.log_batch(run_id, tags=[RunTag(key, redact(str(value))) for key, value in tags.items()])


def _log_dataset(dataset: MetaDataset, context: str) -> None:
    """`mlflow.log_input`, tried up to three times: runs starting together (parallel trials, workers) race
    to create the same dataset row in the SQL store; a later attempt finds it and only links it."""
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == 2:
                warnings.warn(f"could not record dataset {dataset.name} as a run input: {str(exc)[:200]}",
                              stacklevel=2)
                return
            time.sleep(0.2 * (attempt + 1))


# While uploading artifacts: a failing store is reported within a minute, not after MLflow's default
# 7 retries with a doubling backoff (8.5 minutes for a model). A user's own setting wins.
_UPLOAD_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextlib.contextmanager
def _fail_fast_uploads():
    unset = [k for k in _UPLOAD_RETRY_ENV if k not in os.environ]
    os.environ.update({k: _UPLOAD_RETRY_ENV[k] for k in unset})
    try:
        yield
    finally:
        for key in unset:
            os.environ.pop(key, None)


def _is_store_failure(exc: BaseException) -> bool:
    """An error from the tracking server or artifact store (not from the model or our code)."""
    import requests

    text = str(exc)
    return isinstance(exc, (requests.RequestException, OSError)) or (
        isinstance(exc, mlflow.exceptions.MlflowException)
        and ("API request to" in text or "error code 5" in text or "retries" in text.lower()))


def _short_reason(exc: BaseException) -> str:
    """One readable clause for a failed request: what was sent where, and the status that came back."""
    import re

    text = str(exc)
    target = re.search(r"/artifacts/\d+/\w+/artifacts/(\S+?)(?:\s|$)", text)
    what = f"uploading {target.group(1)}" if target else type(exc).__name__
    status = re.search(r"too many (\d{3}) error responses|error code (\d{3})", text)
    if status:
        return f"{what}: HTTP {status.group(1) or status.group(2)} after retries"
    if "Connection refused" in text or "NewConnectionError" in text:
        return f"{what}: connection refused"
    return redact(f"{what}: {text.splitlines()[0][:160] if text else 'no reason given'}")


STALL_NOTICE_SECONDS = 5.0  # a tracking call silent this long is said on the console
_watching = threading.local()


def reporting_stalls(what: str):
    """Decorator: when the wrapped call waits on the server for more than `STALL_NOTICE_SECONDS`, say
    so on the console (MLflow retries in silence), and say when the server answers again."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if getattr(_watching, "active", False):  # an outer call is already watching
                return function(*args, **kwargs)
            done, started, stalled = threading.Event(), time.time(), threading.Event()

            def watch() -> None:
                if not done.wait(STALL_NOTICE_SECONDS):
                    stalled.set()
                    print(f"the tracking server has not answered for {STALL_NOTICE_SECONDS:.0f} s ({what}); "
                          "retrying until it does...", file=sys.stderr, flush=True)

            watcher = threading.Thread(target=watch, name="stall-notice", daemon=True)
            _watching.active = True
            watcher.start()
            try:
                return function(*args, **kwargs)
            finally:
                _watching.active = False
                done.set()
                watcher.join()
                if stalled.is_set():
                    print(f"the tracking server answered again after {time.time() - started:.0f} s", file=sys.stderr)

        return wrapper

    return decorate


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


def _metric_batch(values: dict[str, float], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in values.items()]


class MlflowLogger:
    """Logs one training run to MLflow.

    Args:
        uri: tracking URI.
        experiment_name: experiment for new runs (ignored when attaching to an existing run).
        run_name: name for new runs.
        run_id: attach to this existing run (resume, or the run `mlflow run` created).
        parent_run_id: create the run nested under this one (tuning trials).
        tags: extra tags set when the run starts.
        on_start: called with the run id once the run is open (the command prints how to resume it).
        keep_root: artifacts the store refuses are kept under `keep_root/RUN_ID/not-uploaded`.
    """

    def __init__(self, uri: str, experiment_name: str, run_name: str, run_id: str | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 on_start: Callable[[str], None] | None = None, keep_root: str | Path = "./checkpoints") -> None:
        self.uri = uri
        self.on_start = on_start
        self._heartbeat: Heartbeat | None = None
        self.closed_stale: list[str] = []  # stale runs of the experiment this start closed
        self.keep_root = Path(keep_root)
        self.upload_error: str | None = None  # why the artifact store failed, once it has
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.extra_tags = dict(tags or {})
        self._started = False
        self.registered_version: int | None = None  # set by log_model when it registers
        # Per-epoch metrics are sent in the background; each entry is kept until `flush` sees it stored.
        self._pending: list[tuple[dict[str, float], int, Any]] = []

    @deferring
    @reporting_stalls("opening the run")
    def start(self, *, params: dict[str, Any], tags: dict[str, str], datasets: list[dict[str, str]]) -> None:
        """Open the run; a second call does nothing (the tuner starts a trial's run before `run` does)."""
        if self._started:
            return
        self._started = True
        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient()
        if self.run_id is not None:
            experiment_id = client.get_run(self.run_id).info.experiment_id
        else:
            experiment_id = experiment_id_for(client, self.experiment_name)
        if self.parent_run_id is None:  # trials leave that to the tuner (Optuna's own heartbeat)
            self.closed_stale = mark_stale_runs(self.uri, experiment_id)  # a resumed run among them
        if self.run_id is not None:
            run = mlflow.start_run(run_id=self.run_id)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                   parent_run_id=self.parent_run_id)
        self.run_id = run.info.run_id
        log_params_once(MlflowClient(), self.run_id, params)
        set_tags(MlflowClient(), self.run_id, {**tags, **self.extra_tags})
        for d in datasets:
            _log_dataset(MetaDataset(LocalArtifactDatasetSource(d["source"]), name=d["name"], digest=d["digest"]),
                         d["context"])
        self._heartbeat = Heartbeat(self.uri, self.run_id)
        if self.on_start is not None:
            self.on_start(self.run_id)

    @deferring
    @reporting_stalls("setting tags")
    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags on a run that has started (the tuner's trial outcome)."""
        if self.run_id is not None:
            set_tags(MlflowClient(), self.run_id, tags)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queued for MLflow's background logger: the training loop never waits for the server."""
        values = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        # The client's log_batch, not mlflow.log_metrics: that one first fetches the run, synchronously,
        # and a stalled server then stops training.
        operation = MlflowClient().log_batch(self.run_id, metrics=_metric_batch(values, epoch), synchronous=False)
        self._pending.append((values, epoch, operation))

    @reporting_stalls("storing the epochs' metrics")
    def flush(self) -> None:
        """Wait for the queued metrics; any batch the background logger failed to store is sent again
        synchronously (with MLflow's own retries), so a server hiccup loses nothing."""
        pending, self._pending = self._pending, []
        for values, step, operation in pending:
            try:
                operation.wait()
            except mlflow.exceptions.MlflowException:
                MlflowClient().log_batch(self.run_id, metrics=_metric_batch(values, step))

    @deferring
    @reporting_stalls("logging the final metrics")
    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.flush()
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=self.run_id)

    @property
    def kept_dir(self) -> Path:
        """Where artifacts the store refused are kept, laid out as in the run (`log-artifacts` uploads it)."""
        return self.keep_root / str(self.run_id) / "not-uploaded"

    @reporting_stalls("uploading artifacts")
    def _artifact(self, upload: Callable[[], Any], keep: Callable[[Path], None]) -> Any:
        """Upload (failing within a minute, not after MLflow's 8 minutes of retries); once the store has
        failed, this and every later artifact are written under `kept_dir` instead."""
        if self.upload_error is None:
            try:
                with _fail_fast_uploads():
                    return upload()
            except Exception as exc:  # noqa: BLE001 - any store failure: keep the artifacts locally
                if not _is_store_failure(exc):
                    raise
                self.upload_error = _short_reason(exc)
                print(f"warning: the artifact store failed ({self.upload_error}); keeping this run's artifacts "
                      f"in {self.kept_dir}", file=sys.stderr)
        self.kept_dir.mkdir(parents=True, exist_ok=True)
        keep(self.kept_dir)
        return None

    def log_figure(self, figure: Figure, path: str) -> None:
        import matplotlib.pyplot as plt

        def keep(root: Path) -> None:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(root / path)

        try:
            self._artifact(lambda: mlflow.log_figure(figure, path), keep)
        finally:
            plt.close(figure)

    def log_text(self, text: str, path: str) -> None:
        text = redact(text)

        def keep(root: Path) -> None:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)

        self._artifact(lambda: mlflow.log_text(text, path), keep)

    def log_file(self, local_path: Path, artifact_dir: str) -> None:
        def keep(root: Path) -> None:
            (root / artifact_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy2(local_path, root / artifact_dir / Path(local_path).name)

        self._artifact(lambda: mlflow.log_artifact(str(local_path), artifact_dir), keep)

    def log_model(self, model: nn.Module, input_example: np.ndarray, registered_name: str | None) -> None:
        import mlflow.pytorch
        import torch
        import torchvision

        # Given explicitly: MLflow's own inference of requirements re-loads the model in a subprocess.
        requirements = [f"torch=={torch.__version__.split('+')[0]}",
                        f"torchvision=={torchvision.__version__.split('+')[0]}"]
        # Default "pt2" (torch.export): loads without this package's code; a pickle where export fails.
        serialization = {}

        def upload():
            return mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                            pip_requirements=requirements, registered_model_name=registered_name,
                                            **serialization)

        def keep(root: Path) -> None:
            shutil.rmtree(root / "model", ignore_errors=True)
            mlflow.pytorch.save_model(model, str(root / "model"), input_example=input_example,
                                      pip_requirements=requirements, **serialization)

        try:
            info = self._artifact(upload, keep)
        except Exception as exc:  # noqa: BLE001 - e.g. a user model torch.export cannot trace
            warnings.warn(f"torch.export could not export the model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); logging it as a pickle instead", stacklevel=2)
            serialization["serialization_format"] = "pickle"
            info = self._artifact(upload, keep)
        self.registered_version = info.registered_model_version if info is not None else None

    @deferring
    @reporting_stalls("closing the run")
    def end(self, status: str) -> None:
        try:
            self.flush()
        finally:
            self._end(status)

    def _end(self, status: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)


def set_model_alias(uri: str, name: str, version: int, alias: str) -> None:
    """Point `alias` (e.g. champion) of registered model `name` at `version`."""
    MlflowClient(uri).set_registered_model_alias(name, alias, str(version))


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
                self.run_id = run_id
        if self.run_id is None:
            run = self.client.create_run(experiment_id_for(self.client, self.experiment_name),
                                         run_name=self.study_name)
            self.run_id = run.info.run_id
        set_tags(self.client, self.run_id, {"optuna.study_name": self.study_name, "cifar_mlflow.kind": "study"})
        # Trials go where the parent is (under `mlflow run`, that run's experiment).
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        self.experiment_name = self.client.get_experiment(experiment_id).name
        self.closed_stale = mark_stale_runs(self.uri, experiment_id, keep=self.run_id)
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.uri, self.run_id)
        return self.run_id

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
    def close(self, status: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


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
    filters = [f for f in (filter_string, f"tags.`optuna.study_name` = '{study}'" if study else "") if f]
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


def fetch_run_records(uri: str, runs: list, workdir: Path) -> list:
    """`RunRecord`s with per-epoch histories and, where logged, the confusion matrix."""
    from cifar_mlflow.comparison import RunRecord

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
    try:
        set_tags(client, run_id, tags)
        client.log_artifacts(run_id, str(out_dir), "comparison")
        if not attached:
            client.set_terminated(run_id, "FINISHED")
    except BaseException:
        if not attached:
            client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The benchmark's numbers as MLflow metrics: `ours_images_per_s.mlp`, `data_path.speedup`, ..."""
    metrics: dict[str, float] = {}
    for row in results.get("rows") or []:
        for key in ("ours_images_per_s", "baseline_images_per_s", "speedup", "model_alone_images_per_s",
                    "speedup_bound"):
            metrics[f"{key}.{row['arch']}"] = float(row[key])
    for section in ("data_path", "tracking_overhead", "time_to_accuracy"):
        for key, value in (results.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"{section}.{key}"] = float(value)
    return metrics


def log_benchmark(uri: str, experiment_name: str, settings: dict[str, Any], results: dict[str, Any],
                  table: str) -> str:
    """A run tagged `cifar_mlflow.kind=benchmark`: settings as params, figures as metrics, the
    markdown and JSON as artifacts; returns its id."""
    import json

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = experiment_id_for(client, experiment_name)
    tags = {"cifar_mlflow.kind": "benchmark", "device": results["machine"]["device"],
            "gpu_name": results["machine"].get("gpu", "none")}
    run_id = client.create_run(experiment_id, run_name=f"bench-{results['machine']['device']}",
                               tags=tags).info.run_id
    status = "FAILED"
    try:
        log_params_once(client, run_id, {k: v for k, v in settings.items() if v is not None})
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in _flat_metrics(results).items()]
        for start in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[start:start + 500])
        client.log_text(run_id, redact(table), "benchmark.md")
        client.log_text(run_id, redact(json.dumps(results, indent=2)), "benchmark.json")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id
