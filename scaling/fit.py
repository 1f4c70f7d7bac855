"""Fit a registered law to a table: multi-start robust fit, then a bootstrap.

The bootstrap is parametric when a noise model is given (scaling/replicates.py: every run's loss
redrawn around the fitted law with the measured or assumed replicate SD, the SD itself drawn per
replica), else it resamples runs. Parameters whose interval spans an order of magnitude or more
(or reaches zero) are reported as not identified; derived quantities such as the allocation
exponent may still be."""

from __future__ import annotations

import numpy as np
import pandas as pd

from parcae_scaling.scaling.data import validate_table
from parcae_scaling.scaling.laws import Law
from parcae_scaling.scaling.optimize import LossName, Objective, batched_lbfgs, polish
from parcae_scaling.scaling.replicates import NoiseModel
from parcae_scaling.scaling.results import ConfidenceInterval, DataSelection, FitResult, percentile_interval

MIN_POINTS_PER_PARAMETER = 5.0  # below this a fit is flagged as under-determined
MAX_IDENTIFIED_SPAN = 10.0  # an interval with high / low above this does not pin the value down


def _bounds_arrays(law: Law) -> tuple[np.ndarray, np.ndarray, list[tuple[float | None, float | None]]]:
    pairs = [law.bounds.get(p, (None, None)) for p in law.fit_names]
    lower = np.array([-np.inf if lo is None else lo for lo, _ in pairs])
    upper = np.array([np.inf if hi is None else hi for _, hi in pairs])
    return lower, upper, pairs


def precondition(law: Law, design: np.ndarray) -> np.ndarray:
    """T with theta = T @ theta': exponent features centred and scaled inside their term.

    log C - alpha·f = (log C - alpha·mean f) - (alpha·std f)·(f - mean f)/std f; removing the
    mean decorrelates a coefficient from its exponent (log N ~ 20 makes them nearly
    collinear), which is what lets warm-started L-BFGS actually move. Box bounds on
    exponents stay box bounds (scaled); coefficients with bounds are left alone.
    """
    names = law.fit_names
    index = {p: i for i, p in enumerate(names)}
    uses: dict[str, int] = {}
    for term in law.terms:
        for p, _ in term.exponents:
            uses[p] = uses.get(p, 0) + 1
    t = np.eye(len(names))
    for k, term in enumerate(law.terms):
        for p, _ in term.exponents:
            if uses[p] != 1:
                continue
            j = index[p]
            f = -design[k, :, j]
            scale = float(f.std()) or 1.0
            t[j, j] = 1.0 / scale
            if term.coef is not None and f"log_{term.coef}" not in law.bounds:
                t[index[f"log_{term.coef}"], j] = float(f.mean()) / scale
    return t


def check_identifiable(law: Law, data: pd.DataFrame, design: np.ndarray, *, what: str) -> None:
    """Refuse a fit the data cannot determine, saying why (instead of returning start values).

    Fewer points than free parameters; a loss that does not vary; or a term whose feature is
    the same at every point (its coefficient and exponent then trade off freely with E).
    """
    n, n_params = len(data), len(law.fit_names)
    if n < n_params:
        raise ValueError(
            f"{what}: only {n} point{'s' if n != 1 else ''} for {n_params} free parameters "
            f"{list(law.param_names)}; the fit needs at least {n_params} points "
            f"(>= {MIN_POINTS_PER_PARAMETER * n_params:g} for reliable values): add runs"
        )
    loss = data["loss"].to_numpy(float)
    if np.ptp(loss) == 0:
        raise ValueError(f"{what}: the loss does not vary (every point has loss={loss[0]:g}): nothing to fit; "
                         "check that the loss column holds each run's own loss")
    index = {p: i for i, p in enumerate(law.fit_names)}
    for k, term in enumerate(law.terms):
        for param, feature in term.exponents:
            f = design[k, :, index[param]]
            if np.ptp(f) > 1e-12 * max(1.0, float(np.abs(f).max())):
                continue
            cols = [c for c in law.feature_columns.get(feature, ()) if c in data.columns]
            shared = ", ".join(f"{c}={data[c].iloc[0]:g}" for c in cols if data[c].nunique() == 1)
            names = [p for p, _ in term.exponents] + ([term.coef] if term.coef else [])
            vary = " or ".join(cols) if cols else feature
            raise ValueError(
                f"{what}: all {n} points share {shared or f'one value of {feature}'}: the law's "
                f"{feature} term {sorted(names)} is not identified; add runs at other {vary} values"
            )


