"""Replicates and the noise they measure.

Runs that differ only in their seed are replicates of one *cell*: the runs sharing every cell
column present in the table (CELL_COLUMNS: architecture, model, budget and the allocation). A
cell's mean loss has standard error sd / sqrt(n). The spread within cells is the noise floor:
the within-cell variances pooled (weighted by their degrees of freedom n - 1), per group
(architecture x budget) for the report and over all cells for the intervals, with a chi-square
interval on the SD.

Every interval the fit library prints comes from one noise model (`NoiseModel`): measured where
some cell has two replicates, else assumed (a spec's `noise.assumed_sd`, or DEFAULT_ASSUMED_SD)
and labelled so. A measured SD is itself uncertain: each bootstrap replicate draws its SD from
the scaled inverse chi-square distribution of sd^2 given the pooled estimate, so a floor
measured from few replicates widens the intervals instead of being taken at face value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from parcae_scaling.scaling.results import ConfidenceInterval

CELL_COLUMNS = ("arch", "model", "budget_flops", "mu_rec", "tokens", "params")
# The seed-to-seed SD of a cell's validation loss assumed where none is measured (nats/token). The
# default sweep's cells measured 0.0104 pooled (0.004-0.016 per cell) on a 2-core CPU (README, "Noise"); a larger floor
# would hide nothing: it only widens intervals.
DEFAULT_ASSUMED_SD = 0.01


def cell_columns(df: pd.DataFrame) -> list[str]:
    """The cell columns this table has (at least budget_flops must be among them)."""
    cols = [c for c in CELL_COLUMNS if c in df.columns]
    if "budget_flops" not in cols:
        raise ValueError("a run table needs a budget_flops column to form cells")
    return cols


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its columns, n (replicates), loss (mean), sd (NaN for n = 1), se
    (NaN for n = 1) and run_ids (comma-separated)."""
    keys = cell_columns(df)
    g = df.groupby(keys, sort=True, dropna=False)
    out = g["loss"].agg(n="size", loss="mean", sd="std").reset_index()
    out["se"] = out["sd"] / np.sqrt(out["n"])
    if "run_id" in df.columns:
        out["run_ids"] = g["run_id"].agg(lambda s: ",".join(map(str, s))).to_numpy()
    return out


@dataclass(frozen=True, kw_only=True)
class NoiseFloor:
    """The pooled within-cell SD of one group of cells."""

    arch: str
    budget_flops: float
    sd: float
    dof: int  # sum over cells of (n - 1)
    n_cells: int  # cells with >= 2 replicates
    interval: ConfidenceInterval | None  # chi-square interval on the SD; None when dof = 0


def _pooled(table: pd.DataFrame) -> tuple[float, int]:
    rep = table[table["n"] >= 2]
    dof = int((rep["n"] - 1).sum())
    if dof == 0:
        return float("nan"), 0
    return float(np.sqrt(((rep["n"] - 1) * rep["sd"] ** 2).sum() / dof)), dof


def sd_interval(sd: float, dof: int, level: float = 0.95) -> ConfidenceInterval:
    """Exact interval for a normal SD estimated with `dof` degrees of freedom."""
    lo_q, hi_q = stats.chi2.ppf([(1 + level) / 2, (1 - level) / 2], dof)
    return ConfidenceInterval(low=float(sd * np.sqrt(dof / lo_q)), high=float(sd * np.sqrt(dof / hi_q)),
                              level=level, method="chi-square")


def noise_floors(cell_table: pd.DataFrame, level: float = 0.95) -> tuple[NoiseFloor, ...]:
    """Pooled replicate SD per architecture and budget (groups without replicates included, dof 0)."""
    arch = cell_table["arch"] if "arch" in cell_table.columns else pd.Series("all", index=cell_table.index)
    floors = []
    for (a, budget), group in cell_table.groupby([arch.astype(str), "budget_flops"], sort=True):
        sd, dof = _pooled(group)
        floors.append(NoiseFloor(arch=str(a), budget_flops=float(budget), sd=sd, dof=dof,
                                 n_cells=int((group["n"] >= 2).sum()),
                                 interval=sd_interval(sd, dof, level) if dof else None))
    return tuple(floors)


