"""The resumable checkpoint: model, optimizer, schedule, epoch, history and random-number states."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

from cifar_mlflow.errors import ConfigError

CHECKPOINT_NAME = "last.pt"


def checkpoint_path(checkpoint_dir: str, run_id: str) -> Path:
    return Path(checkpoint_dir) / run_id / CHECKPOINT_NAME


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash while saving never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    way is finished before the next begins, and `close` waits for the last one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _write(self, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(self.path, state)
        except BaseException as exc:  # noqa: BLE001 - raised in the training thread by `wait`
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, state: dict[str, Any]) -> None:
        snapshot = cpu_copy(state)
        self.wait()
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
