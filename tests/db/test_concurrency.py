"""Many writer processes and killed writers: no lost rows, no "database is locked", no half batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from parcae_scaling.db import Store
from parcae_scaling.db.migrate import head_revision

# Each writer opens the (fresh) store, records the shared sweep and its own run, then logs
# 10,000 steps x {loss, lr} = 20,000 rows through StoreSink (batches of 1,000).
WRITER = """
import sys, time
from parcae_scaling.db import RunRecord, Store, StoreSink
url, run_id, steps, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
store = Store.open(url)
store.record_sweep("sw", {"writers": 8})
store.record_run(RunRecord(run_id=run_id, sweep="sw", spec={"id": run_id}, arch="parcae",
    model="tiny", params=10, params_non_embedding=5, mu_rec=2, mu_bwd=1, budget_flops=1e12,
    flop_convention="reference", flops_per_token=1e6, tokens=1000))
while not __import__("os").path.exists(go):  # start together to maximise contention
    time.sleep(0.01)
with StoreSink(store, batch_rows=1000) as sink:
    for step in range(steps):
        sink.log_metrics(run_id, step, {"loss": 1.0 / (step + 1), "lr": 1e-3})
store.close()
"""

# Writes 5,000-row batches forever; the test SIGKILLs it mid-stream.
KILLED_WRITER = """
import sys
from parcae_scaling.db import Store
store = Store.open(sys.argv[1])
batch = 0
while True:
    store.log_metric_rows(("r0", batch * 5000 + i, "loss", 0.5) for i in range(5000))
    batch += 1
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(600)
def test_eight_concurrent_writers_lose_nothing(store_url, tmp_path):
    """Also covers many processes creating the schema and recording one sweep at the same time."""
    n_procs, steps = 8, 10_000
    go = tmp_path / "go"
    procs = [_spawn(WRITER, store_url, f"r{i}", str(steps), str(go)) for i in range(n_procs)]
    go.touch()  # writers that are ready start at once; the rest join as they finish opening
    errors = [p.communicate(timeout=540)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n_procs, "\n".join(errors)
    assert not any("locked" in e for e in errors)
    with Store.open(store_url, upgrade=False) as store:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
        assert store.count_rows("sweeps") == 1 and store.count_rows("runs") == n_procs
        assert store.count_rows("metrics") == n_procs * 2 * steps == 160_000
        per_run = store.metric_history(sweep="sw", names=["loss"]).groupby("run_id").step.nunique()
        assert per_run.to_dict() == {f"r{i}": steps for i in range(n_procs)}


@pytest.mark.timeout(300)
def test_sigkill_mid_batch_leaves_consistent_database(store_url, make_run):
    with Store.open(store_url) as store:
        store.record_sweep("sw", {})
        store.record_run(make_run("r0"))
        proc = _spawn(KILLED_WRITER, store_url)
        deadline = time.monotonic() + 120
        try:
            while store.count_rows("metrics") < 15_000:  # a few batches committed, more in flight
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "writer made no progress"
                time.sleep(0.02)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with Store.open(store_url) as store:
        if store.engine.dialect.name == "sqlite":
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
        rows = store.count_rows("metrics")
        assert rows >= 15_000 and rows % 5000 == 0  # whole batches only
        steps = store.metric_history(run_ids=["r0"]).step.tolist()
        assert steps == list(range(rows))  # committed batches are complete and contiguous
        store.log_metric_rows([("r0", rows, "loss", 0.1)])  # still writable
        assert store.count_rows("metrics") == rows + 1
