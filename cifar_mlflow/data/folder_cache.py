"""A decoded image folder, kept on disk for the next run: a second run (every trial of a study, every
worker on the machine) on the same folder reads one file instead of decoding tens of thousands of
images again.

The key is the folder's content: every image file's path (relative, so its class folder too) and
bytes, hashed, with the size the images are resized to and this file's format version. An edited,
added, removed or moved image gives another key, so a stale copy is never read. Entries are written
whole (a temporary file renamed), so processes reading and writing at once see a complete entry or
none. Where the cache cannot be written (a full or read-only disk) the run goes on, said in one line.

Where: `$CIFAR_MLFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/cifar_mlflow`, else `~/.cache/cifar_mlflow`;
`CIFAR_MLFLOW_CACHE_DIR=off` decodes every time. One entry per folder and size: 184 MB for CIFAR-10.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
CACHE_ENV = "CIFAR_MLFLOW_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where decoded folders are kept; None when caching is off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "none", "0") else Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar_mlflow"


def folder_key(files: list[tuple[str, Path]], image_size: int | None) -> str:
    """The content key of a folder: `files` are (name relative to the folder, path) in reading order."""
    h = hashlib.sha256(f"imagefolder v{FORMAT_VERSION} size={image_size}\n".encode())
    for name, path in files:
        data = path.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:32]


def read_entry(key: str) -> dict[str, Any] | None:
    """The cached entry for `key`, or None (no cache, no entry, or one that cannot be read)."""
    root = cache_dir()
    path = root / f"imagefolder-{key}.pt" if root else None
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged entry is decoded again and replaced
        print(f"note: the decoded-image cache {path} cannot be read ({type(exc).__name__}); decoding again",
              file=sys.stderr)
        return None


def write_entry(key: str, entry: dict[str, Any]) -> None:
    """Store `entry` under `key`, whole or not at all; a failure is said, never raised."""
    root = cache_dir()
    if root is None:
        return
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".imagefolder-{key}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            torch.save(entry, f)
        os.replace(tmp, root / f"imagefolder-{key}.pt")
    except OSError as exc:
        print(f"note: could not keep the decoded images in {root} ({exc.strerror or exc}); the next run decodes "
              f"them again (set {CACHE_ENV} to another folder, or to off)", file=sys.stderr)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
