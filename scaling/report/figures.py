"""Publication figures from fit results (matplotlib; PNG + PDF via style.save)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import ticker
import pandas as pd

from parcae_scaling.scaling.frontier import FrontierResult
from parcae_scaling.scaling.isoflop import IsoFlopResult
from parcae_scaling.scaling.laws import Law, get_law
from parcae_scaling.scaling.results import FitResult
from parcae_scaling.scaling.report.style import budget_colors, new_figure, paper_style, save
from parcae_scaling.scaling.stability import metric_has_data, verdict
from parcae_scaling.scaling.testtime import TestTimeResult

LOSS_LABEL = "validation loss (nats/token)"
X_LABELS = {"mu_rec": r"mean recurrence $\mu_{rec}$", "tokens": "training tokens", "params": "parameters"}


def isoflop_figure(result: IsoFlopResult, df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Loss vs x per budget, fitted parabolas in ln x, optima marked (open = flagged)."""
    with paper_style():
        fig, ax = new_figure(height_in=2.6)
        ax = ax[0, 0]
        colors = budget_colors(len(result.optima))
        for color, opt in zip(colors, result.optima):
            g = df[df["budget_flops"] == opt.budget_flops]
            ax.scatter(g[result.x], g["loss"], color=color, s=9, zorder=3, label=f"{opt.budget_flops:.2g} FLOPs")
            u = np.linspace(np.log(opt.x_min) - 0.15, np.log(opt.x_max) + 0.15, 100)
            c0, c1, c2 = opt.coefficients
            ax.plot(np.exp(u), c0 + c1 * u + c2 * u * u, color=color, lw=0.9)
            good = opt.in_range and opt.positive_curvature
            ax.plot(opt.x_star, opt.loss_star, marker="*", ms=8, color=color if good else "white",
                    mec=color, zorder=4)
        ax.set_xscale("log")
        ax.set_xlabel(X_LABELS[result.x])
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title("isoFLOP curves (★ optimum; open ★ flagged)")
        ax.legend(ncol=2, frameon=False)
        return save(fig, out_dir, "isoflop_curves")


def optima_figure(result: IsoFlopResult, out_dir: str | Path) -> list[Path]:
    """mu* and D* versus C with power-law lines, exponents and intervals."""
    panels = [k for k in ("mu_rec", "tokens") if k in result.power_laws]
    if not panels:
        return []
    labels = {"mu_rec": r"optimal $\mu_{rec}^*$", "tokens": r"optimal tokens $D^*$"}
    with paper_style():
        fig, axes = new_figure(n_cols=len(panels), height_in=2.2, width_in=3.35 * min(len(panels), 2) * 0.9)
        used = [o for o in result.optima if o.budget_flops in result.budgets_used]
        c = np.array([o.budget_flops for o in used])
        c_line = np.geomspace(c.min() / 2, c.max() * 4, 50)
        for ax, key in zip(axes[0], panels):
            pl = result.power_laws[key]
            y = np.array([o.at_optimum[key] for o in used])
            if key == result.x and all(o.x_star_interval for o in used):
                err = np.array([[o.x_star - o.x_star_interval.low, o.x_star_interval.high - o.x_star] for o in used]).T
                ax.errorbar(c, y, yerr=np.clip(err, 0, None), fmt="o", capsize=2, color="C0", zorder=3)
            else:
                ax.plot(c, y, "o", color="C0", zorder=3)
            ci = pl.gamma_interval
            lab = (rf"$\propto C^{{{pl.gamma:.2f}\pm{pl.gamma_se:.2f}}}$" if np.isfinite(pl.gamma_se)
                   else rf"$\propto C^{{{pl.gamma:.2f}}}$")
            if ci:
                lab += f"\n95%: [{ci.low:.2f}, {ci.high:.2f}]"
            ax.plot(c_line, pl.predict(c_line), "--", color="C1", label=lab)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training compute C (FLOPs)")
            ax.set_ylabel(labels[key])
            ax.legend(frameon=False)
        return save(fig, out_dir, "isoflop_optima")


def frontier_figure(front: FrontierResult, out_dir: str | Path) -> list[Path]:
    """Compute-optimal loss vs C for the looped model and the fixed-depth baseline."""
    pts = front.points
    c = np.array([p.budget_flops for p in pts])
    with paper_style():
        fig, axes = new_figure(n_cols=2, height_in=2.3, width_in=6.0)
        ax, ax2 = axes[0]
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
        ax.legend(frameon=False)
        ax2.set_yscale("log")
        ax2.set_ylabel(r"compute-optimal $\mu_{rec}^*$")
        ax.set_title(f"frontier from the {front.law} law (bands: 95% bootstrap)")
        return save(fig, out_dir, "frontier")


def test_time_figure(result: TestTimeResult, out_dir: str | Path, form: str = "tt_exp") -> list[Path]:
    """Loss vs evaluation depth T per trained model, fitted curve, training depth marked."""
    law = get_law(form)
    with paper_style():
        fig, ax = new_figure(height_in=2.5)
        ax = ax[0, 0]
        for color, curve in zip(budget_colors(len(result.curves)), result.curves):
            t = np.array(curve.recurrence)
            ax.plot(t, curve.loss, "o", color=color, ms=3, label=rf"{curve.run_id} ($\mu_{{rec}}$={curve.mu_rec:g})")
            tt = np.linspace(t.min(), t.max(), 200)
            ax.plot(tt, law.predict(curve.fits[form].params, pd.DataFrame({"recurrence": tt})), color=color, lw=0.9)
            ax.axvline(curve.mu_rec, color=color, ls=":", lw=0.8)
        ax.set_xlabel("test-time recurrence T (loops)")
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title(f"test-time scaling, {law.formula} (dotted: training depth)")
        ax.legend(frameon=False, fontsize=5.5)
        return save(fig, out_dir, "test_time")


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
