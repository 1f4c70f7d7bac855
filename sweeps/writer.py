"""What every process that writes a run shares (the worker, or rank 0 of a data-parallel run):
the sink it trains through, how an exception that ended the run is classified, and SIGTERM as
an exception. Below both sweeps/worker.py and sweeps/ranks.py, so neither imports the other's
internals."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Mapping, Sequence

from parcae_scaling.db import EvalRow, RunDirSink, RunStatus, StoreSink
from parcae_scaling.db.trackers import TrackerSink
from parcae_scaling.model.contracts import FailureKind
from parcae_scaling.faults import fault_point
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.claims import FencedStore


class Terminated(BaseException):
    """SIGTERM arrived (cancel, preemption): not an Exception, so the loop does not swallow it."""


class _ClassifyingSink:
    """Pass everything to the inner sink except FAILED statuses (the worker classifies those)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self.inner.log_metrics(run_id, step, values)

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self.inner.log_evals(run_id, rows)

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self.inner.log_provenance(run_id, record)

    def update_status(self, run_id: str, status: RunStatus, *, step: int | None = None,
                      message: str | None = None) -> None:
        if RunStatus(status) is not RunStatus.FAILED:
            self.inner.update_status(run_id, status, step=step, message=message)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


class _TeeSink:
    """The run directory first (buffered appends; durable at each flush), then the store, then
    the experiment trackers, if any (they never raise: db/trackers.py)."""

    def __init__(self, run_dir: RunDirSink, store: StoreSink, trackers: TrackerSink | None = None) -> None:
        self.run_dir, self.store, self.trackers = run_dir, store, trackers

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self.run_dir.log_metrics(run_id, step, values)
        self.store.log_metrics(run_id, step, values)
        if self.trackers is not None:
            self.trackers.log_metrics(run_id, step, values)

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self.run_dir.log_evals(run_id, rows)
        self.store.log_evals(run_id, rows)
        if self.trackers is not None:
            self.trackers.log_evals(run_id, rows)

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self.run_dir.log_provenance(run_id, record)
        self.store.log_provenance(run_id, record)
        if self.trackers is not None:
            self.trackers.log_provenance(run_id, record)

    def update_status(self, run_id: str, status: RunStatus, *, step: int | None = None,
                      message: str | None = None) -> None:
        fault_point("status_update")
        self.run_dir.update_status(run_id, status, step=step, message=message)
        self.store.update_status(run_id, status, step=step, message=message)
        if self.trackers is not None:
            self.trackers.update_status(run_id, status, step=step, message=message)

    def flush(self) -> None:
        self.run_dir.flush()
        self.store.flush()
        if self.trackers is not None:
            self.trackers.flush()

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.run_dir.close()
            if self.trackers is not None:
                self.trackers.close()


@contextlib.contextmanager
def run_sink(fenced: FencedStore, run: RunSpec, *, heartbeat_s: float) -> Iterator[_ClassifyingSink]:
    """The sink a run's writer (the worker, or rank 0 of a data-parallel run) trains through:
    run directory and store (fenced on the attempt), then the spec's experiment trackers;
    FAILED held back for the worker."""
    with RunDirSink(run.output_dir) as files, \
            StoreSink(fenced, flush_interval_s=min(heartbeat_s, 10.0)) as sink:  # type: ignore[arg-type]
        trackers = TrackerSink(run) if run.tracking.trackers else None
        try:
            yield _ClassifyingSink(_TeeSink(files, sink, trackers))
        finally:
            if trackers is not None:
                trackers.close()  # idempotent; also when the store or the run directory failed to close


def classify(exc: BaseException) -> str:
    import torch

    if getattr(exc, "failure_kind", None):  # already classified (sweeps/ranks.RankFailure: a rank's failure)
        kind = exc.failure_kind  # type: ignore[attr-defined]
        return kind.value if isinstance(kind, FailureKind) else str(kind)
    # SystemExit: submitit's requeue on timeout/preemption; KeyboardInterrupt: Ctrl-C, a user's preemption
    if isinstance(exc, (Terminated, SystemExit, KeyboardInterrupt)):
        return FailureKind.PREEMPTED.value
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return FailureKind.OOM.value
    return FailureKind.ERROR.value


def install_sigterm() -> object | None:
    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)
