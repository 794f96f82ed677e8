"""Crash-safe checkpoints: write to a temporary file in the same directory, fsync, rename.

``os.replace`` is atomic on POSIX, so a reader sees either the previous checkpoint or the new
one, never half a file: a process killed mid-write leaves only a ``.tmp`` file that
``load_checkpoint`` never picks. Files are read with ``weights_only=True``: tensors and plain
containers only, no arbitrary unpickling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FILENAME = "checkpoint.pt"


def checkpoint_path(path: str | Path) -> Path:
    """A directory means ``DIR/checkpoint.pt``; a file path is used as is."""
    p = Path(path)
    return p / FILENAME if p.is_dir() or not p.suffix else p


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (a directory or a file) and return the file."""
    target = checkpoint_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    target = checkpoint_path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(target)!r}")
    return torch.load(target, map_location="cpu", weights_only=True)
