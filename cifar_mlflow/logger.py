"""The boundary between training and experiment tracking.

Training talks to a `RunLogger`; `NullLogger` makes the engine usable as a library and in tests,
`cifar_mlflow.tracking.MlflowLogger` is the only code that talks to MLflow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure
from torch import nn


class RunLogger(Protocol):
    """What the training run reports, in the order it reports it."""

    run_id: str | None

    def start(self, *, params: dict[str, Any], tags: dict[str, str], datasets: list[dict[str, str]]) -> None:
        """Record the run's params, tags and inputs, once; the run itself opens on the logger's first use
        (this call, or an earlier log), never before."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics, with `step=epoch`. With a checkpoint, called once the epoch's checkpoint
        is written, on the checkpoint writer's thread: it must not block for long, nor assume the main thread."""

    def log_past_epochs(self, history: list[dict[str, float]]) -> None:
        """A resumed run's epochs from its checkpoint: the ones the store lacks (their process died
        after writing the checkpoint but before their metrics were sent) are logged, the others kept."""

    def log_epoch_image(self, epoch: int, key: str, image: np.ndarray) -> None:
        """An image of the epoch (uint8, H x W x 3) under `key`, with `step=epoch`: the UI shows the
        images of a key on a slider."""

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Final metrics."""

    def log_figure(self, figure: Figure, path: str) -> None:
        """A figure as an image artifact at `path` (the logger closes it)."""

    def log_text(self, text: str, path: str) -> None:
        """A text artifact (CSV, YAML, report)."""

    def log_file(self, local_path: Path, artifact_dir: str) -> None:
        """A local file as an artifact under `artifact_dir`."""

    def log_model(self, model: nn.Module, input_example: np.ndarray, registered_name: str | None,
                  description: dict[str, Any]) -> None:
        """The trained model (uint8 images in, logits out), loadable with `mlflow.pytorch.load_model`, and
        as class names and probabilities with `mlflow.pyfunc.load_model`; `description` is its metadata
        (`classes` among it)."""

    def end(self, status: str) -> None:
        """Close the run as FINISHED, FAILED or KILLED."""


class NullLogger:
    """Records nothing: the engine as a plain library."""

    run_id: str | None = None

    def start(self, *, params, tags, datasets) -> None:
        pass

    def log_epoch(self, epoch, metrics) -> None:
        pass

    def log_past_epochs(self, history) -> None:
        pass

    def log_epoch_image(self, epoch, key, image) -> None:
        pass

    def log_metrics(self, metrics) -> None:
        pass

    def log_figure(self, figure, path) -> None:
        import matplotlib.pyplot as plt

        plt.close(figure)

    def log_text(self, text, path) -> None:
        pass

    def log_file(self, local_path, artifact_dir) -> None:
        pass

    def log_model(self, model, input_example, registered_name, description) -> None:
        pass

    def end(self, status) -> None:
        pass


@contextlib.contextmanager
def ended_run(logger: RunLogger) -> Iterator[RunLogger]:
    """Ends the run when the block does: FINISHED, KILLED on Ctrl-C, FAILED on any other error."""
    status = "FAILED"
    try:
        yield logger
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        logger.end(status)