@dataclass(frozen=True, kw_only=True)
class NoiseModel:
    """The SD of one run's loss that every interval is built on."""

    sd: float
    dof: int  # 0: assumed, not measured
    source: str  # how it was obtained, for reports
    floors: tuple[NoiseFloor, ...] = ()

    @property
    def measured(self) -> bool:
        return self.dof > 0

    def draw_sd(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """One SD per bootstrap replicate: the estimate's own uncertainty (scaled inverse chi-square
        given `dof`) for a measured floor; the assumed value itself otherwise."""
        if not self.measured:
            return np.full(size, self.sd)
        return self.sd * np.sqrt(self.dof / rng.chisquare(self.dof, size))

    def describe(self) -> str:
        if self.measured:
            ci = sd_interval(self.sd, self.dof)
            return (f"noise floor {self.sd:.4f} nats/token [{ci.low:.4f}, {ci.high:.4f}] "
                    f"(pooled replicate SD, {self.dof} dof; {self.source})")
        return f"noise unmeasured (no cell has 2 replicates); assumed SD {self.sd:.4f} nats/token ({self.source})"


def noise_model(cell_table: pd.DataFrame, *, assumed_sd: float | None = None, level: float = 0.95) -> NoiseModel:
    """The pooled replicate SD over all cells when any cell has replicates; else the assumed SD
    (`assumed_sd`, or DEFAULT_ASSUMED_SD)."""
    if assumed_sd is not None and not (np.isfinite(assumed_sd) and assumed_sd > 0):
        raise ValueError(f"assumed noise SD {assumed_sd!r} must be a positive number of nats/token, e.g. 0.005")
    floors = noise_floors(cell_table, level)
    sd, dof = _pooled(cell_table)
    if dof:
        return NoiseModel(sd=sd, dof=dof, source=f"{int((cell_table['n'] >= 2).sum())} replicated cells",
                          floors=floors)
    if assumed_sd is not None:
        return NoiseModel(sd=float(assumed_sd), dof=0, source="declared by the spec (noise.assumed_sd)", floors=floors)
    return NoiseModel(sd=DEFAULT_ASSUMED_SD, dof=0, source="the toolkit's default assumption", floors=floors)


def baseline_differences(cell_table: pd.DataFrame, noise: NoiseModel, *, baseline: pd.Series, label: str,
                         level: float = 0.95) -> pd.DataFrame:
    """Per budget, every other cell's mean loss minus the baseline cell's (`baseline`: a mask
    over `cell_table` picking one cell per budget), with its interval: t with the noise model's
    dof when the noise is measured, normal when it is assumed. Negative: better than the baseline."""
    q = stats.t.ppf((1 + level) / 2, noise.dof) if noise.measured else stats.norm.ppf((1 + level) / 2)
    rows = []
    for budget, group in cell_table.groupby("budget_flops", sort=True):
        base = group[baseline.loc[group.index]]
        if len(base) != 1:
            continue
        b = base.iloc[0]
        for _, cell in group[~baseline.loc[group.index]].iterrows():
            diff = float(cell["loss"] - b["loss"])
            half = float(q * noise.sd * np.sqrt(1 / cell["n"] + 1 / b["n"]))
            rows.append({"budget_flops": float(budget), "arch": cell.get("arch", ""), "mu_rec": cell.get("mu_rec"),
                         "n": int(cell["n"]), "baseline": label, "difference": diff, "low": diff - half,
                         "high": diff + half, "resolved": bool(diff + half < 0 or diff - half > 0)})
    return pd.DataFrame(rows)


def compare_cells(a: pd.DataFrame, b: pd.DataFrame, *, level: float = 0.95,
                  assumed_sd: float | None = None) -> tuple[pd.DataFrame, NoiseModel]:
    """The cells two run tables share (e.g. one sweep trained in fp32 and in bf16): b's mean loss
    minus a's per cell, with a t interval from the noise pooled over both tables' replicates.
    Returns the table and that noise model."""
    ca, cb = cells(a), cells(b)
    keys = [c for c in cell_columns(a) if c in cb.columns]
    noise = noise_model(pd.concat([ca, cb], ignore_index=True), assumed_sd=assumed_sd)
    both = ca.merge(cb, on=keys, suffixes=("_a", "_b"))
    if both.empty:
        raise ValueError(f"the two tables share no cell (matched on {keys}); compare sweeps of the same cells")
    q = stats.t.ppf((1 + level) / 2, noise.dof) if noise.measured else stats.norm.ppf((1 + level) / 2)
    half = q * noise.sd * np.sqrt(1 / both["n_a"] + 1 / both["n_b"])
    out = both[keys + ["n_a", "n_b", "loss_a", "loss_b"]].copy()
    out["difference"] = both["loss_b"] - both["loss_a"]
    out["low"], out["high"] = out["difference"] - half, out["difference"] + half
    out["resolved"] = (out["low"] > 0) | (out["high"] < 0)
    return out, noise
