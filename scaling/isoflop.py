"""isoFLOP analysis: a parabola in log x per budget, its minimum, then power laws across budgets.

x is mu_rec by default (the Parcae sweep), or tokens / params. The fits use cells, not runs:
replicates (runs that differ only in seed, scaling/replicates.py) are averaged, and each cell's
mean is weighted by its replicate count. Parabolas are biased when the sampled grid is wide or
off-centre (REFERENCE §4), so each budget records its curvature and whether the minimum lies
inside the sampled range; `estimator="local"` fits the parabola only to the best cell and its two
neighbours, a check that a conclusion does not hang on the global parabola.

Intervals (one method for every quantity): a hierarchical parametric bootstrap. Each replicate
draws a noise SD from the noise model (measured from replicates, with its own uncertainty; or
assumed, and then labelled so), draws every cell mean around the fitted parabolas with that SD
over sqrt(replicates), refits every budget, and refits the power laws across budgets. Per-budget
optima, the mu*, D* and L* exponents and the probability that mu* grows with C all come from the
same draws, so each budget's uncertainty reaches the exponents. An exponent needs >= 3 budgets:
with 2 it is reported as not measurable (the 2-point slope has no interval).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from parcae_scaling.scaling.data import row_ids, validate_table
from parcae_scaling.scaling.powerlaw import PowerLawFit, fit_power_law, log_slopes
from parcae_scaling.scaling.replicates import NoiseModel, cells, noise_model
from parcae_scaling.scaling.results import DEFAULT_BOOTSTRAP, ConfidenceInterval, percentile_interval

XName = Literal["mu_rec", "tokens", "params"]
Estimator = Literal["parabola", "cubic", "local"]
DEGREE = {"parabola": 2, "cubic": 3, "local": 2}
ALLOCATION_COLUMNS = ("mu_rec", "tokens", "params")
# A budget's optimum counts as identified when this share of bootstrap parabolas has a minimum.
MIN_IDENTIFIED_FRACTION = 0.9


@dataclass(frozen=True, kw_only=True)
class BudgetOptimum:
    """The parabola fitted at one FLOP budget and its minimum."""

    budget_flops: float
    n_points: int  # cells (distinct x values) used
    n_runs: int
    coefficients: tuple[float, ...]  # loss = c0 + c1·u + c2·u² (+ c3·u³ for the cubic), u = ln x
    x_star: float
    loss_star: float
    at_optimum: dict[str, float]  # mu_rec / tokens / params interpolated at the optimum
    x_min: float
    x_max: float
    positive_curvature: bool
    in_range: bool
    x_star_interval: ConfidenceInterval | None = None
    loss_star_interval: ConfidenceInterval | None = None
    # the same bootstrap optima mapped through at_optimum's interpolation (e.g. D* at each drawn mu*)
    at_optimum_intervals: dict[str, ConfidenceInterval] = field(default_factory=dict)
    minimum_fraction: float = float("nan")  # share of bootstrap parabolas with a minimum
    warnings: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.positive_curvature

    @property
    def identified(self) -> bool:
        return self.positive_curvature and not self.minimum_fraction < MIN_IDENTIFIED_FRACTION

    @property
    def interval_in_range(self) -> bool:
        """Whether the optimum's interval stays inside the sampled range (None interval: True)."""
        ci = self.x_star_interval
        return ci is None or (self.x_min * 0.999 <= ci.low and ci.high <= self.x_max * 1.001)


