"""Synthetic sweeps drawn from known laws with multiplicative noise: for checking that fits
recover what they should (tests, benchmarks, demos). Never mixed with real results."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from parcae_scaling.scaling.effective_params import UnrolledParams
from parcae_scaling.scaling.laws import get_law

DEFAULT_PARCAE = {"E": 1.3, "A": 2.0e3, "a": 0.6, "B": 60.0, "b": 0.3}


def synthetic_parcae_sweep(
    *,
    params: Mapping[str, float] = DEFAULT_PARCAE,
    non_core: float = 2.0e5,
    core: float = 1.0e5,
    flops_per_token: tuple[float, float] = (1.5e6, 0.6e6),  # intercept, slope in mu_rec
    budgets_flops: tuple[float, ...] = (1e12, 2e12, 4e12, 8e12, 16e12),
    mu_values: tuple[int, ...] = (1, 2, 4, 6, 8, 12),
    noise: float = 0.002,
    seed: int = 0,
    replicates: int = 1,
    additive_sd: float | None = None,
) -> pd.DataFrame:
    """Run table (RUN_COLUMNS + non_core_params, core_params, seed) from the Parcae law:
    `replicates` runs per cell, with multiplicative log-normal noise `noise`, or additive
    Gaussian noise of SD `additive_sd` nats (the replicate noise model of scaling/replicates.py)."""
    rows = []
    for c in budgets_flops:
        for mu in mu_values:
            fpt = flops_per_token[0] + flops_per_token[1] * mu
            for r in range(replicates):
                rows.append({"run_id": f"c{c:.0e}-mu{mu}" + (f"-s{r}" if replicates > 1 else ""), "budget_flops": c,
                             "mu_rec": float(mu), "tokens": float(int(c / fpt)), "params": non_core + core,
                             "non_core_params": non_core, "core_params": core, "flop_convention": "synthetic",
                             "seed": r})
    df = pd.DataFrame(rows)
    law = get_law("parcae", effective_params=UnrolledParams(non_core=non_core, core=core))
    rng = np.random.default_rng(seed)
    truth = law.predict(params, df)
    if additive_sd is not None:
        df["loss"] = truth + additive_sd * rng.standard_normal(len(df))
    else:
        df["loss"] = truth * np.exp(noise * rng.standard_normal(len(df)))
    return df


def synthetic_test_time(
    *,
    mu_values: tuple[int, ...] = (2, 4, 8),
    l_inf: float = 2.0,
    z_amp: float = 0.8,
    z_rate_per_mu: float = 3.0,
    noise: float = 0.001,
    seed: int = 0,
) -> pd.DataFrame:
    """Test-time table: L(T) = L_inf + Z·exp(-(z/mu)·T), T = 1..2·mu_rec."""
    rng = np.random.default_rng(seed)
    rows = []
    for mu in mu_values:
        for t in range(1, 2 * mu + 1):
            loss = (l_inf + z_amp * np.exp(-z_rate_per_mu * t / mu)) * np.exp(noise * rng.standard_normal())
            rows.append({"run_id": f"mu{mu}", "mu_rec": float(mu), "tokens": 1e6, "recurrence": float(t),
                         "loss": loss})
    return pd.DataFrame(rows)
