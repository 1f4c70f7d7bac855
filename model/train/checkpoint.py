"""Atomic training checkpoints: model + optimizer + schedule position + RNG + data position.

Two files per run directory: `checkpoint.pt` (the newest) and `checkpoint.prev.pt` (the one
before it). A save writes a temporary file in the same directory and fsyncs it; only then is
the newest renamed to the previous and the temporary file to the newest (the directory fsynced
after). A SIGKILL, a full disk or a torn write at any instant therefore leaves at least one
complete checkpoint, and a write that fails leaves both old files untouched. A load takes the
newest readable one, falling back to the previous if the newest is torn or corrupt.

Loaded with `torch.load(..., weights_only=True)`: a checkpoint is data, not code. The data
position is the next optimizer step: batches are a pure function of (seed, step).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from parcae_scaling.faults import fault_point
from parcae_scaling.model.contracts import FailureKind
from parcae_scaling.model.train.optim import OptimizerBundle

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
CHECKPOINT_VERSION = 1
_TMP_PREFIX = f".{CHECKPOINT_FILE}."  # temporary files of an unfinished save
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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
    # The untrained model's loss (step 1) and the highest train loss since: a run whose loss rose
    # far above where it started was unstable (model/train/loop.py's "learned nothing" guard).
    first_loss: float | None = None
    peak_loss: float | None = None
    precision: str | None = None  # "fp32" | "bf16": what the run trains in (kept across resumes)


class CheckpointUnreadable(ValueError):
    """No readable checkpoint of this run remains: training cannot continue without the user.

    Kind "error" (not retried by plain `resume`): retrying reads the same bytes and fails the
    same way, so the run waits for the user to delete the files and `resume --include-failed`."""

    failure_kind = FailureKind.ERROR.value


class CheckpointNoSpace(OSError):
    """The disk filled up while writing a checkpoint; the previous checkpoints are untouched.

    Kind "disk_full": resumable, since nothing is lost. Once space is freed, `resume` continues
    from the newest intact checkpoint."""

    failure_kind = FailureKind.DISK_FULL.value


@dataclass(frozen=True, kw_only=True)
class RestoredCheckpoint:
    """What `load_latest_checkpoint` restored, and which newer files it had to skip."""

    progress: TrainProgress
    path: Path
    skipped: tuple[tuple[Path, str], ...]  # (unreadable file, why), newest first

    def fallback_note(self) -> str | None:
        """One log line when an unreadable newer checkpoint was passed over, else None."""
        if not self.skipped:
            return None
        bad = "; ".join(f"{p} is unreadable ({why})" for p, why in self.skipped)
        return f"{bad}; resuming from {self.path} at step {self.progress.step}"


def checkpoint_paths(directory: str | Path) -> tuple[Path, Path]:
    """(newest, previous) checkpoint paths of a run directory, newest first."""
    d = Path(directory)
    return d / CHECKPOINT_FILE, d / PREVIOUS_CHECKPOINT_FILE


def has_checkpoint(directory: str | Path) -> bool:
    """True if a resume would try to restore a checkpoint from `directory`."""
    return any(p.exists() for p in checkpoint_paths(directory))


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the renames themselves durable
    finally:
        os.close(dir_fd)


def _out_of_space(exc: BaseException) -> bool:
    """torch.save reports a failed write as a RuntimeError whose context is the OSError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def save_checkpoint(directory: str | Path, *, run_id: str, model: nn.Module, optimizer: OptimizerBundle,
                    progress: TrainProgress) -> Path:
    """Write a new newest checkpoint atomically, keeping the former newest as the previous one.

    Returns the path written. Raises CheckpointNoSpace if the disk is full (both old files intact)."""
    directory = Path(directory)
    newest, previous = checkpoint_paths(directory)
    for stale in directory.glob(f"{_TMP_PREFIX}*"):  # left by a save killed mid-write
        stale.unlink(missing_ok=True)
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
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and _out_of_space(exc):
            kept = " and ".join(str(p) for p in (newest, previous) if p.exists())
            state = f"{kept} are intact" if kept else "no earlier checkpoint exists (it restarts from step 0)"
            raise CheckpointNoSpace(
                f"no space left on the device of {directory} while writing the checkpoint of step "
                f"{progress.step}; {state}; free disk space (or move the output root), then "
                "parcae-sweep resume SWEEP continues the run",
            ) from exc
        raise
    # Both renames come after the new file is durable: at every instant one complete checkpoint
    # exists (between them the previous file holds the newest state; the loader looks there too).
    fault_point("checkpoint_tmp")
    if newest.exists():
        os.replace(newest, previous)
    os.replace(tmp, newest)
    _fsync_dir(directory)
    fault_point("checkpoint_saved")
    return newest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def _read(path: Path, run_id: str, aliases: Sequence[str] = ()) -> dict[str, Any]:
    """The validated payload of `path`. Raises CheckpointUnreadable for a torn or corrupt file,
    ValueError for a readable checkpoint that must not be used (another run, another version).
    `aliases`: other ids of the same run (RunSpec.legacy_run_ids: written before schema 0004)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torn zip, truncated pickle, refused global, I/O error: all "unreadable"
        raise CheckpointUnreadable(_first_line(exc)) from exc
    if not isinstance(payload, dict):
        raise CheckpointUnreadable(f"holds a {type(payload).__name__}, not a checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} is not {CHECKPOINT_VERSION}; "
                         "start the run in a fresh output directory")
    if payload.get("run_id") != run_id and payload.get("run_id") not in aliases:
        raise ValueError(f"{path} belongs to run {payload.get('run_id')}, not {run_id}; "
                         "use a fresh output directory for a different run spec")
    try:
        progress = TrainProgress(**payload["progress"])
        steps = (progress.step, payload["data"]["next_step"], payload["schedule"]["step"])
        complete = all(k in payload for k in ("model", "optimizer")) and "torch" in payload["rng"]
    except (KeyError, TypeError) as exc:
        raise CheckpointUnreadable(f"incomplete checkpoint ({_first_line(exc)})") from exc
    if not complete or len(set(steps)) != 1:
        raise CheckpointUnreadable("incomplete checkpoint or inconsistent step counters")
    payload["progress"] = progress
    return payload


def _unreadable_message(directory: Path, skipped: list[tuple[Path, str]]) -> str:
    names = " and ".join(str(p) for p, _ in skipped)
    why = "; ".join(f"{p.name}: {reason}" for p, reason in skipped)
    return (f"no readable checkpoint in {directory} ({why}); delete {names} to restart the run from "
            "step 0, then parcae-sweep resume SWEEP --include-failed")


def load_latest_checkpoint(directory: str | Path, *, run_id: str, model: nn.Module,
                           optimizer: OptimizerBundle, aliases: Sequence[str] = ()) -> RestoredCheckpoint | None:
    """Restore model, optimizer and RNG state in place from the newest readable checkpoint.

    None if the directory holds no checkpoint (a fresh run). Raises CheckpointUnreadable if
    checkpoint files exist but none can be read, and ValueError for another run's checkpoint."""
    directory = Path(directory)
    skipped: list[tuple[Path, str]] = []
    for path in checkpoint_paths(directory):
        if not path.exists():
            continue
        try:
            payload = _read(path, run_id, aliases)
        except CheckpointUnreadable as exc:
            skipped.append((path, str(exc)))
            continue
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"]["torch"])
        if payload["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        return RestoredCheckpoint(progress=payload["progress"], path=path, skipped=tuple(skipped))
    if skipped:
        raise CheckpointUnreadable(_unreadable_message(directory, skipped))
    return None


def read_model_state(path: str | Path, *, run_id: str,
                     aliases: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], TrainProgress]:
    """The model weights and progress of one checkpoint file, validated as a resume validates it
    (model/train/export.py). Raises CheckpointUnreadable or ValueError with one line naming the file."""
    path = Path(path)
    try:
        payload = _read(path, run_id, aliases)
    except CheckpointUnreadable as exc:
        raise CheckpointUnreadable(f"{path} is unreadable ({exc}); export another run, or train this one "
                                   "again in a fresh output directory") from None
    return payload["model"], payload["progress"]


def checkpoint_step(directory: str | Path) -> int | None:
    """The step a resume of this run directory would continue from, None if no checkpoint is
    readable. Cheap: tensors are memory-mapped, not read (for log lines and status views)."""
    for path in checkpoint_paths(directory):
        if not path.exists():
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return int(payload["schedule"]["step"])
        except Exception:  # unreadable: the loader falls back the same way, and reports it
            continue
    return None
