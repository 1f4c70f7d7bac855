"""`StoreSink`: the training loop's direct line into a Store, with batched metric writes that
survive the store going away for a while (a PostgreSQL restart, a failover, a lock held too long)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from parcae_scaling.db.errors import StoreUnavailableError
from parcae_scaling.model.contracts import EvalRow, RunStatus
from parcae_scaling.db.store import MetricRow, Store

# How long a run keeps training and retrying while its store is unreachable. Below the default
# stale window (sweeps/launch.py, 120 s): a worker gives up (node_lost: resumable) before a driver
# would declare it lost, so an outage never leaves a live run that the driver thinks is dead.
DEFAULT_OUTAGE_LIMIT_S = 90.0
OUTAGE_LIMIT_ENV = "PARCAE_STORE_OUTAGE_S"  # overrides the default, e.g. for a slow failover
RETRY_FIRST_S = 0.5  # backoff between attempts: 0.5 s, doubling up to RETRY_MAX_S
RETRY_MAX_S = 8.0


class StoreSink:
    """`MetricsSink` writing to a `Store`. Metric rows are buffered and written in one
    transaction once `batch_rows` accumulate or `flush_interval_s` has passed; evals and status
    changes flush the buffer first and are written at once (they are rare and matter).

    While the store is unreachable (`StoreUnavailableError`) nothing is dropped: metric rows stay
    buffered and training goes on, retried with backoff; `flush()`, evals and status changes wait
    for the store (metrics up to a checkpoint must be durable before it is). An outage longer than
    `outage_limit_s` (default: $PARCAE_STORE_OUTAGE_S, else DEFAULT_OUTAGE_LIMIT_S) raises
    `StoreUnavailableError` (failure kind node_lost: `resume` continues the run from its last
    checkpoint, whose rows are all stored). Replays are idempotent."""

    def __init__(self, store: Store, *, batch_rows: int = 2048, flush_interval_s: float = 10.0,
                 outage_limit_s: float | None = None) -> None:
        if outage_limit_s is None:
            outage_limit_s = float(os.environ.get(OUTAGE_LIMIT_ENV, DEFAULT_OUTAGE_LIMIT_S))
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s}")
        if outage_limit_s < 0:
            raise ValueError(f"outage_limit_s must be >= 0, got {outage_limit_s}")
        self.store = store
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.outage_limit_s = outage_limit_s
        self._buffer: list[MetricRow] = []
        self._run_ids: set[str] = set()
        self._last_flush = time.monotonic()
        self._closed = False
        self._down_since: float | None = None  # start of the current outage
        self._retry_at = 0.0
        self._delay = RETRY_FIRST_S
        self._gave_up: StoreUnavailableError | None = None

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("StoreSink is closed; create a new sink to write again")

    def _attempt(self, write: Callable[[], None], *, wait: bool) -> bool:
        """Run `write`. If the store is unavailable: with `wait`, retry with backoff until it is
        back; without, return False at once (the caller keeps its rows for a later try). Either
        way an outage past `outage_limit_s` raises."""
        while True:
            if self._gave_up is not None:
                raise self._gave_up
            if not wait and time.monotonic() < self._retry_at:
                return False
            try:
                write()
            except StoreUnavailableError as err:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since, self._delay = now, RETRY_FIRST_S
                    print(f"parcae store sink: {err} -- keeping {len(self._buffer)} metric row(s) and retrying "
                          f"for up to {self.outage_limit_s:.0f} s", file=sys.stderr, flush=True)
                if now - self._down_since >= self.outage_limit_s:
                    self._gave_up = StoreUnavailableError(
                        f"the store stayed unreachable for {now - self._down_since:.0f} s (limit "
                        f"{self.outage_limit_s:.0f} s): {err}; the run stopped as node_lost and "
                        "`parcae-sweep resume` continues it from its last checkpoint")
                    raise self._gave_up from err
                self._retry_at = now + self._delay
                self._delay = min(2 * self._delay, RETRY_MAX_S)
                if not wait:
                    return False
                time.sleep(max(0.0, min(self._retry_at, self._down_since + self.outage_limit_s) - now))
                continue
            if self._down_since is not None:
                print(f"parcae store sink: the store is back after {time.monotonic() - self._down_since:.1f} s",
                      file=sys.stderr, flush=True)
            self._down_since, self._retry_at = None, 0.0
            return True

    def _write_buffer(self, *, wait: bool) -> None:
        if self._buffer:
            rows, run_ids = list(self._buffer), sorted(self._run_ids)

            def write() -> None:
                self.store.log_metric_rows(rows)
                for run_id in run_ids:
                    self.store.heartbeat(run_id)

            # Any other error leaves the rows buffered too (for a retry) and propagates.
            if not self._attempt(write, wait=wait):
                return
            del self._buffer[: len(rows)]
            self._run_ids.clear()
        self._last_flush = time.monotonic()

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self._check_open()
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self._buffer.extend((run_id, int(step), str(k), float(v)) for k, v in values.items())
        self._run_ids.add(run_id)
        if len(self._buffer) >= self.batch_rows or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._write_buffer(wait=False)  # the store down: keep training, rows stay buffered

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self._check_open()
        self.flush()
        self._attempt(lambda: self.store.log_evals(run_id, rows), wait=True)

    def log_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self._check_open()
        self._attempt(lambda: self.store.set_provenance(run_id, record), wait=True)

    def update_status(
        self, run_id: str, status: RunStatus, *, step: int | None = None, message: str | None = None
    ) -> None:
        self._check_open()
        self.flush()
        self._attempt(lambda: self.store.update_run(run_id, status=RunStatus(status), step=step, message=message),
                      wait=True)

    def flush(self) -> None:
        """Write every buffered row, waiting for an unavailable store (up to the outage limit)."""
        self._write_buffer(wait=True)

    def close(self) -> None:
        if not self._closed:
            if self._gave_up is None:  # after giving up, a second wait for the store helps nobody
                self.flush()
            self._closed = True

    def __enter__(self) -> StoreSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
