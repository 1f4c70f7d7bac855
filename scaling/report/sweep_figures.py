"""Figures drawn straight from measured runs (no law): the measured compute-optimal frontier of the
looped model against the fixed-depth baseline, in the one figure style of style.py. Runs are
averaged over seeds into cells (scaling/replicates.py): points are cell means +- SE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from parcae_scaling.scaling.replicates import cells
from parcae_scaling.scaling.report.figures import LOSS_LABEL
from parcae_scaling.scaling.report.style import mu_color, new_figure, paper_style, save


def measured_frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Per budget: the best looped cell (its mu_rec and mean loss over seeds) and the fixed-depth
    cell's mean loss.

    Fixed depth means the transformer baseline (arch 'transformer') if the sweep has one on that
    budget, else the looped model's own mu_rec = 1 cell."""
    df = cells(df[np.isfinite(df["loss"].to_numpy(float))])
    is_tf = df["arch"].astype(str).eq("transformer") if "arch" in df.columns else pd.Series(False, index=df.index)
    loop, tf = df[~is_tf], df[is_tf]
    rows = []
    for budget, g in loop.groupby("budget_flops"):
        best = g.loc[g["loss"].idxmin()]
        base = tf[tf["budget_flops"] == budget]
        base_loss = float(base["loss"].iloc[0]) if len(base) else float(g.loc[g["mu_rec"] == 1, "loss"].iloc[0]) \
            if (g["mu_rec"] == 1).any() else float("nan")
        rows.append({"budget_flops": float(budget), "best_mu_rec": int(best["mu_rec"]),
                     "best_loss": float(best["loss"]),
                     "fixed_depth_loss": base_loss,
                     "fixed_depth": "transformer" if len(base) else "mu_rec=1"})
    return pd.DataFrame(rows, columns=["budget_flops", "best_mu_rec", "best_loss", "fixed_depth_loss", "fixed_depth"])


def measured_frontier_figure(df: pd.DataFrame, out_dir: str | Path, name: str = "frontier_measured") -> list[Path]:
    """Loss vs C: one line per mu_rec (cell means +- SE over seeds), the fixed-depth baseline, and
    the best looped cell per budget."""
    front = measured_frontier(df)
    if front.empty:
        raise ValueError("no finite losses of looped runs to draw a measured frontier from")
    table = cells(df[np.isfinite(df["loss"].to_numpy(float))])
    is_tf = table["arch"].astype(str).eq("transformer") if "arch" in table.columns else \
        pd.Series(False, index=table.index)
    loop, tf = table[~is_tf], table[is_tf]
    one_seed = bool((table["n"] < 2).all())
    with paper_style():
        fig, ax = new_figure(height_in=2.5)
        ax = ax[0, 0]
        for mu in sorted(loop["mu_rec"].unique()):
            g = loop[loop["mu_rec"] == mu].sort_values("budget_flops")
            ax.errorbar(g["budget_flops"], g["loss"], yerr=g["se"].fillna(0.0), fmt="o-", color=mu_color(mu), lw=0.7,
                        ms=3, capsize=2, alpha=0.9, label=rf"$\mu_{{rec}}$={int(mu)}")
        if len(tf):
            g = tf.sort_values("budget_flops")
            ax.errorbar(g["budget_flops"], g["loss"], yerr=g["se"].fillna(0.0), fmt="s--", color="C3", ms=3.5,
                        capsize=2, label="fixed depth (transformer)")
        elif front["fixed_depth_loss"].notna().any():
            ax.plot(front["budget_flops"], front["fixed_depth_loss"], "s--", color="C3", ms=3.5,
                    label=f"fixed depth ({front['fixed_depth'].iloc[0]})")
        ax.plot(front["budget_flops"], front["best_loss"], "-", color="k", lw=1.6, alpha=0.5,
                label="best looped cell")
        if one_seed:
            ax.plot([], [], ls="", label="one seed per cell: noise unmeasured")
        ax.set_xscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title("measured frontier: looped vs fixed depth (means ± SE)")
        ax.legend(frameon=False, ncol=2)
        return save(fig, out_dir, name)
