"""Test-time scaling: per-curve fits of loss versus evaluation depth T, form comparison,
and the extrapolation check (fit on T <= mu_rec, score on T > mu_rec)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from parcae_scaling.scaling.data import TEST_TIME_COLUMNS, validate_table
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.laws import TEST_TIME_FORMS, get_law
from parcae_scaling.scaling.optimize import huber


@dataclass(frozen=True, kw_only=True)
class CurveFit:
    form: str
    params: dict[str, float]
    mean_huber: float  # mean Huber(delta) of log-loss residuals on the fitted points
    heldout_mean_huber: float  # fitted on T <= mu_rec, scored on T > mu_rec (nan if none)


@dataclass(frozen=True, kw_only=True)
class TestTimeCurve:
    run_id: str
    mu_rec: float
    recurrence: tuple[float, ...]
    loss: tuple[float, ...]
    fits: dict[str, CurveFit]
    l_inf_gap: float  # (L_inf - L(T = mu_rec)) / L(T = mu_rec) for the exponential form
    budget_flops: float = float("nan")  # the run's budget, where the table has one (figure labels)
    tokens: float = float("nan")

    @property
    def best_form(self) -> str:
        return min(self.fits, key=lambda f: self.fits[f].mean_huber)


@dataclass(frozen=True, kw_only=True)
class TestTimeResult:
    curves: tuple[TestTimeCurve, ...]
    mean_huber_by_form: dict[str, float]
    heldout_by_form: dict[str, float]
    delta: float
    warnings: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=True)

    def summary(self) -> str:
        lines = [f"test-time: {len(self.curves)} curves; mean Huber (delta={self.delta:g}) by form:"]
        for form, v in sorted(self.mean_huber_by_form.items(), key=lambda kv: kv[1]):
            lines.append(f"  {form:>17}: fit {v:.3e}   "
                         f"extrapolation {self.heldout_by_form.get(form, float('nan')):.3e}")
        gaps = [c.l_inf_gap for c in self.curves if np.isfinite(c.l_inf_gap)]
        if gaps:
            lines.append(f"  L_inf vs L(T=mu_rec): median gap {100 * np.median(gaps):.3f}%")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _mean_huber(form: str, params: dict[str, float], df: pd.DataFrame, delta: float) -> float:
    if df.empty:
        return float("nan")
    pred = get_law(form).predict(params, df)
    return float(np.mean(huber(np.log(pred) - np.log(df["loss"].to_numpy(float)), delta)))


def _fit_curve(form: str, df: pd.DataFrame) -> dict[str, float]:
    # Least squares on log loss, several starts (the law's grid), as in the paper.
    return dict(fit_law(get_law(form), df, loss="squares", group=None, n_polish=3).params)


def fit_test_time(
    df: pd.DataFrame,
    *,
    forms: tuple[str, ...] = TEST_TIME_FORMS,
    delta: float = 1e-3,
) -> TestTimeResult:
    """Fit every form to every (run_id) curve of loss versus T."""
    unknown = [f for f in forms if f not in TEST_TIME_FORMS]
    if unknown:
        raise ValueError(f"unknown test-time forms {unknown}; choose from {TEST_TIME_FORMS}")
    table = validate_table(df, TEST_TIME_COLUMNS, what="test-time input")
    warnings = list(table.warnings)
    curves = []
    for run_id, g in table.df.groupby("run_id", sort=True):
        g = g.sort_values("recurrence")
        mu = float(g["mu_rec"].iloc[0])
        if g["recurrence"].nunique() < 4:
            warnings.append(f"run {run_id}: {g['recurrence'].nunique()} depths; need >= 4 (curve skipped)")
            continue
        train = g[g["recurrence"] <= mu]
        test = g[g["recurrence"] > mu]
        fits = {}
        for form in forms:
            params = _fit_curve(form, g)
            held = float("nan")
            if train["recurrence"].nunique() >= 3 and not test.empty:
                held = _mean_huber(form, _fit_curve(form, train), test, delta)
            fits[form] = CurveFit(form=form, params=params, mean_huber=_mean_huber(form, params, g, delta),
                                  heldout_mean_huber=held)
        gap = float("nan")
        at_mu = g[g["recurrence"] == mu]
        if "tt_exp" in fits and not at_mu.empty:
            l_mu = float(at_mu["loss"].mean())
            gap = (fits["tt_exp"].params["L_inf"] - l_mu) / l_mu
        curves.append(TestTimeCurve(run_id=str(run_id), mu_rec=mu, recurrence=tuple(g["recurrence"].astype(float)),
                                    loss=tuple(g["loss"].astype(float)), fits=fits, l_inf_gap=gap,
                                    **{c: float(g[c].iloc[0]) for c in ("budget_flops", "tokens") if c in g.columns}))
    if not curves:
        raise ValueError("test-time input: no curve has >= 4 evaluation depths; evaluate at T = 1..2·mu_rec")
    by_form = {f: float(np.mean([c.fits[f].mean_huber for c in curves])) for f in forms}
    held = {f: float(np.nanmean([c.fits[f].heldout_mean_huber for c in curves]))
            if any(np.isfinite(c.fits[f].heldout_mean_huber) for c in curves) else float("nan") for f in forms}
    return TestTimeResult(curves=tuple(curves), mean_huber_by_form=by_form, heldout_by_form=held,
                          delta=delta, warnings=tuple(warnings))
