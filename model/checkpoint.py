"""Atomic training checkpoints: model + optimizer + schedule position + RNG + data position.

Written to a temporary file in the same directory, fsynced, then renamed over the previous
checkpoint, so a SIGKILL at any instant leaves either the old or the new checkpoint, never a
torn one. Loaded with `torch.load(..., weights_only=True)`: a checkpoint is data, not code.
The data position is the next optimizer step: batches are a pure function of (seed, step).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from parcae_scaling.model.optim import OptimizerBundle

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass(kw_only=True)
class TrainProgress:
    """Counters a resumed run must continue from (mutable: the loop advances it)."""

    step: int = 0  # optimizer steps completed == index of the next step to run
    tokens: int = 0
    depth_sum: float = 0.0  # sum over trained sequences of the sampled recurrence T
    grad_depth_sum: float = 0.0  # sum over trained sequences of min(T, mu_bwd)
    sequences: int = 0
    train_seconds: float = 0.0
    recent_losses: list[float] = field(default_factory=list)


def save_checkpoint(path: str | Path, *, run_id: str, model: nn.Module, optimizer: OptimizerBundle,
                    progress: TrainProgress) -> None:
    """Write a checkpoint atomically (temp file + fsync + rename)."""
    path = Path(path)
    payload: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "run_id": run_id,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"step": progress.step},
        "data": {"next_step": progress.step},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "progress": asdict(progress),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, *, run_id: str, model: nn.Module, optimizer: OptimizerBundle) -> TrainProgress:
    """Restore model, optimizer and RNG state in place; return the progress to continue from."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} is not {CHECKPOINT_VERSION}; "
                         "start the run in a fresh output directory")
    if payload.get("run_id") != run_id:
        raise ValueError(f"{path} belongs to run {payload.get('run_id')}, not {run_id}; "
                         "use a fresh output directory for a different run spec")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    progress = TrainProgress(**payload["progress"])
    if progress.step != payload["data"]["next_step"] or progress.step != payload["schedule"]["step"]:
        raise ValueError(f"{path}: inconsistent step counters; the checkpoint is corrupt")
    return progress
