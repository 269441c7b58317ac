"""The one home of the checkpoint format: `TrainingState` (model, optimizer, schedule, lookahead,
epoch, history, best epoch, random-number states), written atomically on a background thread."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifar_mlflow.errors import ConfigError

CHECKPOINT_NAME = "last.pt"
REQUIRED_KEYS = {"config", "epoch", "model", "optimizer", "schedule", "history", "rng"}


def checkpoint_path(checkpoint_dir: str, run_id: str) -> Path:
    return Path(checkpoint_dir) / run_id / CHECKPOINT_NAME


class CheckpointWriteError(OSError):
    """The checkpoint could not be written (a full disk, a lost mount); the previous one is intact."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash or a full disk while saving never leaves a half-written checkpoint.

    Raises:
        CheckpointWriteError: with the reason in one line; the partial file is removed.
    """
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:160]
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
        # torch.save words a full disk as "unexpected pos N vs M"
        if getattr(exc, "errno", None) == errno.ENOSPC or "unexpected pos" in str(exc) or free == 0:
            reason = f"no space left on the device: {free // 1024 if free is not None else '?'} KiB free"
        raise CheckpointWriteError(f"could not write the checkpoint {path} ({reason})") from None


def cpu_copy(value: Any) -> Any:
    """A copy of `value` whose tensors are on the CPU and no longer shared with training."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(v) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints on a background thread, so the next epoch starts while the file is written.

    `submit` copies the state first (training goes on changing the tensors); a write still under
    way is finished before the next begins, and `close` waits for the last one. A write that fails
    (a full disk) is said in one line and training goes on: the previous checkpoint stays, and the
    next epoch tries again. What must follow the file (the epoch's metrics) is given as `then`: it
    runs on the writer's thread once the write has ended, and an error in it is raised by `wait`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._epoch: int | None = None  # of the write under way
        self.saved_epoch: int | None = None  # of the checkpoint on disk
        self._failing = False
        self._then_error: BaseException | None = None

    def _write(self, state: dict[str, Any], then: Callable[[], None] | None) -> None:
        try:
            save_checkpoint(self.path, state)
        except BaseException as exc:  # noqa: BLE001 - reported in the training thread by `wait`
            self._error = exc
        if then is not None:  # after a failed write too: the previous checkpoint stays, and this must go on
            try:
                then()
            except BaseException as exc:  # noqa: BLE001 - raised in the training thread by `wait`
                self._then_error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        then_error, self._then_error = self._then_error, None
        if isinstance(error, CheckpointWriteError):
            if not self._failing:  # once, until a write succeeds again
                kept = (f"the checkpoint of epoch {self.saved_epoch} is kept" if self.saved_epoch
                        else "none written yet in this process")
                print(f"warning: {error} at epoch {self._epoch}; {kept}, training goes on and tries again "
                      "every epoch", file=sys.stderr)
            self._failing = True
        elif error is not None:
            raise error
        elif self._epoch is not None:
            if self._failing:
                print(f"checkpoint written again at epoch {self._epoch}", file=sys.stderr)
            self._failing = False
            self.saved_epoch = self._epoch
        self._epoch = None
        if then_error is not None:
            raise then_error

    def submit(self, state: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        snapshot = cpu_copy(state)
        self.wait()
        self._epoch = state.get("epoch")
        self._thread = threading.Thread(target=self._write, args=(snapshot, then), name="checkpoint-writer",
                                        daemon=True)
        self._thread.start()

    close = wait


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; anything else is a `ConfigError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign file
        raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else 'unreadable'}") from None
    if not isinstance(state, dict) or not REQUIRED_KEYS <= set(state):
        missing = sorted(REQUIRED_KEYS - set(state or {}))
        raise ConfigError(f"{path} is not a cifar_mlflow checkpoint (missing {missing})")
    return state


@dataclass
class BestEpoch:
    """The epoch with the best validation accuracy so far, and its weights (on the CPU)."""

    epoch: int = 0
    val_acc: float = -1.0
    val_loss: float = float("inf")
    state: dict[str, torch.Tensor] | None = None


class TrainingState:
    """Everything a run needs to go on after any epoch, as one checkpoint dict (`state_dict` /
    `load_state_dict`, as torchvision's reference script keeps one).

    Holds references to the live model, optimizer, schedule, lookahead and training loader; keeps
    the epoch, the history and the best epoch itself.
    """

    def __init__(self, *, config: dict[str, Any], model, optimizer, schedule, lookahead, loader,
                 data_digest: str) -> None:
        self.config = config  # the resolved config, URL passwords already masked
        self.model, self.optimizer, self.schedule, self.lookahead = model, optimizer, schedule, lookahead
        self.loader = loader
        self.data_digest = data_digest
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best = BestEpoch()

    def end_epoch(self, row: dict[str, float], val_acc: float | None = None, val_loss: float | None = None) -> None:
        """Record a finished epoch; without validation the last epoch is the one kept."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        if val_acc is None:
            self.best = BestEpoch(epoch=self.epoch)
        elif val_acc > self.best.val_acc:  # strictly better: what early stopping waits for
            self.best = BestEpoch(self.epoch, val_acc, val_loss, cpu_copy(self.model.state_dict()))

    def state_dict(self) -> dict[str, Any]:
        best = self.best
        return {"config": self.config, "epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "history": self.history,
                "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
                "best": {"epoch": best.epoch, "val_acc": best.val_acc, "val_loss": best.val_loss, "state": best.state},
                "rng": {"torch": torch.get_rng_state(), "loader": self.loader.generator.get_state().cpu()},
                "data_digest": self.data_digest,
                # the hardest-image selection's per-image losses: a resumed run picks the same images
                "hardest": self.loader.hardest.state_dict() if self.loader.hardest is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.lookahead is not None and state.get("lookahead"):
            self.lookahead.load_state_dict(state["lookahead"])
        self.history = list(state["history"])
        best = state["best"]
        self.best = BestEpoch(best["epoch"], best["val_acc"], best["val_loss"], best["state"])
        torch.set_rng_state(state["rng"]["torch"])
        generator = self.loader.generator
        generator.set_state(state["rng"]["loader"].to(generator.get_state().device))
        self.epoch = state["epoch"]
        self.loader.epoch = state["epoch"]  # the passes done: alternating flips go on from there
        if self.loader.hardest is not None and state.get("hardest"):
            self.loader.hardest.load_state_dict(state["hardest"])