def degenerate_replicas(weights: np.ndarray, n_params: int) -> int:
    """Bootstrap replicas holding fewer distinct points than free parameters.

    Such a replica is fitted exactly by the full-data optimum it is warm-started from, so it
    never moves: its "interval" has zero width because nothing was estimated.
    """
    return int(np.sum((weights > 0).sum(axis=1) < n_params))


def _run_groups(df: pd.DataFrame, group: str | None) -> np.ndarray:
    """Integer group label per row: runs are resampled as wholes in the bootstrap."""
    if group and group in df.columns:
        return pd.factorize(df[group])[0]
    return np.arange(len(df))


def bootstrap_weights(groups: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(B, n) point weights = how often each point's run was drawn (resampling runs)."""
    n_groups = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    counts = np.zeros((n_resamples, n_groups))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts[:, groups]


def fit_law(
    law: Law,
    df: pd.DataFrame,
    *,
    loss: LossName = "huber",
    delta: float = 1e-3,
    starts: np.ndarray | None = None,
    n_polish: int = 5,
    agree_rtol: float = 1e-4,
    n_bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    group: str | None = "run_id",
    key: tuple[str, ...] = (),
    source: str = "",
    filters: tuple[str, ...] = (),
    noise: NoiseModel | None = None,
) -> FitResult:
    """Fit `law` to df[law.columns + loss] on log loss from every start in the law's grid.

    All starts run through a batched L-BFGS; the best `n_polish` are refined with scipy
    L-BFGS-B. A start "agrees" when its objective is within `agree_rtol` (relative) of the
    best. With `n_bootstrap` > 0, runs (rows sharing `group`) are resampled and every replica
    is refitted, warm-started from the full-data optimum, for percentile intervals. `key`
    (e.g. ("run_id",) for a run table) names one row: see data.validate_table.

    Refuses data that cannot determine the law (check_identifiable). When too many bootstrap
    replicas are degenerate for the percentile interval to mean anything, no intervals are
    given and the parameters are listed in `unidentified` ("not identified").
    """
    if n_polish < 1:
        raise ValueError(f"n_polish={n_polish} must be >= 1")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap} must be >= 0 (0 disables the bootstrap)")
    what = f"{law.name} fit input"
    table = validate_table(df, tuple(dict.fromkeys(law.columns + ("loss",))), what=what, key=key)
    data = table.df
    design = law.design(data)
    check_identifiable(law, data, design, what=what)
    # Optimise in preconditioned coordinates theta' (theta = T theta'); report theta.
    t_mat = precondition(law, design)
    t_inv = np.linalg.inv(t_mat)
    objective = Objective(design @ t_mat, np.log(data["loss"].to_numpy(float)), loss=loss, delta=delta)
    lower, upper, _ = _bounds_arrays(law)
    scale = 1.0 / np.diag(t_mat)  # bounded parameters are only ever scaled, never mixed
    lower, upper = lower * scale, upper * scale
    pairs = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi) for lo, hi in zip(lower, upper)]
    x0 = law.start_points() if starts is None else np.atleast_2d(np.asarray(starts, dtype=float))
    if x0.shape[1] != len(law.fit_names):
        raise ValueError(f"starts has {x0.shape[1]} columns; law {law.name} fits {law.fit_names}")
    ones = np.ones(len(data))
    batch = batched_lbfgs(lambda x, idx: objective.value_and_grad(x, ones), x0 @ t_inv.T, lower, upper)
    finite = np.where(np.isfinite(batch.f), batch.f, np.inf)
    best_idx = np.argsort(finite)[:n_polish]
    polished = [polish(objective, batch.x[i], pairs) for i in best_idx]
    theta_p, f_best, ok, message = min(polished, key=lambda r: r[1])
    if finite[best_idx[0]] < f_best:  # polishing never makes things worse than the batch
        theta_p, f_best = batch.x[best_idx[0]], float(finite[best_idx[0]])
    theta = t_mat @ theta_p
    n_agree = int(np.sum(finite <= f_best + agree_rtol * abs(f_best)))

    warnings = list(table.warnings)
    n_params = len(law.fit_names)
    if len(data) / n_params < MIN_POINTS_PER_PARAMETER:
        warnings.append(
            f"under-determined: {len(data)} points for {n_params} free parameters "
            f"(< {MIN_POINTS_PER_PARAMETER:g} per parameter); treat parameters as unreliable"
        )
    if n_agree < max(2, 0.01 * len(x0)) and len(x0) > 1:
        warnings.append(f"only {n_agree} of {len(x0)} starts reach the best objective; "
                        "the optimum may not be global (widen the start grid)")
    on_bound = [p for p, v, lo, hi in zip(law.fit_names, theta_p, lower, upper)
                if np.isclose(v, lo) or np.isclose(v, hi)]
    if on_bound:
        warnings.append(f"parameters at a bound: {on_bound}")

    natural = law.to_natural(theta)
    params = {n: float(v) for n, v in zip(law.param_names, natural)}
    derived = {k: float(fn(params)) for k, fn in law.derived.items()}
    intervals, derived_intervals, samples, unidentified = {}, {}, (), ()
    if n_bootstrap:
        groups = _run_groups(data, group)
        n_degenerate = 0 if noise else degenerate_replicas(bootstrap_weights(groups, n_bootstrap, seed), n_params)
        if noise is not None and len(data) < 2 * n_params:
            # Refits of redrawn losses with fewer than 2 points per parameter follow the noise exactly.
            unidentified = tuple(law.param_names) + tuple(law.derived)
            warnings.append(f"not identified: {len(data)} points for {n_params} free parameters leave too few to "
                            "average the noise out, so no interval is given (add runs: >= "
                            f"{2 * n_params} for intervals, >= {MIN_POINTS_PER_PARAMETER * n_params:g} for reliable "
                            "values)")
        elif n_degenerate > (1 - level) / 2 * n_bootstrap:  # enough to set an interval endpoint
            unidentified = tuple(law.param_names) + tuple(law.derived)
            warnings.append(f"not identified: {n_degenerate} of {n_bootstrap} bootstrap resamples hold fewer "
                            f"distinct points than the {n_params} free parameters, so no interval is given "
                            "(add runs)")
        else:
            if noise is not None:
                boot = parametric_bootstrap_fit(objective, theta_p, noise, n_bootstrap, lower, upper, seed)
                method = f"parametric bootstrap ({'measured' if noise.measured else 'assumed'} noise SD)"
            else:
                boot = bootstrap_fit(objective, theta_p, groups, n_bootstrap, lower, upper, seed)
                method = "percentile bootstrap (runs resampled)"
            boot = boot @ t_mat.T
            nat = law.to_natural(boot)
            samples = tuple(tuple(float(v) for v in row) for row in nat)
            intervals = {n: percentile_interval(nat[:, j], level, method=method)
                         for j, n in enumerate(law.param_names)}
            rows = [dict(zip(law.param_names, r)) for r in nat]
            derived_intervals = {k: percentile_interval(np.array([fn(r) for r in rows]), level, method=method)
                                 for k, fn in law.derived.items()}
            spread = [n for n, ci in {**intervals, **derived_intervals}.items()
                      if not _pinned(ci, {**params, **derived}[n])]
            if spread:
                unidentified = tuple(spread)
                kept = [k for k in derived if k not in spread]
                warnings.append(f"not identified: {', '.join(spread)} (their intervals span an order of magnitude "
                                "or more, or reach zero)" + (f"; identified: {', '.join(kept)}" if kept else ""))
    flop_conv = ""
    if "flop_convention" in data.columns:
        flop_conv = ",".join(sorted(set(map(str, data["flop_convention"].dropna()))))
    return FitResult(
        law=law.name,
        formula=law.formula,
        params=params,
        objective=float(f_best),
        loss=loss,
        delta=delta,
        n_starts=len(x0),
        n_starts_agree=n_agree,
        n_points=len(data),
        n_runs=int(_run_groups(data, group).max() + 1),
        success=ok,
        message=message,
        intervals=intervals,
        derived=derived,
        derived_intervals=derived_intervals,
        selection=DataSelection(source=source, n_rows_in=table.n_rows_in, n_used=len(data),
                                n_excluded_nan=table.n_excluded_nan, filters=tuple(filters)),
        convention=law.convention,
        flop_convention=flop_conv,
        warnings=tuple(warnings),
        bootstrap_params=samples,
        unidentified=unidentified,
    )


