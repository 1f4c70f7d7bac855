"""isoFLOP analysis: a parabola in log x per budget, its minimum, then power laws across budgets.

x is mu_rec by default (the Parcae sweep), or tokens / params. Parabolas are biased when the
sampled grid is wide or off-centre (REFERENCE §4), so each budget records its curvature and
whether the minimum lies inside the sampled range, and warns otherwise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from parcae_scaling.scaling.data import row_ids, validate_table
from parcae_scaling.scaling.powerlaw import PowerLawFit, fit_power_law
from parcae_scaling.scaling.results import DEFAULT_BOOTSTRAP, ConfidenceInterval, percentile_interval

XName = Literal["mu_rec", "tokens", "params"]
ALLOCATION_COLUMNS = ("mu_rec", "tokens", "params")


@dataclass(frozen=True, kw_only=True)
class BudgetOptimum:
    """The parabola fitted at one FLOP budget and its minimum."""

    budget_flops: float
    n_points: int
    coefficients: tuple[float, float, float]  # loss = c0 + c1·u + c2·u², u = ln x
    x_star: float
    loss_star: float
    at_optimum: dict[str, float]  # mu_rec / tokens / params interpolated at the optimum
    x_min: float
    x_max: float
    positive_curvature: bool
    in_range: bool
    x_star_interval: ConfidenceInterval | None = None
    loss_star_interval: ConfidenceInterval | None = None
    warnings: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.positive_curvature


@dataclass(frozen=True, kw_only=True)
class IsoFlopResult:
    x: str
    optima: tuple[BudgetOptimum, ...]
    power_laws: dict[str, PowerLawFit]  # "mu_rec" / "tokens" / "params" / "loss" vs budget
    budgets_used: tuple[float, ...]
    warnings: tuple[str, ...] = ()
    source: str = ""
    flop_convention: str = ""
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
            o["coefficients"] = tuple(o["coefficients"])
            o["warnings"] = tuple(o["warnings"])
            optima.append(BudgetOptimum(**o))
        d["optima"] = tuple(optima)
        d["power_laws"] = {k: PowerLawFit.from_dict(v) for k, v in d["power_laws"].items()}
        d["budgets_used"] = tuple(d["budgets_used"])
        d["warnings"] = tuple(d["warnings"])
        return cls(**d)

    def summary(self) -> str:
        lines = [f"isoFLOP in ln {self.x}: {len(self.optima)} budgets, {len(self.budgets_used)} used for power laws"]
        for o in self.optima:
            ci = o.x_star_interval
            ci_s = f" [{ci.low:.3g}, {ci.high:.3g}]" if ci else ""
            flag = "" if (o.in_range and o.positive_curvature) else "  (flagged)"
            lines.append(f"  C={o.budget_flops:.3g}: {self.x}*={o.x_star:.4g}{ci_s} L*={o.loss_star:.4f}{flag}")
        for name, pl in self.power_laws.items():
            lines.append(f"  {name}* ∝ C^{pl.gamma:.3f} ± {pl.gamma_se:.3f} (k={pl.k:.4g})")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _quadratic_bootstrap(u: np.ndarray, y: np.ndarray, n_resamples: int, rng: np.random.Generator):
    """(x_star in ln x, loss_star) for point-resampled weighted quadratic fits, vectorised."""
    n = u.size
    draws = rng.integers(0, n, size=(n_resamples, n))
    w = np.zeros((n_resamples, n))
    np.add.at(w, (np.arange(n_resamples)[:, None], draws), 1.0)
    ok = ((w > 0) @ np.ones(n) >= 3) & np.array([np.unique(u[row > 0]).size >= 3 for row in w])
    design = np.stack([np.ones(n), u, u * u], axis=1)  # (n, 3)
    xtwx = np.einsum("bn,ni,nj->bij", w, design, design)
    xtwy = np.einsum("bn,ni,n->bi", w, design, y)
    xtwx[~ok] = np.eye(3)
    c = np.linalg.solve(xtwx, xtwy[..., None])[..., 0]
    good = ok & (c[:, 2] > 0)
    u_star = -c[good, 1] / (2 * c[good, 2])
    loss_star = c[good, 0] + c[good, 1] * u_star + c[good, 2] * u_star**2
    return u_star, loss_star


def fit_budget(group: pd.DataFrame, x: str, *,
               n_bootstrap: int, level: float, rng: np.random.Generator) -> BudgetOptimum:
    u = np.log(group[x].to_numpy(float))
    y = group["loss"].to_numpy(float)
    budget = float(group["budget_flops"].iloc[0])
    c2, c1, c0 = np.polyfit(u, y, 2)
    warnings: list[str] = []
    positive = bool(c2 > 0)
    if positive:
        u_star = -c1 / (2 * c2)
    else:
        u_star = u[np.argmin(y)]
        warnings.append(f"budget {budget:.3g}: parabola in ln {x} has non-positive curvature "
                        f"({c2:.3g}); no interior minimum, using the best sampled point and "
                        "excluding this budget from the power laws")
    in_range = bool(u.min() <= u_star <= u.max())
    if positive and not in_range:
        warnings.append(f"budget {budget:.3g}: optimum {x}={np.exp(u_star):.4g} lies outside the sampled "
                        f"range [{np.exp(u.min()):.4g}, {np.exp(u.max()):.4g}]; extend the grid")
    loss_star = float(c0 + c1 * u_star + c2 * u_star**2) if positive else float(y.min())
    at_opt = {}
    for col in ALLOCATION_COLUMNS:
        if col in group.columns:
            v = np.log(group[col].to_numpy(float))
            deg = min(2, np.unique(u).size - 1)
            at_opt[col] = float(np.exp(np.polyval(np.polyfit(u, v, deg), u_star)))
    x_ci = loss_ci = None
    if n_bootstrap and positive:
        us, ls = _quadratic_bootstrap(u, y, n_bootstrap, rng)
        if us.size < 0.5 * n_bootstrap:
            warnings.append(f"budget {budget:.3g}: only {us.size}/{n_bootstrap} bootstrap parabolas have a minimum")
        x_ci = percentile_interval(np.exp(us), level)
        loss_ci = percentile_interval(ls, level)
    return BudgetOptimum(
        budget_flops=budget, n_points=int(u.size), coefficients=(float(c0), float(c1), float(c2)),
        x_star=float(np.exp(u_star)), loss_star=loss_star, at_optimum=at_opt,
        x_min=float(np.exp(u.min())), x_max=float(np.exp(u.max())), positive_curvature=positive,
        in_range=in_range, x_star_interval=x_ci, loss_star_interval=loss_ci, warnings=tuple(warnings),
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
) -> IsoFlopResult:
    """Per-budget parabolas in ln x, then mu*(C), D*(C), L*(C) power laws across budgets."""
    if x not in ALLOCATION_COLUMNS:
        raise ValueError(f"x={x!r}: choose one of {ALLOCATION_COLUMNS}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap} must be >= 0 (0 disables the bootstrap)")
    what = "isoFLOP input"
    table = validate_table(df, ("budget_flops", x, "loss"), what=what, key=("run_id",))
    data, unusable = _drop_unusable_allocations(table.df, x)
    warnings = list(table.warnings) + unusable
    _check_fittable(data, x, what)
    rng = np.random.default_rng(seed)
    optima = []
    skipped = []
    for budget, group in data.groupby("budget_flops", sort=True):
        if group[x].nunique() < 3:
            skipped.append(f"{budget:.3g}: {group[x].nunique()}")
            warnings.append(f"budget {budget:.3g}: only {group[x].nunique()} distinct {x} values; "
                            "a parabola needs 3 (budget skipped)")
            continue
        opt = fit_budget(group, x, n_bootstrap=n_bootstrap, level=level, rng=rng)
        warnings += opt.warnings
        optima.append(opt)
    if not optima:
        raise ValueError(f"{what}: no budget has the 3 distinct {x} values a parabola needs "
                         f"(distinct {x} per budget: {', '.join(skipped)}); add runs at more {x} values")
    used = [o for o in optima if o.positive_curvature and (o.in_range or not exclude_out_of_range)]
    laws: dict[str, PowerLawFit] = {}
    if len(used) >= 2:
        c = np.array([o.budget_flops for o in used])
        for col in ALLOCATION_COLUMNS:
            vals = np.array([o.at_optimum.get(col, np.nan) for o in used])
            if np.all(np.isfinite(vals)) and np.ptp(np.log(vals)) > 1e-9:
                laws[col] = fit_power_law(c, vals, level=level)
        laws["loss"] = fit_power_law(c, np.array([o.loss_star for o in used]), level=level)
    else:
        warnings.append(f"only {len(used)} usable budget(s): power laws across budgets need >= 2")
    conv = ""
    if "flop_convention" in data.columns:
        conv = ",".join(sorted(set(map(str, data["flop_convention"].dropna()))))
    return IsoFlopResult(x=x, optima=tuple(optima), power_laws=laws,
                         budgets_used=tuple(o.budget_flops for o in used), warnings=tuple(warnings),
                         source=source, flop_convention=conv)
