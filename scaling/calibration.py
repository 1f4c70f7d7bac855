"""Calibration: do nominal 95% intervals cover the truth 95% of the time?

Sweeps are simulated from a known Parcae law (scaling/synthetic.py) with replicate noise of a
given SD, analysed exactly as real sweeps are (fit_law with the noise model and its frontier;
isoflop), and each interval is checked against the law's true value:

    optimum        mu* at one budget (the law's continuous argmin over mu_rec), from the fitted law
    mu_exponent    slope of ln mu*(C) over the sampled budgets, from the fitted law
    d_exponent     slope of ln D*(C), from the fitted law
    allocation     the parametric law's allocation exponent b / (a + b)
    extrapolation  the frontier loss at 4x the largest sampled budget
    parabola_*     the same three from isoFLOP parabolas: a model-free check whose intervals carry
                   the noise but not the parabola's own bias on a wide grid (REFERENCE §4), so
                   their coverage of the truth falls as the grid widens or the noise shrinks

bench/calibration.py runs >= 200 sweeps per quantity; tests/scaling/test_calibration.py a small
version with a loose band.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from parcae_scaling.scaling.effective_params import UnrolledParams
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.frontier import FlopsPerToken, frontier
from parcae_scaling.scaling.isoflop import isoflop
from parcae_scaling.scaling.laws import get_law
from parcae_scaling.scaling.replicates import cells, noise_model
from parcae_scaling.scaling.synthetic import DEFAULT_PARCAE, synthetic_parcae_sweep

LAW_QUANTITIES = ("optimum", "mu_exponent", "d_exponent", "allocation", "extrapolation")
ISOFLOP_QUANTITIES = ("parabola_optimum", "parabola_mu_exponent", "parabola_d_exponent")


@dataclass(frozen=True, kw_only=True)
class Case:
    """One simulated study design: the true law, the grid, the replicate noise."""

    params: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PARCAE))
    non_core: float = 2.0e5
    core: float = 1.0e5
    flops_per_token: tuple[float, float] = (1.5e6, 0.6e6)
    budgets_flops: tuple[float, ...] = (1e12, 2e12, 4e12, 8e12)
    mu_values: tuple[int, ...] = (2, 4, 8, 16)
    replicates: int = 3
    noise_sd: float = 0.005  # nats/token, one run's loss
    optimum_budget: float = 2e12  # where the per-budget optimum is checked
    extrapolate_factor: float = 4.0

    def law(self):
        return get_law("parcae", effective_params=UnrolledParams(non_core=self.non_core, core=self.core))

    def fpt(self) -> FlopsPerToken:
        return FlopsPerToken(intercept=self.flops_per_token[0], slope=self.flops_per_token[1])

    def true_optimum(self, budget: float) -> tuple[float, float]:
        """(mu*, L*) of the true law at `budget`, over continuous mu_rec in [1, 64]."""
        mu = np.geomspace(1.0, 64.0, 20001)
        grid = pd.DataFrame({"mu_rec": mu, "tokens": budget / self.fpt()(mu)})
        loss = self.law().predict(self.params, grid)
        i = int(np.argmin(loss))
        return float(mu[i]), float(loss[i])

    def truth(self) -> dict[str, float]:
        c = np.array(self.budgets_flops)
        mu_star = np.array([self.true_optimum(b)[0] for b in c])
        d_star = c / self.fpt()(mu_star)
        a, b = self.params["a"], self.params["b"]
        allocation = {
            "optimum": self.true_optimum(self.optimum_budget)[0],
            "mu_exponent": float(np.polyfit(np.log(c), np.log(mu_star), 1)[0]),
            "d_exponent": float(np.polyfit(np.log(c), np.log(d_star), 1)[0]),
        }
        return {**allocation, **{f"parabola_{k}": v for k, v in allocation.items()}, "allocation": b / (a + b),
                "extrapolation": self.true_optimum(self.extrapolate_factor * max(c))[1]}

    def simulate(self, seed: int) -> pd.DataFrame:
        return synthetic_parcae_sweep(params=self.params, non_core=self.non_core, core=self.core,
                                      flops_per_token=self.flops_per_token, budgets_flops=self.budgets_flops,
                                      mu_values=self.mu_values, replicates=self.replicates,
                                      additive_sd=self.noise_sd, seed=seed)


def isoflop_intervals(case: Case, df: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, tuple[float, float]]:
    res = isoflop(df, n_bootstrap=n_bootstrap, seed=seed)
    out = {}
    at = [o for o in res.optima if o.budget_flops == case.optimum_budget]
    if at and at[0].x_star_interval is not None:
        out["parabola_optimum"] = (at[0].x_star_interval.low, at[0].x_star_interval.high)
    for name, col in (("parabola_mu_exponent", "mu_rec"), ("parabola_d_exponent", "tokens")):
        ci = res.power_laws[col].gamma_interval if col in res.power_laws else None
        if ci is not None:
            out[name] = (ci.low, ci.high)
    return out


def law_intervals(case: Case, df: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, tuple[float, float]]:
    law = case.law()
    fit = fit_law(law, df, n_bootstrap=n_bootstrap, seed=seed, noise=noise_model(cells(df)))
    out = {}
    ci = fit.derived_intervals.get("a_opt_exponent")
    if ci is not None:
        out["allocation"] = (ci.low, ci.high)
    reference = {"non_core_params": case.non_core, "core_params": case.core}
    sampled = frontier(fit, law, case.fpt(), np.array(case.budgets_flops), reference=reference)
    for name, col in (("mu_exponent", "mu_rec"), ("d_exponent", "tokens")):
        if col in sampled.exponent_intervals:
            out[name] = (sampled.exponent_intervals[col].low, sampled.exponent_intervals[col].high)
    at = [p for p in sampled.points if p.budget_flops == case.optimum_budget]
    if at and at[0].mu_star_interval is not None:
        out["optimum"] = (at[0].mu_star_interval.low, at[0].mu_star_interval.high)
    target = case.extrapolate_factor * max(case.budgets_flops)
    point = frontier(fit, law, case.fpt(), np.array([target]), reference=reference).points[0]
    if point.loss_star_interval is not None:
        out["extrapolation"] = (point.loss_star_interval.low, point.loss_star_interval.high)
    return out


@dataclass(frozen=True, kw_only=True)
class Coverage:
    covered: int
    total: int  # sweeps that gave an interval
    median_width: float  # of the intervals, relative to the true value's magnitude

    @property
    def fraction(self) -> float:
        return self.covered / self.total if self.total else float("nan")


def coverage(case: Case, quantities: tuple[str, ...], *, n_sims: int, n_bootstrap: int,
             seed: int = 0) -> dict[str, Coverage]:
    """How often each quantity's interval covers the truth over `n_sims` simulated sweeps."""
    truth = case.truth()
    wanted: list[Callable[..., dict[str, tuple[float, float]]]] = []
    if set(quantities) & set(ISOFLOP_QUANTITIES):
        wanted.append(isoflop_intervals)
    if set(quantities) & set(LAW_QUANTITIES):
        wanted.append(law_intervals)
    intervals: dict[str, list[tuple[float, float]]] = {q: [] for q in quantities}
    for i in range(n_sims):
        df = case.simulate(seed + i)
        for analyse in wanted:
            for q, interval in analyse(case, df, n_bootstrap, seed + i).items():
                if q in intervals:
                    intervals[q].append(interval)
    out = {}
    for q, found in intervals.items():
        lo, hi = np.array(found).reshape(-1, 2).T
        out[q] = Coverage(covered=int(np.sum((lo <= truth[q]) & (truth[q] <= hi))), total=len(found),
                          median_width=float(np.median(hi - lo) / abs(truth[q])) if found else float("nan"))
    return out
