"""The metrics-sink interface every training run writes through.

A run never knows where its numbers go: a direct SQL store sink (db/), an append-only
run-directory sink (JSON lines, ingested later by the driver) or a test fake all implement
`MetricsSink`. Rows are keyed so that replaying a write is a no-op downstream
(metrics: run/step/name; evals: run/recurrence/split).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable


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

    def update_status(
        self, run_id: str, status: RunStatus, *, step: int | None = None, message: str | None = None
    ) -> None:
        """Lifecycle change (running, succeeded, diverged at `step`, failed with `message`)."""

    def flush(self) -> None:
        """Make everything logged so far durable."""

    def close(self) -> None: ...
