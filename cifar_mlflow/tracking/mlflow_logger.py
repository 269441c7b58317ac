"""The training run's logger: params, per-epoch metrics, artifacts and the model of one run."""

from __future__ import annotations

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
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn

from cifar_mlflow.config import registered_name_and_alias
from cifar_mlflow.interrupts import deferring
from cifar_mlflow.redaction import redact
from cifar_mlflow.tracking.faults import (
    fail_fast_uploads,
    install_request_hooks,
    is_store_failure,
    is_tracking_server,
    reporting_stalls,
    short_reason,
)
from cifar_mlflow.tracking.heartbeat import Heartbeat, mark_stale_runs
from cifar_mlflow.tracking.run_inputs import log_datasets
from cifar_mlflow.tracking.store import experiment_id_for, log_params_once, name_attached_run, set_tags

IMAGE_RETRY_SECONDS = 30.0  # after a failed per-epoch image upload, the next attempt waits this long


def _upload(upload: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run an upload, failing within a minute: (its result, None), or (None, why) when the tracking
    server or the artifact store failed. Any other error is raised."""
    try:
        with fail_fast_uploads():
            return upload(), None
    except Exception as exc:  # noqa: BLE001 - any store failure is answered, not raised
        if not is_store_failure(exc):
            raise
        return None, short_reason(exc)


def _kept_path(root: Path, artifact_path: str) -> Path:
    """Where an artifact is kept locally, its folder made: laid out as in the run."""
    path = root / artifact_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _epoch_values(row: dict[str, float]) -> dict[str, float]:
    """An epoch's row as the metrics logged for it (its number is the step, not a metric)."""
    return {k: float(v) for k, v in row.items() if k != "epoch"}


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
        params: extra params logged with the run's own (a trial's number).
        on_start: called with the run id once the run is open (the command prints how to resume it,
            the tuner records it in the trial).
        keep_root: artifacts the store refuses are kept under `keep_root/RUN_ID/not-uploaded`.
        system_metrics: log MLflow's system metrics (`system/...`) while the run is open.
    """

    def __init__(self, uri: str, experiment_name: str, run_name: str, run_id: str | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, on_start: Callable[[str], None] | None = None,
                 keep_root: str | Path = "./checkpoints", system_metrics: bool = False) -> None:
        self.uri = uri
        if is_tracking_server(uri):
            install_request_hooks()
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
        self.extra_params = dict(params or {})
        self.system_metrics = system_metrics
        self._unsent_images: list[tuple[int, str, np.ndarray | Path]] = []  # per-epoch images not stored yet
        self._images_retry_at = 0.0  # after a failed image upload: when to try again (monotonic seconds)
        self._image_failure_said = False
        self._opened = False  # the run exists (opened on first use)
        self._recorded = False  # its params, tags and inputs are logged (`start`)
        self.registered_version: int | None = None  # set by log_model when it registers
        self._test_dataset: dict[str, Any] | None = None  # the test split's data set input
        self._held_test_metrics: dict[str, float] = {}  # final test metrics waiting for the model (log_metrics)
        # Per-epoch metrics are sent in the background; each entry is kept until `flush` sees it stored.
        self._pending: list[tuple[list[Metric], Any]] = []  # each epoch's batch and its queued send
        self._pending_lock = threading.Lock()

    def _open(self) -> None:
        """Open the run on first use (Lightning's `MLFlowLogger.experiment` works the same way): nothing
        exists on the server before something is logged."""
        if self._opened:
            return
        self._opened = True
        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient()
        if self.run_id is not None:
            experiment_id = client.get_run(self.run_id).info.experiment_id
        else:
            experiment_id = experiment_id_for(client, self.experiment_name)
        if self.parent_run_id is None:  # trials leave that to the tuner (Optuna's own heartbeat)
            self.closed_stale = mark_stale_runs(self.uri, experiment_id)  # a resumed run among them
        if self.run_id is not None:
            run = mlflow.start_run(run_id=self.run_id, log_system_metrics=self.system_metrics)
            if os.environ.get("MLFLOW_RUN_ID") == self.run_id:  # the run `mlflow run` created (not a resume)
                name_attached_run(client, run, self.run_name)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                   parent_run_id=self.parent_run_id, log_system_metrics=self.system_metrics)
        self.run_id = run.info.run_id
        self._heartbeat = Heartbeat(self.uri, self.run_id)
        if self.on_start is not None:
            self.on_start(self.run_id)

    @deferring
    @reporting_stalls("opening the run")
    def start(self, *, params: dict[str, Any], tags: dict[str, str], datasets: list[dict[str, str]]) -> None:
        """Open the run (if nothing opened it yet) and record its params, tags and data inputs, once."""
        if self._recorded:
            raise RuntimeError(f"run {self.run_id}: params, tags and inputs are recorded once, at the start")
        self._recorded = True
        self._open()
        log_params_once(MlflowClient(), self.run_id, {**self.extra_params, **params})
        set_tags(MlflowClient(), self.run_id, {**tags, **self.extra_tags})
        log_datasets(MlflowClient(), self.run_id, datasets)
        self._test_dataset = next((d for d in datasets if d["context"] == "testing"), None)

    @deferring
    @reporting_stalls("setting tags")
    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags on a run that has started (the tuner's trial outcome)."""
        if self._opened:
            set_tags(MlflowClient(), self.run_id, tags)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queued for MLflow's background logger: the training loop never waits for the server."""
        self._open()
        values = _epoch_values(metrics)
        # The client's log_batch, not mlflow.log_metrics: that one first fetches the run, synchronously,
        # and a stalled server then stops training.
        batch = _metric_batch(values, epoch)
        operation = MlflowClient().log_batch(self.run_id, metrics=batch, synchronous=False)
        with self._pending_lock:  # called on the checkpoint writer's thread (after the epoch's file)
            self._pending.append((batch, operation))

    @deferring
    @reporting_stalls("logging the checkpoint's epochs")
    def log_past_epochs(self, history: list[dict[str, float]]) -> None:
        """The checkpoint is written before an epoch's metrics are sent, so a killed process can leave
        epochs on disk that never reached the store: those are sent now, with their own steps."""
        self._open()
        client = MlflowClient()
        rows = {int(row["epoch"]): _epoch_values(row) for row in history}
        keys = sorted({k for values in rows.values() for k in values})
        stored = {k: {m.step for m in client.get_metric_history(self.run_id, k)} for k in keys}
        missing = [metric for epoch, values in rows.items()
                   for metric in _metric_batch({k: v for k, v in values.items() if epoch not in stored[k]}, epoch)]
        for start in range(0, len(missing), 1000):  # MLflow's limit per batch
            client.log_batch(self.run_id, metrics=missing[start:start + 1000])
        epochs = sorted({m.step for m in missing})
        if epochs:
            print(f"epochs {', '.join(map(str, epochs))} were in the checkpoint but not in the run; logged them now",
                  file=sys.stderr)

    @reporting_stalls("uploading the epoch's image")
    def log_epoch_image(self, epoch: int, key: str, image: np.ndarray) -> None:
        """Uploaded at once (a few kB), failing fast. When the store or the server fails (a restart, a full
        disk), it is said once and training goes on: the images wait as files under `kept_dir` and go
        with a later epoch's upload once the server answers (tried again every `IMAGE_RETRY_SECONDS`),
        or at the end of the run; those the store never takes stay there."""
        self._open()
        self._unsent_images.append((epoch, key, image))
        if time.monotonic() >= self._images_retry_at:
            self._send_images()
        self._park_unsent_images()

    def _send_images(self) -> None:
        from PIL import Image

        while self._unsent_images and self.upload_error is None:
            epoch, key, image = self._unsent_images[0]
            picture = Image.open(image) if isinstance(image, Path) else image
            _, failure = _upload(lambda: MlflowClient().log_image(self.run_id, picture, key=key, step=epoch,
                                                                  synchronous=True))
            if failure is not None:
                self._images_retry_at = time.monotonic() + IMAGE_RETRY_SECONDS
                if not self._image_failure_said:
                    self._image_failure_said = True
                    print(f"warning: could not store epoch {epoch}'s {key} image ({failure}); training goes on, "
                          f"the images wait in {self.kept_dir / 'images'} and are sent when the server takes them",
                          file=sys.stderr)
                return
            self._unsent_images.pop(0)
            if isinstance(image, Path):
                image.unlink(missing_ok=True)

    def _park_unsent_images(self) -> None:
        """Unsent images as PNG files under `kept_dir/images` (not held in memory over a long outage)."""
        from PIL import Image

        for i, (epoch, key, image) in enumerate(self._unsent_images):
            if not isinstance(image, Path):
                path = _kept_path(self.kept_dir, f"images/{key}_step{epoch}.png")
                Image.fromarray(np.asarray(image)).save(path)
                self._unsent_images[i] = (epoch, key, path)

    @reporting_stalls("storing the epochs' metrics")
    def flush(self) -> None:
        """Wait for the queued metrics; any batch the background logger failed to store is sent again
        synchronously (with MLflow's own retries), so a server hiccup loses nothing. The very same metrics,
        timestamps included: where the first send was stored after all (the answer lost, or too late), the
        store sees the same rows and keeps one of each, not an epoch twice."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for batch, operation in pending:
            try:
                operation.wait()
            except mlflow.exceptions.MlflowException:
                MlflowClient().log_batch(self.run_id, metrics=batch)

    @deferring
    @reporting_stalls("logging the final metrics")
    def log_metrics(self, metrics: dict[str, float]) -> None:
        """The final metrics, at step 0. The test metrics wait for the model, if one is logged next, to be sent
        naming it and the test split (MLflow 3's model page shows each with its data set); `end` sends them
        otherwise."""
        self._open()
        self.flush()
        self._held_test_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("test_")}
        MlflowClient().log_batch(self.run_id, metrics=_metric_batch(
            {k: float(v) for k, v in metrics.items() if k not in self._held_test_metrics}, step=0))

    def _send_test_metrics(self, model_id: str | None = None) -> None:
        held, self._held_test_metrics = self._held_test_metrics, {}
        data = self._test_dataset if model_id else None
        link = {"model_id": model_id, "dataset_name": data["name"], "dataset_digest": data["digest"]} if data else {}
        if held:
            now = int(time.time() * 1000)
            MlflowClient().log_batch(self.run_id, metrics=[Metric(k, v, now, 0, **link) for k, v in held.items()])

    @property
    def kept_dir(self) -> Path:
        """Where artifacts the store refused are kept, laid out as in the run (`log-artifacts` uploads it)."""
        return self.keep_root / str(self.run_id) / "not-uploaded"

    @reporting_stalls("uploading artifacts")
    def _artifact(self, upload: Callable[[], Any], keep: Callable[[Path], None]) -> Any:
        """Upload (failing within a minute, not after MLflow's 8 minutes of retries); once the store has
        failed, this and every later artifact are written under `kept_dir` instead."""
        self._open()
        if self.upload_error is None:
            result, self.upload_error = _upload(upload)
            if self.upload_error is None:
                return result
            print(f"warning: the artifact store failed ({self.upload_error}); keeping this run's artifacts "
                  f"in {self.kept_dir}", file=sys.stderr)
        self.kept_dir.mkdir(parents=True, exist_ok=True)
        keep(self.kept_dir)
        return None

    def log_figure(self, figure: Figure, path: str) -> None:
        import matplotlib.pyplot as plt

        def keep(root: Path) -> None:
            figure.savefig(_kept_path(root, path))

        try:
            self._artifact(lambda: mlflow.log_figure(figure, path), keep)
        finally:
            plt.close(figure)

    def log_text(self, text: str, path: str) -> None:
        text = redact(text)

        def keep(root: Path) -> None:
            _kept_path(root, path).write_text(text)

        self._artifact(lambda: mlflow.log_text(text, path), keep)

    def log_file(self, local_path: Path, artifact_dir: str) -> None:
        def keep(root: Path) -> None:
            shutil.copy2(local_path, _kept_path(root, f"{artifact_dir}/{Path(local_path).name}"))

        self._artifact(lambda: mlflow.log_artifact(str(local_path), artifact_dir), keep)

    def log_model(self, model: nn.Module, input_example: np.ndarray, registered_name: str | None,
                  description: dict[str, Any]) -> None:
        import torch
        import torchvision
        from mlflow.models import Model

        from cifar_mlflow.tracking import served_model

        # Given explicitly: MLflow's own inference of requirements re-loads the model in a subprocess.
        options = dict(network=model, input_example=input_example,
                       signature=served_model.signature(input_example, description["classes"]),
                       pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                         f"torchvision=={torchvision.__version__.split('+')[0]}"])

        name, alias = registered_name_and_alias(registered_name) if registered_name else (None, None)

        # Default "pt2" (torch.export): loads without this package's code; a pickle where export fails.
        def upload():
            return Model.log(None, served_model, name="model", flavor_name="pytorch", metadata=description,
                             registered_model_name=name, **options)

        def keep(root: Path) -> None:
            shutil.rmtree(root / "model", ignore_errors=True)
            served_model.save_model(str(root / "model"), Model(metadata=description), **options)

        try:
            info = self._artifact(upload, keep)
        except Exception as exc:  # noqa: BLE001 - e.g. a user model torch.export cannot trace
            warnings.warn(f"torch.export could not export the model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); logging it as a pickle instead", stacklevel=2)
            options["serialization_format"] = "pickle"
            info = self._artifact(upload, keep)
        self.registered_version = info.registered_model_version if info is not None else None
        self._send_test_metrics(getattr(info, "model_id", None))
        if self.registered_version is not None:
            served_model.set_model_alias(self.uri, name, self.registered_version, alias)
            print(f"registered {name} version {self.registered_version}: models:/{name}@{alias}", file=sys.stderr)

    @deferring
    @reporting_stalls("closing the run")
    def end(self, status: str) -> None:
        try:
            self.flush()
            self._send_test_metrics()  # no model logged after them: on their own
            if self._unsent_images:  # the server answers again (the metrics went): the images go too
                self._send_images()
                if self._unsent_images:
                    print(f"warning: {len(self._unsent_images)} per-epoch images were not stored; they are in "
                          f"{self.kept_dir / 'images'} (mlflow artifacts log-artifacts --run-id {self.run_id} "
                          f"--local-dir {self.kept_dir} uploads them, as plain files)", file=sys.stderr)
        finally:
            self._end(status)

    def _end(self, status: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
