"""Training stability from the metric history: which runs diverged or spiked, and the figure of
loss, rho(A-bar) and recurrent-state norm over training.

A run *diverged* when training stopped on a non-finite loss or gradient (failure kind
"diverged", or a NaN/inf loss row). A *spike* is a logged training loss more than
`spike_ratio` times the best loss logged before it (after the first `warmup_points` logs,
where the loss still falls fast). Addition and concatenation injections spike or diverge at
large learning rates; the diagonal injection keeps rho(A-bar) < 1 by construction
(REFERENCE.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import ticker
import pandas as pd

from parcae_scaling.scaling.report.style import new_figure, paper_style, save

STABILITY_METRICS = ("loss", "rho_a", "state_norm", "grad_norm")
HEALTH_COLUMNS = ("run_id", "label", "status", "failure_kind", "diverged", "diverged_step", "n_spikes",
                  "max_spike_ratio", "first_spike_step", "final_loss", "max_rho_a", "max_state_norm")


@dataclass(frozen=True, kw_only=True)
class SpikeRule:
    """When a logged loss counts as a spike: more than `spike_ratio` times the median of the
    `window` finite losses logged before it. A median, not the best loss so far: per-step losses
    of small batches scatter by 10-20%, and the running minimum of noise sits at its low tail, so
    comparing to it flags every healthy run (seen on the default sweep)."""

    spike_ratio: float = 1.5
    window: int = 10
    warmup_points: int = 3

    def __post_init__(self) -> None:
        if not self.spike_ratio > 1:
            raise ValueError(f"SpikeRule.spike_ratio={self.spike_ratio} must be > 1, e.g. 1.5 (50% above the recent median)")
        if self.window < 1:
            raise ValueError(f"SpikeRule.window={self.window} must be >= 1 logged points")
        if self.warmup_points < 0:
            raise ValueError(f"SpikeRule.warmup_points={self.warmup_points} must be >= 0")


def loss_spikes(loss: np.ndarray, rule: SpikeRule = SpikeRule()) -> np.ndarray:
    """Per logged point: loss / median of the previous `window` finite losses; NaN where
    undefined (warm-up, nothing before it)."""
    loss = np.asarray(loss, dtype=float)
    finite = pd.Series(np.where(np.isfinite(loss), loss, np.nan))
    recent = finite.shift(1).rolling(rule.window, min_periods=1).median().to_numpy()
    ratio = loss / recent
    ratio[: rule.warmup_points] = np.nan
    return ratio


def run_health(runs: pd.DataFrame, history: pd.DataFrame, *, labels: dict[str, str] | None = None,
               rule: SpikeRule = SpikeRule()) -> pd.DataFrame:
    """One row per run: status, diverged (and where), spikes, final loss, max rho(A-bar) and state norm.

    `runs` is `Store.runs(sweep)` (run_id, status, failure_kind, ...); `history` is
    `Store.metric_history(...)` in long format (run_id, step, name, value).
    """
    rows = []
    for run in runs.itertuples():
        h = history[history["run_id"] == run.run_id]
        by = {name: g.sort_values("step") for name, g in h.groupby("name")}
        loss = by.get("loss", pd.DataFrame({"step": [], "value": []}))
        values, steps = loss["value"].to_numpy(float), loss["step"].to_numpy(int)
        non_finite = ~np.isfinite(values)
        kind = run.failure_kind if isinstance(run.failure_kind, str) else ""
        diverged = kind == "diverged" or bool(non_finite.any())
        ratio = loss_spikes(values, rule)
        spikes = np.flatnonzero(np.nan_to_num(ratio, nan=0.0) > rule.spike_ratio)
        finite = values[~non_finite]
        rows.append({
            "run_id": run.run_id, "label": (labels or {}).get(run.run_id, run.run_id), "status": run.status,
            "failure_kind": kind, "diverged": diverged,
            "diverged_step": int(steps[non_finite][0]) if non_finite.any() else (
                int(run.status_step) if diverged and pd.notna(getattr(run, "status_step", None)) else None),
            "n_spikes": int(spikes.size),
            "max_spike_ratio": float(np.nanmax(ratio)) if np.isfinite(ratio).any() else float("nan"),
            "first_spike_step": int(steps[spikes[0]]) if spikes.size else None,
            "final_loss": float(finite[-1]) if finite.size else float("nan"),
            "max_rho_a": _max(by.get("rho_a")), "max_state_norm": _max(by.get("state_norm")),
        })
    return pd.DataFrame(rows, columns=list(HEALTH_COLUMNS))


def _max(g: pd.DataFrame | None) -> float:
    if g is None or g.empty:
        return float("nan")
    v = g["value"].to_numpy(float)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else float("nan")


def verdict(row: pd.Series) -> str:
    """A short word for the report: diverged / failed / spiked / unstable (rho > 1) / marginal
    (rho = 1, the addition injection) / stable. The loop is linearly stable only for rho < 1."""
    if row["diverged"]:
        return "diverged"
    if row["status"] not in ("succeeded", "running"):
        return str(row["status"])
    if row["n_spikes"]:
        return "spiked"
    rho = row.get("max_rho_a", float("nan"))
    if rho > 1 + 1e-6:
        return "unstable"
    return "marginal" if rho >= 1 - 1e-6 else "stable"


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


def metric_has_data(history: pd.DataFrame, metric: str) -> bool:
    return bool((history["name"] == metric).any())
