"""The run contracts every stage shares: how a run ends (RunStatus, FailureKind), what it
produced (EvalRow, RunResult: also its summary.json), and the MetricsSink it writes through.

A run never knows where its numbers go: a direct SQL store sink (db/), an append-only
run-directory sink (JSON lines, ingested by the driver) or a test fake all implement
`MetricsSink`. Rows are keyed so that replaying a write is a no-op downstream
(metrics: run/step/name; evals: run/recurrence/split). RunSpec, the input side of the
contract, is in model/run_spec.py.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

SUMMARY_VERSION = 1
# Liveness contract between a run's worker and whoever checks on it: the worker beats every
# DEFAULT_HEARTBEAT_S; a run silent for DEFAULT_STALE_AFTER_S (12 missed beats, so a busy node is not
# taken for a dead one) is lost (sweeps/claims.py `mark_stale`).
DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_STALE_AFTER_S = 120.0


class RunStatus(str, enum.Enum):
    """One enum for every backend's native states (mapped once, at the backend edge)."""

    PLANNED = "planned"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DIVERGED = "diverged"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.DIVERGED, RunStatus.CANCELLED)


class FailureKind(str, enum.Enum):
    """Why a run stopped without succeeding; decides whether `resume` retries it by default.
    The one list of kinds: workers record them, `resume` reads `is_retryable`."""

    DIVERGED = "diverged"  # non-finite loss or gradients, or learned nothing: the recipe's fault, never retried
    OOM = "oom"
    TIMEOUT = "timeout"  # the backend's time limit
    PREEMPTED = "preempted"  # SIGTERM, Ctrl-C, a requeue: resumable from the checkpoint
    NODE_LOST = "node_lost"  # the heartbeat stopped, the job ended without a word, or the store stayed away
    DISK_FULL = "disk_full"  # a checkpoint write found the disk full; the previous checkpoint is intact
    LOCKED = "locked"  # another live worker holds the run's output directory: a retry now fails alike
    ERROR = "error"  # an exception in the run (with its traceback)
    CANCELLED = "cancelled"

    @property
    def is_retryable(self) -> bool:
        """Retried by plain `resume`; the others (but diverged) need --include-failed."""
        return self in (FailureKind.PREEMPTED, FailureKind.TIMEOUT, FailureKind.NODE_LOST, FailureKind.DISK_FULL)


@dataclass(frozen=True, kw_only=True)
class EvalRow:
    """Validation loss of a trained model evaluated at a fixed recurrence T."""

    recurrence: int
    split: str
    loss: float
    tokens: int


@runtime_checkable
class MetricsSink(Protocol):
    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        """Scalar metrics (loss, lr, grad_norm, ...) at one optimizer step."""

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        """End-of-run evaluation rows, one per (recurrence, split)."""

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        """What this (re)start of the run runs on (model/train/provenance.py); JSON-able."""

    def update_status(
        self, run_id: str, status: RunStatus, *, step: int | None = None, message: str | None = None
    ) -> None:
        """Lifecycle change (running, succeeded, diverged at `step`, failed with `message`)."""

    def flush(self) -> None:
        """Make everything logged so far durable."""

    def close(self) -> None: ...


class NullSink:
    """The MetricsSink of ranks other than 0: they compute, rank 0 writes."""

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        pass

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        pass

    def update_status(self, run_id: str, status: RunStatus, *, step: int | None = None,
                      message: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What one run produced; also the content of its summary.json."""

    run_id: str
    status: RunStatus
    output_dir: str
    steps_planned: int
    steps_done: int
    tokens_planned: int
    tokens_trained: int
    flops_per_token: int
    flop_convention: str
    flops_planned: int
    flops_spent: int  # nominal: flops_per_token * tokens trained
    flops_realized: float  # same convention at the depths actually sampled
    params_total: int
    final_train_loss: float | None
    final_val_loss: float | None  # at the training depth mu_rec
    val_tokens: int
    evals: tuple[EvalRow, ...] = ()
    wall_time_s: float = 0.0  # this process, including data loading and evaluation
    train_seconds: float = 0.0  # optimizer steps only, summed over resumes
    precision: str | None = None  # what the run trained in: "fp32" | "bf16" (model/train/precision.py)
    diverged_step: int | None = None
    message: str | None = None
    summary_version: int = SUMMARY_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["evals"] = [asdict(e) for e in self.evals]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        d = dict(d)
        d["status"] = RunStatus(d["status"])
        d["evals"] = tuple(EvalRow(**e) for e in d.get("evals", ()))
        return cls(**d)
