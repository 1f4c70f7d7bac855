"""Training stability from the metric history: which runs diverged or spiked (the figure of
loss, rho(A-bar) and state norm over training is scaling/report/figures.py `stability_figure`).

A run *diverged* when training stopped on a non-finite loss or gradient (failure kind
"diverged", or a NaN/inf loss row). A *spike* is a logged training loss more than
`spike_ratio` times the best loss logged before it (after the first `warmup_points` logs,
where the loss still falls fast). Addition and concatenation injections spike or diverge at
large learning rates; the diagonal injection keeps rho(A-bar) < 1 by construction
(REFERENCE.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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
            raise ValueError(f"SpikeRule.spike_ratio={self.spike_ratio} must be > 1, "
                             "e.g. 1.5 (50% above the recent median)")
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


def metric_has_data(history: pd.DataFrame, metric: str) -> bool:
    return bool((history["name"] == metric).any())
