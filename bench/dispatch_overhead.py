"""Dispatch overhead: time to plan a 10,000-run spec, and per-run overhead of each backend.

Backends run no-op runs (PARCAE_NOOP_RUNS=1: the worker records the run as succeeded without
training), so the figure is launch wall time / runs: claiming, submission, worker start-up
(a Python process importing torch, a SLURM job, a Ray task) and the store writes. SLURM uses a
private single-node cluster from tests/services/slurm.sh (root only; skipped otherwise).

    python bench/dispatch_overhead.py        # prints BENCH lines, exits 0
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parcae_scaling.db import Store
from parcae_scaling.sweeps import get_backend, launch, plan, spec_from_dict

N_RUNS = 12
ROOT = Path(__file__).resolve().parents[1]


def _spec(name: str, out: Path, *, n_budgets: int, n_mu: int, n_seeds: int) -> dict:
    return {
        "name": name, "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32},
        "budgets_flops": [1e10 * (1 + i / 10) for i in range(n_budgets)], "mu_rec": list(range(1, n_mu + 1)),
        "seeds": list(range(n_seeds)), "recipe": {"batch_size": 8},
        "resources": {"max_concurrent": 2, "time_limit_min": 5, "mem_gb": 1}, "output_root": str(out),
    }


def bench_plan(tmp: Path) -> None:
    spec = spec_from_dict(_spec("plan10k", tmp, n_budgets=100, n_mu=10, n_seeds=10))
    t0 = time.perf_counter()
    p = plan(spec)
    dt = time.perf_counter() - t0
    assert len(p.runs) == 10_000, len(p.runs)
    print(f"BENCH plan_10k_runs_s={dt:.3f} s")


def bench_backend(name: str, tmp: Path) -> None:
    spec = spec_from_dict(_spec(f"noop-{name}", tmp / name, n_budgets=N_RUNS // 2, n_mu=2, n_seeds=1))
    url = f"sqlite:///{tmp / f'{name}.sqlite'}"
    with Store.open(url) as store:
        t0 = time.perf_counter()
        rep = launch(plan(spec), store, get_backend(name), store_url=url, heartbeat_s=1.0)
        dt = time.perf_counter() - t0
    assert len(rep.dispatched) == N_RUNS and not rep.unfinished, rep
    print(f"BENCH dispatch_overhead_{name}_s={dt / N_RUNS:.3f} s  # {N_RUNS} no-op runs, 2 at a time")


def main() -> int:
    os.environ["PARCAE_NOOP_RUNS"] = "1"
    with tempfile.TemporaryDirectory(prefix="parcae-bench-") as d:
        tmp = Path(d)
        bench_plan(tmp)
        bench_backend("local", tmp)
        slurm_dir = tmp / "slurm"
        started = subprocess.run(["bash", str(ROOT / "tests" / "services" / "slurm.sh"), "start", str(slurm_dir)],
                                 capture_output=True, text=True) if os.geteuid() == 0 else None
        if started is not None and started.returncode == 0:
            os.environ["SLURM_CONF"] = started.stdout.strip().splitlines()[-1]
            try:
                bench_backend("submitit", tmp)
            finally:
                subprocess.run(["bash", str(ROOT / "tests" / "services" / "slurm.sh"), "stop", str(slurm_dir)],
                               capture_output=True)
        else:
            why = "not root" if started is None else started.stderr.strip()[-200:]
            print(f"# submitit skipped: the SLURM test cluster could not start ({why})", file=sys.stderr)
        import ray

        try:
            bench_backend("ray", tmp)
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