def _pinned(ci: ConfidenceInterval, value: float) -> bool:
    """Whether an interval pins a value down: finite, and within a factor MAX_IDENTIFIED_SPAN
    for a positive value (for a value <= 0: narrower than its own magnitude)."""
    if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
        return False
    if value > 0:
        return ci.low > 0 and ci.high / ci.low < MAX_IDENTIFIED_SPAN
    return ci.high - ci.low < max(abs(value), 1e-12)


def parametric_bootstrap_fit(objective: Objective, theta_hat: np.ndarray, noise: NoiseModel, n_resamples: int,
                             lower: np.ndarray, upper: np.ndarray, seed: int = 0) -> np.ndarray:
    """(B, P) fit-space optima of B replicas whose losses are redrawn around the fitted law:
    loss_i* = prediction_i + sd_b * z_i (sd_b from the noise model), warm-started at theta_hat."""
    rng = np.random.default_rng(seed)
    predicted = np.exp(objective.residuals(theta_hat)[0] + objective.log_y)
    sd = noise.draw_sd(rng, n_resamples)
    losses = predicted + sd[:, None] * rng.standard_normal((n_resamples, predicted.size))
    log_y = np.log(np.maximum(losses, 1e-6 * predicted))  # a draw below zero is a (rare) extreme tail
    ones = np.ones(predicted.size)
    x0 = np.repeat(np.asarray(theta_hat, dtype=float)[None, :], n_resamples, axis=0)
    res = batched_lbfgs(lambda x, idx: objective.value_and_grad(x, ones, log_y[idx]), x0, lower, upper,
                        ftol=1e-10, gtol=1e-12, f_scale=0.0, max_iter=500)
    return res.x


def bootstrap_fit(
    objective: Objective,
    theta_hat: np.ndarray,
    groups: np.ndarray,
    n_resamples: int,
    lower: np.ndarray,
    upper: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """(B, P) fit-space optima of B run-resampled replicas, all warm-started at theta_hat.

    A replica is the same objective with integer point weights, so all replicas are one
    batched L-BFGS problem.
    """
    weights = bootstrap_weights(groups, n_resamples, seed)
    x0 = np.repeat(np.asarray(theta_hat, dtype=float)[None, :], n_resamples, axis=0)
    # Relative stopping: replicas start at the optimum of nearby data, where the absolute
    # decrease per step is tiny long before the replica's own optimum is reached.
    res = batched_lbfgs(lambda x, idx: objective.value_and_grad(x, weights[idx]), x0, lower, upper,
                        ftol=1e-10, gtol=1e-12, f_scale=0.0, max_iter=500)
    return res.x
