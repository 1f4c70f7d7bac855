"""Publication figures from fit results (matplotlib; PNG + PDF via style.save).

Each figure is drawn by a `draw_*` function that returns the Figure (the figure tests inspect
its artists) and saved by its `*_figure` wrapper. What every figure keeps to: measured points
carry their uncertainty (replicate standard errors of cell means; where a table has one seed,
the legend says the noise is unmeasured), flagged results have their own markers explained in
the legend, a fit that is not identified is not drawn as a curve, bands never set the axis
range, and curves are named by the quantities a reader compares (mu_rec, budget).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib import ticker, transforms
import pandas as pd

from parcae_scaling.scaling.frontier import FrontierResult
from parcae_scaling.scaling.isoflop import IsoFlopResult
from parcae_scaling.scaling.laws import Law, get_law
from parcae_scaling.scaling.replicates import cells
from parcae_scaling.scaling.results import FitResult
from parcae_scaling.scaling.report.style import budget_colors, mu_color, new_figure, paper_style, save
from parcae_scaling.scaling.stability import metric_has_data, verdict
from parcae_scaling.scaling.testtime import TestTimeResult

LOSS_LABEL = "validation loss (nats/token)"
X_LABELS = {"mu_rec": r"mean recurrence $\mu_{rec}$", "tokens": "training tokens", "params": "parameters"}


# Optimum markers: a reader must tell a result from a flag at a glance.
OPTIMUM_MARKERS = {"optimum": ("*", "filled"), "outside the sampled range": ("*", "open"),
                   "interval leaves the sampled range": ("s", "open"),
                   "not identified at this noise": ("D", "open"), "no minimum: best cell": ("X", "filled")}


def _optimum_kind(opt) -> str:
    if not opt.positive_curvature:
        return "no minimum: best cell"
    if not opt.identified:
        return "not identified at this noise"
    if not opt.in_range:
        return "outside the sampled range"
    return "optimum" if opt.interval_in_range else "interval leaves the sampled range"


def _marker(ax, x: float, y: float, kind: str, color) -> None:
    marker, fill = OPTIMUM_MARKERS[kind]
    ax.plot(x, y, marker=marker, ms=8 if marker == "*" else 5, color=color if fill == "filled" else "white",
            mec=color, zorder=4)


def _marker_legend(ax, kinds: set[str], extra: list[str] = ()) -> None:
    """The legend: the curves' handles, then one entry per marker kind drawn; notes (what is not
    measured or not drawn) in a box at the bottom of the axes."""
    handles, labels = ax.get_legend_handles_labels()
    for kind in (k for k in OPTIMUM_MARKERS if k in kinds):
        marker, fill = OPTIMUM_MARKERS[kind]
        (h,) = ax.plot([], [], marker=marker, ls="", color="0.3" if fill == "filled" else "white", mec="0.3")
        handles.append(h)
        labels.append(kind)
    ax.legend(handles, labels, frameon=False, fontsize=5.5)
    if extra:  # above the axes, where no data is
        ax.set_title("\n".join(extra), fontsize=5.5, loc="left")


def draw_isoflop(result: IsoFlopResult, df: pd.DataFrame):
    """Loss vs x per budget: runs (small), cell means +- SE (replicates), the fitted curves in
    ln x, and each budget's optimum with a marker saying whether it is a result or a flag."""
    fig, ax = new_figure(height_in=2.6)
    ax = ax[0, 0]
    colors = budget_colors(len(result.optima))
    table = cells(df[df["loss"].notna()]) if "loss" in df.columns else None
    kinds = set()
    for color, opt in zip(colors, result.optima):
        g = df[df["budget_flops"] == opt.budget_flops]
        ax.scatter(g[result.x], g["loss"], color=color, s=4, alpha=0.5, zorder=2)
        c = table[table["budget_flops"] == opt.budget_flops] if table is not None else None
        if c is not None and len(c):
            ax.errorbar(c[result.x], c["loss"], yerr=c["se"].fillna(0.0), fmt="o", ms=3.5, color=color, capsize=2,
                        zorder=3, label=f"C = {opt.budget_flops:.2g} FLOPs")
        u = np.linspace(np.log(opt.x_min) - 0.15, np.log(opt.x_max) + 0.15, 100)
        ax.plot(np.exp(u), sum(k * u**i for i, k in enumerate(opt.coefficients)), color=color, lw=0.9)
        kind = _optimum_kind(opt)
        kinds.add(kind)
        _marker(ax, opt.x_star, opt.loss_star, kind, color)
    _fit_axes_to_data(ax, df["loss"])
    _mark_diverged(ax, df, result.x, dict(zip((o.budget_flops for o in result.optima), colors)))
    ax.set_xscale("log")
    if result.x == "mu_rec":  # depths read as 1, 2, 4, not 10^0, 2x10^0
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(X_LABELS[result.x])
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("isoFLOP curves: cell means ± SE over seeds")
    notes = [] if result.noise_measured else ["one seed per cell: noise unmeasured (no error bars)"]
    _marker_legend(ax, kinds, notes)
    return fig


