"""Fit speed on Epoch's Chinchilla data: 4,500-start grid fit and 1,000 bootstrap refits.

Prints BENCH lines; the grid fit must reach Epoch's global optimum (Huber 0.0010183).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from parcae_scaling.scaling.data import epoch_chinchilla_table
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.laws import get_law

DATA = Path("/work/shared/data/scaling-laws/epoch_chinchilla_svg_extracted_data.csv")


def main() -> int:
    df = epoch_chinchilla_table(DATA)
    law = get_law("chinchilla")
    t0 = time.perf_counter()
    grid = fit_law(law, df)  # the full 4,500-point Epoch grid
    grid_s = time.perf_counter() - t0
    # Bootstrap alone: one start at the optimum, 1,000 warm-started run-resampled refits.
    start = law.to_fit_space(grid.params)[None, :]
    t0 = time.perf_counter()
    fit_law(law, df, starts=start, n_polish=1)  # timed only: its time is taken off the bootstrap time below
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    boot = fit_law(law, df, starts=start, n_polish=1, n_bootstrap=1000, seed=0)
    boot_s = time.perf_counter() - t0 - single_s
    print(f"grid: {grid.n_starts_agree}/{grid.n_starts} starts reach {grid.objective:.9f}", file=sys.stderr)
    print(f"bootstrap E 95%: [{boot.intervals['E'].low:.4f}, {boot.intervals['E'].high:.4f}]", file=sys.stderr)
    print(f"BENCH chinchilla_grid_fit_s={grid_s:.2f} s")
    print(f"BENCH chinchilla_grid_fit_huber={grid.objective:.9f}")
    print(f"BENCH chinchilla_grid_starts_agree={grid.n_starts_agree} starts")
    print(f"BENCH bootstrap_1000_s={boot_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
