"""`StoreSink`: the training loop's direct line into a Store, with batched metric writes."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

from parcae_scaling.db.sink import EvalRow, RunStatus
from parcae_scaling.db.store import MetricRow, Store


class StoreSink:
    """`MetricsSink` writing to a `Store`. Metric rows are buffered and written in one
    transaction once `batch_rows` accumulate or `flush_interval_s` has passed; evals and status
    changes flush the buffer first and are written at once (they are rare and matter)."""

    def __init__(self, store: Store, *, batch_rows: int = 2048, flush_interval_s: float = 10.0) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s}")
        self.store = store
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self._buffer: list[MetricRow] = []
        self._run_ids: set[str] = set()
        self._last_flush = time.monotonic()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("StoreSink is closed; create a new sink to write again")

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self._check_open()
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self._buffer.extend((run_id, int(step), str(k), float(v)) for k, v in values.items())
        self._run_ids.add(run_id)
        if len(self._buffer) >= self.batch_rows or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self._check_open()
        self.flush()
        self.store.log_evals(run_id, rows)

    def update_status(
        self, run_id: str, status: RunStatus, *, step: int | None = None, message: str | None = None
    ) -> None:
        self._check_open()
        self.flush()
        self.store.update_run(run_id, status=RunStatus(status), step=step, message=message)

    def flush(self) -> None:
        if self._buffer:
            rows, self._buffer = self._buffer, []
            try:
                self.store.log_metric_rows(rows)
            except BaseException:
                self._buffer = rows + self._buffer  # keep them for a retry; replay is idempotent
                raise
            for run_id in self._run_ids:
                self.store.heartbeat(run_id)
            self._run_ids.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> StoreSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
