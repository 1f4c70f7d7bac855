"""Calibration of the toolkit's 95% intervals on simulated sweeps (scaling/calibration.py).

A sweep like the Parcae isoFLOP studies (4 budgets over 8x, mu_rec in {2, 4, 8, 16}, 3 seeds per
cell) is simulated from a known Parcae law with the replicate noise measured on this machine
(README, "Noise": the noise sweep's pooled SD), analysed as a real sweep is, and every interval
checked against the law's true value. Target: 0.92-0.98 for the law-based quantities. The
parabola rows are the model-free isoFLOP check; their intervals carry the noise but not the
parabola's bias on a wide grid, and the script prints how far they fall short.
"""

from __future__ import annotations

import argparse
import time

from parcae_scaling.scaling.calibration import ISOFLOP_QUANTITIES, LAW_QUANTITIES, Case, coverage

MEASURED_NOISE_SD = 0.0104  # nats/token: the noise sweep's pooled replicate SD (README, "Noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=200, help="simulated sweeps per quantity (>= 200)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicas per interval")
    parser.add_argument("--noise-sd", type=float, default=MEASURED_NOISE_SD)
    args = parser.parse_args()
    case = Case(noise_sd=args.noise_sd)
    print(f"case: budgets {case.budgets_flops}, mu_rec {case.mu_values}, {case.replicates} replicates, "
          f"noise SD {case.noise_sd} nats; truth {({k: round(v, 4) for k, v in case.truth().items()})}")
    t0 = time.perf_counter()
    results = coverage(case, LAW_QUANTITIES + ISOFLOP_QUANTITIES, n_sims=args.sims, n_bootstrap=args.bootstrap)
    for name, c in results.items():
        print(f"{name:>22}: {c.covered}/{c.total} covered ({c.fraction:.3f}); median width "
              f"{100 * c.median_width:.1f}% of the true value")
    print(f"{args.sims} sweeps in {time.perf_counter() - t0:.0f} s")
    for name, c in results.items():
        print(f"BENCH coverage_{name}={c.fraction:.3f} frac")


if __name__ == "__main__":
    main()