DIVERGED_LABEL = "diverged (no loss; left out of fits)"


def _mark_diverged(ax, df: pd.DataFrame, x: str, colors: dict) -> None:
    """Runs with no loss (NaN: diverged) as x marks along the top edge at their x, in their
    budget's colour: a reader sees which cells lost runs instead of a silent gap."""
    if "loss" not in df.columns:
        return
    lost = df[df["loss"].isna()]
    if lost.empty:
        return
    edge = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter(lost[x], np.full(len(lost), 0.97), marker="x", s=18, lw=1.0, transform=edge, clip_on=False,
               color=[colors.get(b, "0.3") for b in lost["budget_flops"]], zorder=5, label=DIVERGED_LABEL)


def isoflop_figure(result: IsoFlopResult, df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    with paper_style():
        return save(draw_isoflop(result, df), out_dir, "isoflop_curves")


def _fit_axes_to_data(ax, values, margin: float = 0.08) -> None:
    """Y limits from the measured values (never from bands); a band that leaves them is clipped."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size:
        lo, hi = float(v.min()), float(v.max())
        pad = margin * (hi - lo) if hi > lo else 0.05 * abs(hi) or 0.05
        ax.set_ylim(lo - pad, hi + pad)


def draw_optima(result: IsoFlopResult):
    """mu* (and D*) versus C: every budget's optimum with its interval and flag marker; the power
    law only where it is measured (>= 3 budgets, none flagged), else a note instead of a line."""
    panels = [k for k in ("mu_rec", "tokens") if k in result.power_laws] or [result.x]
    labels = {"mu_rec": r"optimal $\mu_{rec}^*$", "tokens": r"optimal tokens $D^*$", "params": "optimal parameters"}
    # one paper column: the panels stacked, sharing the compute axis
    fig, axes = new_figure(n_rows=len(panels), height_in=1.9 * len(panels) + 0.2, sharex=True)
    for ax, key in zip(axes[:, 0], panels):
        kinds = set()
        for o in result.optima:
            y = o.x_star if key == result.x else o.at_optimum.get(key, np.nan)
            ci = o.x_star_interval if key == result.x else o.at_optimum_intervals.get(key)
            if ci is not None:
                ax.errorbar([o.budget_flops], [y], yerr=[[max(y - ci.low, 0)], [max(ci.high - y, 0)]], fmt="none",
                            ecolor="C0", capsize=2, zorder=2)
            kind = _optimum_kind(o)
            kinds.add(kind)
            _marker(ax, o.budget_flops, y, kind, "C0")
        notes = []
        pl = result.power_laws.get(key)
        used = [o for o in result.optima if o.budget_flops in result.budgets_used]
        clean = all(_optimum_kind(o) == "optimum" for o in used)
        if pl is not None and pl.gamma_interval is not None and clean:
            c = np.array([o.budget_flops for o in used])
            c_line = np.geomspace(c.min(), c.max(), 50)
            ci = pl.gamma_interval
            ax.plot(c_line, pl.predict(c_line), "--", color="C1",
                    label=rf"$\propto C^{{{pl.gamma:.2f}}}$, 95% [{ci.low:.2f}, {ci.high:.2f}]")
        elif pl is not None:
            why = (f"not measurable from {pl.n_points} budgets" if pl.gamma_interval is None
                   else "fitted through flagged optima")
            notes.append(f"no power law drawn: {why}")
            if key in result.growth_probability:
                notes.append(f"P({key}* grows with C) = {result.growth_probability[key]:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        budgets = [o.budget_flops for o in result.optima]
        ax.set_xlim(min(budgets) / 1.5, max(budgets) * 1.5)
        if key == result.x:  # the axes show the sampled range (shaded); intervals beyond it are clipped
            lo, hi = min(o.x_min for o in result.optima), max(o.x_max for o in result.optima)
            ax.axhspan(lo, hi, color="0.9", lw=0, zorder=0, label=f"sampled {key}")
            stars = [o.x_star for o in result.optima]
            ax.set_ylim(min(lo, *stars) / 1.3, max(hi, *stars) * 1.3)
            _mark_clipped(ax, [(o.budget_flops, o.x_star_interval) for o in result.optima if o.x_star_interval])
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_short_number))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel(labels[key])
        _marker_legend(ax, kinds, notes)
    axes[-1, 0].set_xlabel("training compute C (FLOPs)")
    return fig


CLIPPED_LABEL = "interval continues beyond the axis"


def _mark_clipped(ax, intervals: list[tuple[float, object]]) -> None:
    """An arrowhead on the axis edge where an interval leaves the axes (the axes follow the data,
    never the bands, so a wide interval is cut: the reader must see that it is)."""
    lo, hi = ax.get_ylim()
    edge = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ends = [(x, 0.0, "v") for x, ci in intervals if ci.low < lo]
    ends += [(x, 1.0, "^") for x, ci in intervals if ci.high > hi]
    for i, (x, y, marker) in enumerate(ends):
        ax.plot([x], [y], marker=marker, ms=4, color="C0", ls="", transform=edge, clip_on=False, zorder=5,
                label=CLIPPED_LABEL if i == 0 else None)


def _short_number(value: float, _pos: object = None) -> str:
    """Tick text a reader parses at a glance: 2, 0.5, 1.2M, 3e+12."""
    if value <= 0:
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def optima_figure(result: IsoFlopResult, out_dir: str | Path) -> list[Path]:
    with paper_style():
        return save(draw_optima(result), out_dir, "isoflop_optima")


def draw_frontier(front: FrontierResult, fit: FitResult | None = None):
    """Compute-optimal loss vs C for the looped model and the fixed-depth baseline, from the law.
    A law whose parameters are not identified is not drawn: the panels say so instead."""
    pts = front.points
    c = np.array([p.budget_flops for p in pts])
    fig, axes = new_figure(n_cols=2, height_in=2.3, width_in=6.0)
    ax, ax2 = axes[0]
    if fit is not None and fit.unidentified:
        note = textwrap.fill(f"not identified: {fit.n_points} points for {len(fit.params)} parameters "
                             f"({', '.join(fit.unidentified)}); no frontier is drawn from this law. The measured "
                             "frontier (cell means ± SE) is in the figure beside it.", 60)
        ax2.axis("off")
        ax.axis("off")
        ax.text(0.0, 0.5, note, transform=ax.transAxes, ha="left", va="center", fontsize=7)
        ax.set_title(f"frontier from the {front.law} law: not identified", loc="left")
        return fig
    for key, ci_key, label, color in (("loss_star", "loss_star_interval", r"looped, optimal $\mu_{rec}$", "C0"),
                                      ("baseline_loss", "baseline_loss_interval",
                                       r"fixed depth ($\mu_{rec}=1$)", "C3")):
        y = np.array([getattr(p, key) for p in pts])
        ax.plot(c, y, color=color, label=label)
        if all(getattr(p, ci_key) for p in pts):
            ax.fill_between(c, [getattr(p, ci_key).low for p in pts], [getattr(p, ci_key).high for p in pts],
                            color=color, alpha=0.2, lw=0)
    mu = np.array([p.mu_star for p in pts])
    ax2.plot(c, mu, color="C0")
    if all(p.mu_star_interval for p in pts):
        ax2.fill_between(c, [p.mu_star_interval.low for p in pts], [p.mu_star_interval.high for p in pts],
                         color="C0", alpha=0.2, lw=0)
    for a in (ax, ax2):
        a.axvspan(*front.sampled_budgets, color="0.85", alpha=0.5, lw=0, label="sampled budgets")
        a.set_xscale("log")
        a.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(LOSS_LABEL)
    _fit_axes_to_data(ax, np.concatenate([[p.loss_star for p in pts], [p.baseline_loss for p in pts]]))
    ax.legend(frameon=False)
    ax2.set_yscale("log")
    ax2.set_ylabel(r"compute-optimal $\mu_{rec}^*$")
    ax.set_title(f"frontier from the {front.law} law (bands: 95% bootstrap)")
    return fig


def frontier_figure(front: FrontierResult, out_dir: str | Path, fit: FitResult | None = None) -> list[Path]:
    with paper_style():
        return save(draw_frontier(front, fit), out_dir, "frontier")


def test_time_figure(result: TestTimeResult, out_dir: str | Path, form: str = "tt_exp") -> list[Path]:
    """Loss vs evaluation depth T per trained model, fitted curve, training depth marked."""
    law = get_law(form)
    with paper_style():
        fig, ax = new_figure(height_in=2.5)
        ax = ax[0, 0]
        seen: set[str] = set()
        for curve in result.curves:
            color = mu_color(curve.mu_rec)
            t = np.array(curve.recurrence)
            label = _curve_label(curve)  # replicates share one legend entry
            ax.plot(t, curve.loss, "o", color=color, ms=3, label=None if label in seen else label)
            seen.add(label)
            tt = np.linspace(t.min(), t.max(), 200)
            ax.plot(tt, law.predict(curve.fits[form].params, pd.DataFrame({"recurrence": tt})), color=color, lw=0.9)
            ax.axvline(curve.mu_rec, color=color, ls=":", lw=0.8)
        ax.set_xlabel("test-time recurrence T (loops)")
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title(f"test-time scaling, {law.formula} (dotted: training depth)")
        ax.legend(frameon=False, fontsize=5.5)
        return save(fig, out_dir, "test_time")


def _curve_label(curve) -> str:
    """What a reader compares: the training depth and the budget (or tokens), not a run id."""
    label = rf"$\mu_{{rec}}$ = {curve.mu_rec:g}"
    if np.isfinite(getattr(curve, "budget_flops", np.nan)):
        label += f", C = {curve.budget_flops:.2g}"
    elif np.isfinite(getattr(curve, "tokens", np.nan)):
        label += f", D = {curve.tokens:.3g}"
    return label


def residuals_figure(fit: FitResult, law: Law, df: pd.DataFrame, out_dir: str | Path, *,
                     color_by: str = "mu_rec") -> list[Path]:
    """Relative residuals of a parametric fit versus prediction, coloured by a column."""
    pred = law.predict(fit.params, df)
    rel = 100 * (df["loss"].to_numpy(float) - pred) / pred
    with paper_style():
        fig, ax = new_figure(height_in=2.3)
        ax = ax[0, 0]
        col = df[color_by] if color_by in df.columns else None
        sc = ax.scatter(pred, rel, c=col, s=9, cmap="viridis")
        if col is not None:
            fig.colorbar(sc, ax=ax, label=color_by)
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xlabel(f"predicted loss (nats/token), {fit.law} law")
        ax.set_ylabel("residual (%)")
        ax.set_title(f"{fit.law}: Huber {fit.objective:.3g}, {fit.n_points} points")
        return save(fig, out_dir, f"residuals_{fit.law}")


def stability_figure(history: pd.DataFrame, health: pd.DataFrame, out_dir: str | Path,
                     name: str = "stability") -> list[Path]:
    """Loss, rho(A-bar) and recurrent-state norm versus step, one line per run (x: diverged)."""
    panels = [("loss", "training loss (nats/token)", "linear"), ("rho_a", r"$\rho(\bar A)$ = max $\bar A$", "linear"),
              ("state_norm", r"recurrent-state norm $\|h_T\|$", "log")]
    with paper_style():
        fig, axes = new_figure(n_cols=3, height_in=2.3, width_in=7.0)
        colors = {rid: f"C{i % 10}" for i, rid in enumerate(health["run_id"])}
        for ax, (metric, ylabel, scale) in zip(axes[0], panels):
            for row in health.itertuples():
                g = history[(history["run_id"] == row.run_id) & (history["name"] == metric)].sort_values("step")
                if g.empty:
                    continue
                ax.plot(g["step"], g["value"], color=colors[row.run_id], lw=0.9,
                        label=f"{row.label} ({verdict(pd.Series(row._asdict()))})" if metric == "loss" else None)
                finite = g[np.isfinite(g["value"])]
                if row.diverged and len(finite):
                    ax.plot(finite["step"].iloc[-1], finite["value"].iloc[-1], "x", color=colors[row.run_id], ms=6)
            ax.set_yscale(scale)
            if scale == "log":  # plain numbers, no minor labels: "9x10^0" labels crowd the next panel
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(ylabel)
        if metric_has_data(history, "rho_a"):
            axes[0][1].axhline(1.0, color="k", lw=0.6, ls="--")
        # Below the panels: long run labels must not squeeze the axes.
        fig.legend(loc="outside lower center", ncol=min(3, max(1, len(health))), frameon=False, fontsize=5.5)
        fig.suptitle("training stability (x: diverged; dashed: rho = 1)", fontsize=8)
        return save(fig, out_dir, name)
