"""The resumable checkpoint: model, optimizer, schedule, epoch, history and random-number states."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from cifar_mlflow.errors import ConfigError

CHECKPOINT_NAME = "last.pt"


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
    next epoch tries again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._epoch: int | None = None  # of the write under way
        self.saved_epoch: int | None = None  # of the checkpoint on disk
        self._failing = False

    def _write(self, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(self.path, state)
        except BaseException as exc:  # noqa: BLE001 - reported in the training thread by `wait`
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
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

    def submit(self, state: dict[str, Any]) -> None:
        snapshot = cpu_copy(state)
        self.wait()
        self._epoch = state.get("epoch")
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="checkpoint-writer", daemon=True)
        self._thread.start()

    close = wait


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; anything else is a `ConfigError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign file
        raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else 'unreadable'}") from None
    required = {"config", "epoch", "model", "optimizer", "schedule", "history", "rng"}
    if not isinstance(state, dict) or not required <= set(state):
        raise ConfigError(f"{path} is not a cifar_mlflow checkpoint (missing {sorted(required - set(state or {}))})")
    return state
