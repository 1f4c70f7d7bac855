"""sweeps/writer.py `classify`: the failure kind recorded for the exception that ended a run,
which decides whether plain `resume` retries it (model/contracts.py FailureKind)."""

from __future__ import annotations

import pytest
import torch

from parcae_scaling.model.contracts import FailureKind
from parcae_scaling.sweeps.ranks import RankFailure
from parcae_scaling.sweeps.writer import Terminated, classify


class _Kinded(RuntimeError):
    def __init__(self, kind: object) -> None:
        super().__init__("a failure that says what it is")
        self.failure_kind = kind


@pytest.mark.parametrize(("exc", "kind"), [
    (Terminated("signal 15"), "preempted"),  # SIGTERM: cancel, preemption
    (KeyboardInterrupt(), "preempted"),  # Ctrl-C
    (SystemExit(0), "preempted"),  # submitit's requeue on timeout / preemption
    (MemoryError(), "oom"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA error: out of memory"), "oom"),  # recognised by its message
    (RuntimeError("shapes cannot be multiplied"), "error"),
    (ValueError("bad value"), "error"),
    (OSError(5, "Input/output error"), "error"),
])
def test_kind_by_exception(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


@pytest.mark.parametrize("kind", ["node_lost", "disk_full", "diverged", "timeout"])
def test_an_exception_that_carries_its_kind_keeps_it(kind: str) -> None:
    assert classify(_Kinded(kind)) == kind
    assert classify(RankFailure(kind, "rank 1 failed")) == kind  # a data-parallel rank's classified failure


def test_the_carried_kind_wins_over_the_exception_type() -> None:
    oom = MemoryError()
    oom.failure_kind = "disk_full"  # type: ignore[attr-defined]
    assert classify(oom) == "disk_full"
    interrupted = KeyboardInterrupt()
    interrupted.failure_kind = "node_lost"  # type: ignore[attr-defined]
    assert classify(interrupted) == "node_lost"


@pytest.mark.parametrize("empty", [None, ""])
def test_an_empty_carried_kind_is_ignored(empty: object) -> None:
    assert classify(_Kinded(empty)) == "error"


def test_every_kind_is_a_failure_kind_and_only_preemption_is_retried() -> None:
    kinds = {classify(e) for e in (Terminated(), KeyboardInterrupt(), SystemExit(1), MemoryError(), ValueError())}
    assert kinds == {"preempted", "oom", "error"}
    assert {k for k in kinds if FailureKind(k).is_retryable} == {"preempted"}
