"""The resumable checkpoint: model, optimizer, schedule, epoch, history and random-number states."""

from __future__ import annotations

import os
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
