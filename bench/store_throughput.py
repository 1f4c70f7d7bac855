"""Metric-row write throughput of the SQLite store: batched (1 and 8 processes) vs single-row.

Prints:
  BENCH store_rows_per_s_batched_1proc=<value> rows/s
  BENCH store_rows_per_s_batched_8proc=<value> rows/s   (all processes into one file)
  BENCH store_rows_per_s_single=<value> rows/s          (one row per transaction)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parcae_scaling.db import RunRecord, Store

WORKER = """
import json, sys, time, os
from parcae_scaling.db import Store
url, run_id, rows, batch, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
store = Store.open(url)
while not os.path.exists(go):
    time.sleep(0.005)
t0 = time.time()
for start in range(0, rows, batch):
    store.log_metric_rows((run_id, s // 2, "loss" if s % 2 else "lr", 1.0 / (s + 1))
                          for s in range(start, min(rows, start + batch)))
print(json.dumps({"start": t0, "end": time.time()}))
"""


def _record(store: Store, run_ids: list[str]) -> None:
    store.record_sweep("bench", {"bench": "store_throughput"})
    store.record_runs([
        RunRecord(run_id=r, sweep="bench", spec={"id": r}, arch="parcae", model="tiny",
                  params=1000, params_non_embedding=500, mu_rec=2, mu_bwd=1, budget_flops=1e12,
                  flop_convention="reference", flops_per_token=1e6, tokens=1_000_000)
        for r in run_ids
    ])


def batched_one_process(url: str, rows: int, batch: int) -> float:
    with Store.open(url) as store:
        _record(store, ["solo"])
        t0 = time.perf_counter()
        for start in range(0, rows, batch):
            store.log_metric_rows(("solo", s // 2, "loss" if s % 2 else "lr", 1.0 / (s + 1))
                                  for s in range(start, min(rows, start + batch)))
        elapsed = time.perf_counter() - t0
        assert store.count_rows("metrics") == rows
    return rows / elapsed


def batched_processes(url: str, n_procs: int, rows_per_proc: int, batch: int, tmp: Path) -> float:
    ids = [f"p{i}" for i in range(n_procs)]
    with Store.open(url) as store:
        _record(store, ids)
    go = tmp / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, r, str(rows_per_proc), str(batch), str(go)],
                         stdout=subprocess.PIPE, text=True)
        for r in ids
    ]
    time.sleep(3.0)  # let every process import and open the store before the clock starts
    go.touch()
    spans = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"writer process failed with exit code {p.returncode}")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    with Store.open(url) as store:
        assert store.count_rows("metrics") == n_procs * rows_per_proc
    return n_procs * rows_per_proc / wall


def single_rows(url: str, rows: int) -> float:
    with Store.open(url) as store:
        _record(store, ["single"])
        t0 = time.perf_counter()
        for s in range(rows):
            store.log_metric_rows([("single", s, "loss", 1.0 / (s + 1))])
        elapsed = time.perf_counter() - t0
        assert store.count_rows("metrics") == rows
    return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows for the 1-process run")
    parser.add_argument("--rows-per-proc", type=int, default=50_000)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=5_000, help="rows per write transaction")
    parser.add_argument("--single-rows", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parcae-bench-") as d:
        tmp = Path(d)
        one = batched_one_process(f"sqlite:///{tmp / 'one.sqlite'}", args.rows, args.batch)
        many = batched_processes(f"sqlite:///{tmp / 'many.sqlite'}", args.procs, args.rows_per_proc, args.batch, tmp)
        single = single_rows(f"sqlite:///{tmp / 'single.sqlite'}", args.single_rows)
    print(f"# batch={args.batch} rows/transaction; {args.procs} processes x {args.rows_per_proc} rows")
    print(f"BENCH store_rows_per_s_batched_1proc={one:.0f} rows/s")
    print(f"BENCH store_rows_per_s_batched_{args.procs}proc={many:.0f} rows/s")
    print(f"BENCH store_rows_per_s_single={single:.0f} rows/s")


if __name__ == "__main__":
    main()