@dataclass(frozen=True, kw_only=True)
class IsoFlopResult:
    x: str
    optima: tuple[BudgetOptimum, ...]
    power_laws: dict[str, PowerLawFit]  # "mu_rec" / "tokens" / "params" / "loss" vs budget
    budgets_used: tuple[float, ...]
    warnings: tuple[str, ...] = ()
    source: str = ""
    flop_convention: str = ""
    estimator: str = "parabola"
    noise: str = ""  # NoiseModel.describe() of the noise behind every interval
    noise_measured: bool = False
    growth_probability: dict[str, float] = field(default_factory=dict)  # P(x* grows with C), per column
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "IsoFlopResult":
        d = json.loads(text)
        optima = []
        for o in d["optima"]:
            for key in ("x_star_interval", "loss_star_interval"):
                if o.get(key):
                    o[key] = ConfidenceInterval(**o[key])
            o["at_optimum_intervals"] = {k: ConfidenceInterval(**v)
                                         for k, v in o.get("at_optimum_intervals", {}).items()}
            o["coefficients"] = tuple(o["coefficients"])
            o["warnings"] = tuple(o["warnings"])
            optima.append(BudgetOptimum(**o))
        d["optima"] = tuple(optima)
        d["power_laws"] = {k: PowerLawFit.from_dict(v) for k, v in d["power_laws"].items()}
        d["budgets_used"] = tuple(d["budgets_used"])
        d["warnings"] = tuple(d["warnings"])
        return cls(**d)

    def exponent_text(self, name: str) -> str:
        pl = self.power_laws[name]
        if pl.gamma_interval is None:
            text = f"C^{pl.gamma:.3f} (not measurable from {pl.n_points} budgets: no interval)"
        else:
            ci = pl.gamma_interval
            text = f"C^{pl.gamma:.3f} [{ci.low:.3f}, {ci.high:.3f}]"
        if name in self.growth_probability:
            text += f"; P(grows with C) = {self.growth_probability[name]:.2f}"
        return text

    def summary(self) -> str:
        lines = [f"isoFLOP in ln {self.x} ({self.estimator}): {len(self.optima)} budgets, "
                 f"{len(self.budgets_used)} used for power laws", f"  {self.noise}"]
        for o in self.optima:
            ci = o.x_star_interval
            ci_s = f" [{ci.low:.3g}, {ci.high:.3g}]" if ci else ""
            lci = o.loss_star_interval
            lci_s = f" [{lci.low:.4f}, {lci.high:.4f}]" if lci else ""
            flag = "" if (o.in_range and o.identified and o.interval_in_range) else "  (flagged)"
            lines.append(f"  C={o.budget_flops:.3g}: {self.x}*={o.x_star:.4g}{ci_s} L*={o.loss_star:.4f}{lci_s}"
                         f" ({o.n_runs} runs in {o.n_points} cells){flag}")
        for name in self.power_laws:
            lines.append(f"  {name}* ∝ {self.exponent_text(name)}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _wls_poly(u: np.ndarray, y: np.ndarray, w: np.ndarray, degree: int) -> np.ndarray:
    """Weighted least-squares polynomial coefficients (c0, c1, ...) for rows of y: (..., n) -> (..., degree + 1)."""
    design = np.stack([u**k for k in range(degree + 1)], axis=1)  # (n, degree + 1)
    xtwx = design.T @ (w[:, None] * design)
    rhs = (y * w) @ design
    return np.linalg.solve(xtwx, rhs[..., None])[..., 0] if rhs.ndim > 1 else np.linalg.solve(xtwx, rhs)


def _evaluate(c: np.ndarray, u: np.ndarray) -> np.ndarray:
    return sum(c[..., k] * u**k for k in range(c.shape[-1]))


def _minimum(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u*, loss*, has_minimum) of polynomials c = (..., 3 or 4) in u: the parabola's vertex, or
    the cubic's local minimum; NaN where there is none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if c.shape[-1] == 3:
            has = c[..., 2] > 0
            u_star = np.where(has, -c[..., 1] / (2 * c[..., 2]), np.nan)
        else:  # 3 c3 u^2 + 2 c2 u + c1 = 0; the root where 6 c3 u + 2 c2 > 0
            a, b, k = 3 * c[..., 3], 2 * c[..., 2], c[..., 1]
            disc = b * b - 4 * a * k
            root = (-b + np.sqrt(np.where(disc > 0, disc, np.nan))) / (2 * a)  # the minimum for either sign of a
            quadratic = np.abs(a) < 1e-12 * np.maximum(np.abs(b), 1e-300)
            root = np.where(quadratic, np.where(b > 0, -k / np.where(b == 0, np.nan, b), np.nan), root)
            u_star = root
            has = np.isfinite(u_star)
    return u_star, _evaluate(c, u_star), has


def _window(u: np.ndarray, y: np.ndarray, estimator: str) -> np.ndarray:
    """Indices of the cells the parabola is fitted to: all, or (local) the best and its neighbours."""
    if estimator == "parabola" or u.size <= 3:
        return np.arange(u.size)
    best = int(np.argmin(y))
    lo = min(max(best - 1, 0), u.size - 3)
    return np.arange(lo, lo + 3)


@dataclass
class _BudgetFit:
    """A budget's cells and fitted parabola, with what the bootstrap needs."""

    budget: float
    u: np.ndarray  # ln x of the fitted cells
    y: np.ndarray  # their mean loss
    n: np.ndarray  # their replicate counts
    coef: np.ndarray
    interp: dict[str, np.ndarray]  # allocation column -> polynomial of ln value in u
    degree: int
    n_runs: int
    x_range: tuple[float, float]


def _fit_cells(group: pd.DataFrame, x: str, estimator: str) -> _BudgetFit:
    group = group.sort_values(x)
    u_all = np.log(group[x].to_numpy(float))
    y_all = group["loss"].to_numpy(float)
    idx = _window(u_all, y_all, estimator)
    u, y, n = u_all[idx], y_all[idx], group["n"].to_numpy(float)[idx]
    interp = {}
    for col in ALLOCATION_COLUMNS:
        if col in group.columns:
            v = np.log(group[col].to_numpy(float))
            interp[col] = np.polyfit(u_all, v, min(2, u_all.size - 1))
    degree = DEGREE[estimator]
    return _BudgetFit(budget=float(group["budget_flops"].iloc[0]), u=u, y=y, n=n, coef=_wls_poly(u, y, n, degree),
                      interp=interp, degree=degree, n_runs=int(group["n"].sum()),
                      x_range=(float(u.min()), float(u.max())))


def _simulate(fit: _BudgetFit, sd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap curves (B, degree + 1): cell means drawn around the fitted curve with SD sd/sqrt(n)."""
    y = _evaluate(fit.coef, fit.u) + rng.standard_normal((sd.size, fit.u.size)) * sd[:, None] / np.sqrt(fit.n)
    return _wls_poly(fit.u, y, fit.n, fit.degree)


def _optimum(fit: _BudgetFit, x: str, u_draws: np.ndarray | None, l_draws: np.ndarray | None,
             level: float) -> BudgetOptimum:
    budget = fit.budget
    warnings: list[str] = []
    u_min, _, has = _minimum(fit.coef)
    positive = bool(has)
    if positive:
        u_star = float(u_min)
    else:
        u_star = float(fit.u[np.argmin(fit.y)])
        curve = "parabola" if fit.degree == 2 else "cubic"
        warnings.append(f"budget {budget:.3g}: the {curve} in ln {x} has no minimum; using the best sampled "
                        "cell and excluding this budget from the power laws")
    in_range = bool(fit.x_range[0] <= u_star <= fit.x_range[1])
    if positive and not in_range:
        warnings.append(f"budget {budget:.3g}: optimum {x}={np.exp(u_star):.4g} lies outside the sampled "
                        f"range [{np.exp(fit.x_range[0]):.4g}, {np.exp(fit.x_range[1]):.4g}]; extend the grid")
    loss_star = float(_evaluate(fit.coef, np.float64(u_star))) if positive else float(fit.y.min())
    at_opt = {col: float(np.exp(np.polyval(p, u_star))) for col, p in fit.interp.items()}
    x_ci = loss_ci = None
    at_cis: dict[str, ConfidenceInterval] = {}
    fraction = float("nan")
    if u_draws is not None and positive:
        ok = np.isfinite(u_draws)
        fraction = float(ok.mean())
        if fraction < MIN_IDENTIFIED_FRACTION:
            warnings.append(f"budget {budget:.3g}: the optimum is not identified at this noise: only "
                            f"{int(ok.sum())}/{ok.size} bootstrap parabolas have a minimum (add replicates or "
                            f"{x} values around the optimum)")
        else:
            method = "hierarchical parametric bootstrap"
            x_ci = percentile_interval(np.exp(u_draws[ok]), level, method=method)
            loss_ci = percentile_interval(l_draws[ok], level, method=method)
            at_cis = {col: percentile_interval(np.exp(np.polyval(p, u_draws[ok])), level, method=method)
                      for col, p in fit.interp.items()}
            lo, hi = np.exp(fit.x_range)
            if in_range and (x_ci.low < lo * 0.999 or x_ci.high > hi * 1.001):
                warnings.append(f"budget {budget:.3g}: the optimum's interval [{x_ci.low:.3g}, {x_ci.high:.3g}] "
                                f"reaches outside the sampled range [{lo:.3g}, {hi:.3g}]: not resolved within the grid "
                                f"(add {x} values beyond it, or replicates)")
    return BudgetOptimum(
        budget_flops=budget, n_points=int(fit.u.size), n_runs=fit.n_runs,
        coefficients=tuple(float(v) for v in fit.coef),
        x_star=float(np.exp(u_star)), loss_star=loss_star, at_optimum=at_opt,
        x_min=float(np.exp(fit.x_range[0])), x_max=float(np.exp(fit.x_range[1])), positive_curvature=bool(positive),
        in_range=in_range, x_star_interval=x_ci, loss_star_interval=loss_ci, at_optimum_intervals=at_cis,
        minimum_fraction=fraction,
        warnings=tuple(warnings),
    )


def _drop_unusable_allocations(data: pd.DataFrame, x: str) -> tuple[pd.DataFrame, list[str]]:
    """Drop an optional allocation column (tokens, params, mu_rec besides x) holding missing,
    non-numeric or non-positive values, with a warning naming the rows: its power law
    (e.g. tokens* ∝ C^…) would otherwise vanish without a word."""
    warnings = []
    for col in ALLOCATION_COLUMNS:
        if col == x or col not in data.columns:
            continue
        vals = pd.to_numeric(data[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(vals) | (vals <= 0)
        if bad.any():
            warnings.append(f"column {col!r} has {int(bad.sum())} missing, non-numeric or non-positive value(s) "
                            f"(rows {row_ids(data, pd.Series(bad, index=data.index))}); the {col}* law is "
                            "omitted (fix those rows to get it)")
            data = data.drop(columns=col)
    return data, warnings


def _check_fittable(data: pd.DataFrame, x: str, what: str) -> None:
    """Refuse tables with nothing to fit, naming the cause rather than an empty result."""
    loss = data["loss"].to_numpy(float)
    if len(loss) > 1 and np.ptp(loss) == 0:
        raise ValueError(f"{what}: the loss does not vary (every point has loss={loss[0]:g}): nothing to fit; "
                         "check that the loss column holds each run's own loss")
    if len(data) > 1 and data[x].nunique() == 1:
        raise ValueError(f"{what}: all {len(data)} points share {x}={data[x].iloc[0]:g}: the parabola in {x} "
                         f"is not identified; add runs at >= 3 {x} values per budget")


def isoflop(
    df: pd.DataFrame,
    *,
    x: XName = "mu_rec",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
    exclude_out_of_range: bool = False,
    source: str = "",
    estimator: Estimator = "parabola",
    noise: NoiseModel | None = None,
    assumed_sd: float | None = None,
) -> IsoFlopResult:
    """Per-budget parabolas in ln x over cell means, then mu*(C), D*(C), L*(C) power laws across
    budgets, every interval from one hierarchical parametric bootstrap (module docstring). The
    noise is measured from the table's replicates unless `noise` is given; without replicates it
    is `assumed_sd` (or the default assumption) and the result says so."""
    if x not in ALLOCATION_COLUMNS:
        raise ValueError(f"x={x!r}: choose one of {ALLOCATION_COLUMNS}")
    if estimator not in DEGREE:
        raise ValueError(f"estimator={estimator!r}: choose one of {tuple(DEGREE)}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap} must be >= 0 (0 disables the bootstrap)")
    what = "isoFLOP input"
    table = validate_table(df, ("budget_flops", x, "loss"), what=what, key=("run_id",))
    data, unusable = _drop_unusable_allocations(table.df, x)
    warnings = list(table.warnings) + unusable
    _check_fittable(data, x, what)
    cell_table = cells(data)
    noise = noise or noise_model(cell_table, assumed_sd=assumed_sd, level=level)
    if not noise.measured:
        warnings.append(f"{noise.describe()}: the intervals assume it; add seeds to measure it")
    rng = np.random.default_rng(seed)
    fits: list[_BudgetFit] = []
    skipped = []
    for budget, group in cell_table.groupby("budget_flops", sort=True):
        need = DEGREE[estimator] + 1
        if group[x].nunique() < need:
            skipped.append(f"{budget:.3g}: {group[x].nunique()}")
            warnings.append(f"budget {budget:.3g}: only {group[x].nunique()} distinct {x} values; "
                            f"the {estimator} estimator needs {need} (budget skipped)")
            continue
        fits.append(_fit_cells(group, x, estimator))
    if not fits:
        raise ValueError(f"{what}: no budget has the {DEGREE[estimator] + 1} distinct {x} values the {estimator} "
                         "estimator needs "
                         f"(distinct {x} per budget: {', '.join(skipped)}); add runs at more {x} values")
    u_draws = l_draws = None
    if n_bootstrap:
        sd = noise.draw_sd(rng, n_bootstrap)
        draws = [_minimum(_simulate(f, sd, rng)) for f in fits]
        u_draws = np.stack([d[0] for d in draws], axis=1)  # (B, budgets)
        l_draws = np.stack([d[1] for d in draws], axis=1)
    optima = [_optimum(f, x, None if u_draws is None else u_draws[:, j], None if l_draws is None else l_draws[:, j],
                       level) for j, f in enumerate(fits)]
    for o in optima:
        warnings += o.warnings
    keep = [j for j, o in enumerate(optima) if o.positive_curvature and (o.in_range or not exclude_out_of_range)]
    used = [optima[j] for j in keep]
    laws: dict[str, PowerLawFit] = {}
    growth: dict[str, float] = {}
    if len(used) >= 2:
        c = np.array([o.budget_flops for o in used])
        columns = [col for col in ALLOCATION_COLUMNS
                   if all(col in o.at_optimum for o in used)
                   and np.ptp(np.log([o.at_optimum[col] for o in used])) > 1e-9]
        for col in [*columns, "loss"]:
            values = np.array([o.loss_star if col == "loss" else o.at_optimum[col] for o in used])
            law = fit_power_law(c, values, level=level)
            if u_draws is not None:
                if col == "loss":
                    with np.errstate(invalid="ignore"):  # a draw with a negative loss is left out
                        log_draws = np.log(l_draws[:, keep])
                else:
                    log_draws = np.stack([np.polyval(fits[j].interp[col], u_draws[:, j]) for j in keep], axis=1)
                ok = np.all(np.isfinite(log_draws), axis=1)
                gammas = log_slopes(np.log(c), log_draws[ok])
                if col != "loss":
                    growth[col] = float(np.mean(gammas > 0)) if gammas.size else float("nan")
                law = _with_bootstrap(law, gammas, level)
            laws[col] = law
        if len(used) == 2:
            warnings.append("exponents across budgets are not measurable from 2 budgets (a 2-point slope has no "
                            "interval and no test of the power law); add a third budget")
    else:
        warnings.append(f"only {len(used)} usable budget(s): power laws across budgets need >= 2")
    conv = ""
    if "flop_convention" in data.columns:
        conv = ",".join(sorted(set(map(str, data["flop_convention"].dropna()))))
    return IsoFlopResult(x=x, optima=tuple(optima), power_laws=laws,
                         budgets_used=tuple(o.budget_flops for o in used), warnings=tuple(warnings),
                         source=source, flop_convention=conv, estimator=estimator, noise=noise.describe(),
                         noise_measured=noise.measured, growth_probability=growth)


def _with_bootstrap(law: PowerLawFit, gammas: np.ndarray, level: float) -> PowerLawFit:
    """The exponent's interval and SE from the hierarchical bootstrap (>= 3 budgets; with 2 none)."""
    if law.n_points < 3 or gammas.size < 2:
        return PowerLawFit(**{**asdict(law), "gamma_interval": None, "gamma_se": float("nan"),
                              "warnings": law.warnings})
    interval = percentile_interval(gammas, level, method="hierarchical parametric bootstrap")
    return PowerLawFit(**{**asdict(law), "gamma_interval": interval, "gamma_se": float(np.std(gammas, ddof=1)),
                          "warnings": law.warnings})
