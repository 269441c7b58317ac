"""The boundary between training and experiment tracking, and how a run ends.

Training talks to a `RunLogger`; `NullLogger` makes the core usable as a library and in tests,
`cifar_mlflow.tracking.MlflowLogger` is the only code that talks to MLflow. `run_status` is the one
place that decides a run's final status from what ended it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the types only: deciding a run's status needs none of these loaded
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
        """Close the run with its status (`run_status`): FINISHED, FAILED or KILLED."""


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


FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
EXIT_STATUS = {FINISHED: 0, FAILED: 1, KILLED: 130}  # a command's exit status for the run it ended


def run_status(error: BaseException | None, *, finished_on: tuple[type[BaseException], ...] = (),
               stored_everything: bool = True) -> str:
    """The one rule for how a run ends, used by every command: FINISHED when nothing was raised, or what
    was raised is an expected end (`finished_on`: a pruned trial); KILLED when it was stopped (Ctrl-C, and
    SIGTERM, which the commands raise as KeyboardInterrupt); FAILED for any other error (a non-finite
    loss, a crash) and for a run that raised nothing but could not store all it made (artifacts the store
    refused, kept on disk)."""
    if isinstance(error, KeyboardInterrupt):
        return KILLED
    if error is not None and not isinstance(error, finished_on):
        return FAILED
    return FINISHED if stored_everything else FAILED


@contextlib.contextmanager
def ending_with_status(end: Callable[[str], None], *,
                       finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Calls `end(status)` when the block ends, with the status `run_status` gives for what ended it (the
    exception, if any, goes on)."""
    error = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        end(run_status(error, finished_on=finished_on))


@contextlib.contextmanager
def ended_run(logger: RunLogger, *, finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[RunLogger]:
    """Ends the run when the block does, with the status `run_status` gives for what ended it."""
    with ending_with_status(logger.end, finished_on=finished_on):
        yield logger
