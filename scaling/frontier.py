"""Compute-optimal frontier from a fitted Parcae law, and held-out validation.

For a budget C the looped model may trade depth for data: tokens(mu) = C / flops_per_token(mu).
The frontier is argmin over mu of L(mu, tokens(mu)); the fixed-depth baseline is the same law
at mu_rec = 1. Intervals come from the fit's bootstrap replicas.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from parcae_scaling.scaling.data import validate_table
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.laws import Law
from parcae_scaling.scaling.powerlaw import log_slopes
from parcae_scaling.scaling.results import ConfidenceInterval, FitResult, percentile_interval


@dataclass(frozen=True, kw_only=True)
class FlopsPerToken:
    """FLOPs per training token as an affine function of mu_rec (exact for a fixed mu_bwd rule
    up to the ceil in mu_bwd = ceil(mu_rec/2)), fitted to the runs' exact `flops_per_token`
    (the store's column, computed once by the planner), or to budget / tokens for a table
    without it (a CSV from elsewhere; that ratio includes whole-step rounding)."""

    intercept: float
    slope: float

    def __call__(self, mu_rec: np.ndarray | float) -> np.ndarray:
        return self.intercept + self.slope * np.asarray(mu_rec, dtype=float)


def flops_per_token_from_runs(df: pd.DataFrame) -> FlopsPerToken:
    data = validate_table(df, ("budget_flops", "tokens", "mu_rec", "loss"), what="frontier input",
                          key=("run_id",)).df
    exact = pd.to_numeric(data["flops_per_token"], errors="coerce").to_numpy(float) \
        if "flops_per_token" in data.columns else None
    if exact is not None and np.all(np.isfinite(exact) & (exact > 0)):
        fpt = exact
    else:
        fpt = data["budget_flops"].to_numpy(float) / data["tokens"].to_numpy(float)
    mu = data["mu_rec"].to_numpy(float)
    if np.unique(mu).size < 2:
        raise ValueError("frontier needs runs at >= 2 mu_rec values to learn FLOPs per token")
    slope, intercept = np.polyfit(mu, fpt, 1)
    if slope <= 0 or intercept <= 0:
        raise ValueError(f"FLOPs per token {intercept:.3g} + {slope:.3g}·mu is not positive and increasing; "
                         "check budget_flops and tokens")
    return FlopsPerToken(intercept=float(intercept), slope=float(slope))


@dataclass(frozen=True, kw_only=True)
class FrontierPoint:
    budget_flops: float
    mu_star: float
    tokens_star: float
    loss_star: float
    baseline_loss: float  # fixed depth, mu_rec = 1
    baseline_tokens: float
    extrapolated: bool
    mu_star_interval: ConfidenceInterval | None = None
    loss_star_interval: ConfidenceInterval | None = None
    baseline_loss_interval: ConfidenceInterval | None = None
    gap_interval: ConfidenceInterval | None = None  # loss_star - baseline_loss (looped minus fixed depth)


@dataclass(frozen=True, kw_only=True)
class FrontierResult:
    law: str
    points: tuple[FrontierPoint, ...]
    flops_per_token: FlopsPerToken
    sampled_budgets: tuple[float, float]
    bootstrap_dropped: int = 0  # refits left out of the intervals (a coefficient out of float range)
    # mu*(C) and D*(C) exponents of the fitted law over the frontier's budgets, with bootstrap intervals
    exponents: dict[str, float] = field(default_factory=dict)
    exponent_intervals: dict[str, ConfidenceInterval] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=True)

    def summary(self) -> str:
        """The exponents of the law's frontier and the looped-minus-fixed-depth gap at the sampled budgets."""
        lines = []
        for name, value in self.exponents.items():
            ci = self.exponent_intervals.get(name)
            lines.append(f"{name}* ∝ C^{value:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if ci else "")
                         + " (fitted law, over the frontier's budgets)")
        inside = [p for p in self.points if not p.extrapolated and p.gap_interval is not None]
        for p in inside[:: max(1, (len(inside) - 1) // 3 or 1)]:  # about four budgets across the sampled range
            ci = p.gap_interval
            resolved = "resolved" if ci.high < 0 or ci.low > 0 else "not resolved"
            lines.append(f"C={p.budget_flops:.3g}: looped minus fixed depth {p.loss_star - p.baseline_loss:+.4f} "
                         f"[{ci.low:+.4f}, {ci.high:+.4f}] ({resolved})")
        return "\n".join(lines)

    def budget_for_loss(self, loss: float, *, baseline: bool = False) -> float:
        """Lowest budget on the frontier that reaches `loss` (log-linear interpolation)."""
        c = np.log([p.budget_flops for p in self.points])
        losses = np.array([p.baseline_loss if baseline else p.loss_star for p in self.points])
        order = np.argsort(losses)
        if not losses.min() <= loss <= losses.max():
            raise ValueError(f"loss {loss} is outside the frontier's range [{losses.min():.4g}, {losses.max():.4g}]")
        return float(np.exp(np.interp(loss, losses[order], c[order])))


def frontier(
    fit: FitResult,
    law: Law,
    flops_per_token: FlopsPerToken,
    budgets_flops: np.ndarray,
    *,
    reference: dict[str, float] | None = None,
    sampled_budgets: tuple[float, float] | None = None,
    mu_max: float = 64.0,
    level: float = 0.95,
) -> FrontierResult:
    """Minimise the fitted law over continuous mu_rec in [1, mu_max] at each budget.

    `reference` supplies constant columns the law's N(mu) needs (e.g. non_core_params).
    """
    budgets = np.asarray(budgets_flops, dtype=float)
    if np.any(budgets <= 0):
        raise ValueError("budgets_flops must all be > 0")
    mu = np.geomspace(1.0, mu_max, 600)
    theta = law.to_fit_space(fit.params)[None, :]
    boot, dropped = _bootstrap_in_fit_space(fit, law)
    if len(boot):
        theta = np.vstack([theta, boot])
    lo, hi = sampled_budgets or (budgets.min(), budgets.max())
    points = []
    mu_stars = []
    for c in budgets:
        grid = pd.DataFrame({"mu_rec": mu, "tokens": c / flops_per_token(mu), **(reference or {})})
        loss = np.exp(law.log_predict(theta, grid))  # (S, len(mu))
        best = loss.argmin(axis=1)
        s_idx = np.arange(len(theta))
        mu_s, loss_s, base = mu[best], loss[s_idx, best], loss[:, 0]
        mu_stars.append(mu_s)
        ci = (lambda v: percentile_interval(v[1:], level)) if len(theta) > 1 else (lambda v: None)
        points.append(FrontierPoint(
            budget_flops=float(c), mu_star=float(mu_s[0]), tokens_star=float(c / flops_per_token(mu_s[0])),
            loss_star=float(loss_s[0]), baseline_loss=float(base[0]),
            baseline_tokens=float(c / flops_per_token(1.0)), extrapolated=bool(c < lo * 0.999 or c > hi * 1.001),
            mu_star_interval=ci(mu_s), loss_star_interval=ci(loss_s), baseline_loss_interval=ci(base),
            gap_interval=ci(loss_s - base)))
    exponents, exponent_intervals = {}, {}
    if budgets.size >= 2:  # slopes of ln mu*, ln D* on ln C, per replica (row 0: the fit itself)
        mu_all = np.stack(mu_stars, axis=1)  # (S, budgets)
        for name, values in (("mu_rec", mu_all), ("tokens", budgets / flops_per_token(mu_all))):
            slopes = log_slopes(np.log(budgets), np.log(values))
            exponents[name] = float(slopes[0])
            if len(theta) > 1:
                exponent_intervals[name] = percentile_interval(slopes[1:], level)
    return FrontierResult(law=fit.law, points=tuple(points), flops_per_token=flops_per_token,
                          sampled_budgets=(float(lo), float(hi)), bootstrap_dropped=dropped,
                          exponents=exponents, exponent_intervals=exponent_intervals)


def _bootstrap_in_fit_space(fit: FitResult, law: Law) -> tuple[np.ndarray, int]:
    """The bootstrap refits in fit space, without those whose log-fitted coefficients left the
    float range (a refit on few points can drive log E to -1000: E == 0.0 cannot be un-logged)."""
    rows, dropped = [], 0
    for r in fit.bootstrap_params:
        natural = dict(zip(fit.params, r))
        if all(np.isfinite(v) for v in natural.values()):
            try:
                rows.append(law.to_fit_space(natural))
                continue
            except ValueError:
                pass
        dropped += 1
    return np.array(rows), dropped


@dataclass(frozen=True, kw_only=True)
class HoldoutResult:
    heldout_budget_flops: float
    n_heldout: int
    mean_abs_pct_error: float
    max_abs_pct_error: float
    fit: FitResult
    n_inside: int | None = None  # held-out runs inside their 95% prediction interval (None: no bootstrap)

    def summary(self) -> str:
        inside = "" if self.n_inside is None else (f"; {self.n_inside}/{self.n_heldout} inside their 95% "
                                                    "prediction intervals")
        return (f"held-out budget {self.heldout_budget_flops:.3g} ({self.n_heldout} runs): "
                f"mean |error| {self.mean_abs_pct_error:.2f}%, max {self.max_abs_pct_error:.2f}%{inside}")


def holdout_largest_budget(law: Law, df: pd.DataFrame, **fit_options) -> HoldoutResult:
    """Refit without the largest budget and report the prediction error on it."""
    data = validate_table(df, tuple(dict.fromkeys(law.columns + ("budget_flops", "loss"))), what="holdout input",
                          key=("run_id",)).df
    top = float(data["budget_flops"].max())
    train, test = data[data["budget_flops"] < top], data[data["budget_flops"] == top]
    if train["budget_flops"].nunique() < 2:
        raise ValueError("held-out validation needs >= 3 budgets (2 to fit, the largest to predict)")
    fit = fit_law(law, train, filters=(f"budget_flops < {top:.6g}",), **fit_options)
    pred = law.predict(fit.params, test)
    actual = test["loss"].to_numpy(float)
    err = 100 * np.abs(pred - actual) / actual
    inside = None
    noise = fit_options.get("noise")
    if fit.bootstrap_params and noise is not None:  # a new run = the law's uncertainty + one run's noise
        rng = np.random.default_rng(fit_options.get("seed", 0))
        draws = np.stack([law.predict(dict(zip(law.param_names, row)), test) for row in fit.bootstrap_params])
        draws = draws + noise.draw_sd(rng, len(draws))[:, None] * rng.standard_normal(draws.shape)
        lo, hi = np.quantile(draws, [0.025, 0.975], axis=0)
        inside = int(np.sum((lo <= actual) & (actual <= hi)))
    return HoldoutResult(heldout_budget_flops=top, n_heldout=len(test), mean_abs_pct_error=float(err.mean()),
                         max_abs_pct_error=float(err.max()), fit=fit, n_inside=inside)
