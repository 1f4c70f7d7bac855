"""StoreSink while its store is unreachable (fast: a store whose writes fail on demand; the real
PostgreSQL stop/start is tests/faults/test_store_down.py)."""

from __future__ import annotations

import threading
import time

import pytest

from parcae_scaling.db import RunStatus, Store, StoreSink, StoreUnavailableError
from parcae_scaling.sweeps.claims import RETRYABLE_KINDS


class FlakyStore:
    """A real store whose writes raise StoreUnavailableError while `down` is set."""

    def __init__(self, store: Store) -> None:
        self.store, self.down, self.attempts = store, False, 0

    def __getattr__(self, name: str):  # noqa: ANN204
        target = getattr(self.store, name)
        if name not in ("log_metric_rows", "heartbeat", "log_evals", "update_run"):
            return target

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.attempts += 1
            if self.down:
                raise StoreUnavailableError("cannot open the store: connection refused")
            return target(*args, **kwargs)
        return call


@pytest.fixture
def flaky(store, make_run) -> FlakyStore:
    store.record_sweep("sw", {})
    store.record_run(make_run("r0"))
    return FlakyStore(store)


def _steps(store: Store) -> list[int]:
    return sorted(store.metric_history(run_ids=["r0"], names=["loss"])["step"])


def test_training_goes_on_and_rows_arrive_when_the_store_is_back(flaky) -> None:
    sink = StoreSink(flaky, batch_rows=4, flush_interval_s=0, outage_limit_s=60)  # type: ignore[arg-type]
    sink.log_metrics("r0", 0, {"loss": 5.0})
    flaky.down = True
    t0 = time.monotonic()
    for step in range(1, 50):
        sink.log_metrics("r0", step, {"loss": 5.0 - step / 100})  # never blocks, never raises
    assert time.monotonic() - t0 < 1.0 and _steps(flaky.store) == [0]
    flaky.down = False
    sink.flush()
    sink.log_metrics("r0", 50, {"loss": 4.0})
    sink.close()
    assert _steps(flaky.store) == list(range(51))  # every row, once


def test_flush_and_status_wait_for_the_store(flaky) -> None:
    sink = StoreSink(flaky, flush_interval_s=60, outage_limit_s=60)  # type: ignore[arg-type]
    sink.log_metrics("r0", 0, {"loss": 5.0})
    flaky.down = True
    threading.Timer(1.5, lambda: setattr(flaky, "down", False)).start()
    sink.update_status("r0", RunStatus.SUCCEEDED)  # flushes first: waits out the outage
    assert flaky.attempts > 2 and _steps(flaky.store) == [0]
    assert flaky.store.runs()["status"].tolist() == ["succeeded"]


def test_an_outage_past_the_limit_raises_a_resumable_kind(flaky) -> None:
    sink = StoreSink(flaky, flush_interval_s=60, outage_limit_s=1.0)  # type: ignore[arg-type]
    sink.log_metrics("r0", 0, {"loss": 5.0})
    flaky.down = True
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"unreachable for \d+ s .*parcae-sweep resume") as info:
        sink.flush()
    assert 1.0 <= time.monotonic() - t0 < 5.0
    assert info.value.failure_kind in RETRYABLE_KINDS
    t0 = time.monotonic()
    sink.close()  # gave up already: no second wait
    assert time.monotonic() - t0 < 0.5
