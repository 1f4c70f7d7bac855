"""How tests/db/data/store_0003/ was made: a store and run directories written by the code of
schema revision 0003, whose run ids still hashed the package version (commit ab4505f). Kept as a
record; running it with later code writes that code's store instead.

    cd /work/main && .venv/bin/python tests/db/data/make_store_0003.py

Sweep `legacy` (tests/db/data/store_0003/legacy.yaml): two tiny runs. mu_rec=1 trained to the end
(succeeded; its checkpoints are dropped to keep the fixture small: a succeeded run is never
trained again). mu_rec=2 is stopped by SIGTERM at step 30, like a preempted job, after its
checkpoint of step 20 (PREEMPTED, resumable). Paths are written under ROOT, which the tests
replace with their own directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

from parcae_scaling.db import Store
from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.sweeps.claims import claim_runs
from parcae_scaling.sweeps.launch import record_plan
from parcae_scaling.sweeps.plan import plan
from parcae_scaling.sweeps.spec import load_spec
from parcae_scaling.sweeps.worker import execute_run

ROOT = Path("/tmp/PARCAE_LEGACY_ROOT")
HERE = Path(__file__).resolve().parent / "store_0003"
STOP_AT_STEP = 30


class _StopAt:
    """A sink that delivers a SIGTERM to this worker once step STOP_AT_STEP is logged."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def log_metrics(self, run_id: str, step: int, values: Any) -> None:
        self.inner.log_metrics(run_id, step, values)
        if step == STOP_AT_STEP:
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    spec_path = ROOT / "legacy.yaml"
    shutil.copy(HERE / "legacy.yaml", spec_path)
    url = f"sqlite:///{ROOT / 'store.sqlite'}"
    p = plan(load_spec(spec_path))
    by_mu = {r.run.mu_rec: r.run for r in p.runs}
    with Store.open(url) as store:
        record_plan(store, p)
        attempts = claim_runs(store, [r.run_id for r in p.runs], backend="local", statuses=[RunStatus.PLANNED])
    done = execute_run(by_mu[1], url, attempt=attempts[by_mu[1].run_id])
    stopped = execute_run(by_mu[2], url, attempt=attempts[by_mu[2].run_id],
                          train=lambda run, sink: train_run(run, _StopAt(sink)))
    assert (done, stopped) == (RunStatus.SUCCEEDED, RunStatus.PREEMPTED), (done, stopped)
    for path in (Path(by_mu[1].output_dir)).glob("checkpoint*.pt"):
        path.unlink()
    for path in (Path(by_mu[2].output_dir)).glob("checkpoint.prev.pt"):
        path.unlink()
    with sqlite3.connect(ROOT / "store.sqlite") as conn:  # one file: fold the WAL in
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    shutil.rmtree(HERE / "runs", ignore_errors=True)
    shutil.copytree(ROOT / "runs", HERE / "runs", ignore=shutil.ignore_patterns("worker.lock"))
    shutil.copy(ROOT / "store.sqlite", HERE / "store.sqlite")
    print({r.run.mu_rec: r.run_id for r in p.runs})


if __name__ == "__main__":
    main()
