"""End-to-end analyses that write JSON and figures to a folder (what `parcae-fit` calls)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from parcae_scaling.scaling.effective_params import EffectiveParams
from parcae_scaling.scaling.report.figures import (
    frontier_figure, isoflop_figure, optima_figure, residuals_figure, test_time_figure,
)
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.frontier import FrontierResult, flops_per_token_from_runs, frontier, holdout_largest_budget
from parcae_scaling.scaling.isoflop import Estimator, IsoFlopResult, isoflop
from parcae_scaling.scaling.laws import get_law
from parcae_scaling.scaling.replicates import NoiseModel, baseline_differences, cells, noise_model
from parcae_scaling.scaling.results import DEFAULT_BOOTSTRAP, FitResult
from parcae_scaling.scaling.testtime import TestTimeResult, fit_test_time


def select_model(df: pd.DataFrame, model: str | None) -> pd.DataFrame:
    """Keep one model size: fits across sizes would mix different N(mu)."""
    if "model" not in df.columns:
        if model is not None:  # a silently ignored filter would fit rows the user did not ask for
            raise ValueError(f"model {model!r} was asked for, but the table has no 'model' column (it holds "
                             "one model); drop --model, or add a 'model' column")
        return df
    models = sorted(map(str, df["model"].dropna().unique()))
    if model is None:
        if len(models) > 1:
            raise ValueError(f"the table holds several models {models}; choose one with model=... (--model)")
        return df
    if model not in models:
        raise ValueError(f"model {model!r} not in the table; choose one of {models}")
    return df[df["model"].astype(str) == model]


def looped_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are looped runs of the Parcae model (transformer baselines have arch column)."""
    if "arch" in df.columns:
        return df[df["arch"].astype(str) != "transformer"]
    return df


def run_isoflop(df: pd.DataFrame, out_dir: Path, *, x: str = "mu_rec", n_bootstrap: int = DEFAULT_BOOTSTRAP,
                source: str = "", assumed_sd: float | None = None, estimator: Estimator = "parabola") -> IsoFlopResult:
    res = isoflop(df, x=x, n_bootstrap=n_bootstrap, source=source, assumed_sd=assumed_sd, estimator=estimator)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "isoflop.json").write_text(res.to_json())
    isoflop_figure(res, df, out_dir)
    optima_figure(res, out_dir)
    return res


def run_parametric(df: pd.DataFrame, out_dir: Path, *, law_name: str = "parcae",
                   effective_params: EffectiveParams | None = None, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                   holdout: bool = True, source: str = "", assumed_sd: float | None = None) -> tuple[FitResult, dict]:
    """The law fitted with its bootstrap drawn from the replicate noise (measured, or assumed)."""
    options = {} if law_name in ("chinchilla",) else {"effective_params": effective_params}
    law = get_law(law_name, **options)
    noise = _noise(df, assumed_sd)
    fit = fit_law(law, df, n_bootstrap=n_bootstrap, source=source, key=("run_id",), noise=noise)
    extra: dict = {"noise": noise.describe()}
    if holdout and "budget_flops" in df.columns and df["budget_flops"].nunique() >= 3:
        try:
            ho = holdout_largest_budget(law, df, noise=noise, n_bootstrap=n_bootstrap)
        except ValueError as err:  # the smaller budgets alone may not determine the law: say so
            extra["holdout"] = {"summary": f"held-out check skipped: {err}"}
        else:
            extra["holdout"] = {k: v for k, v in asdict(ho).items() if k != "fit"}
            extra["holdout"]["summary"] = ho.summary()
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = json.loads(fit.to_json())
    payload.pop("bootstrap_params")  # kept in fit_<law>_bootstrap.json: large
    (out_dir / f"fit_{law_name}.json").write_text(json.dumps({"fit": payload, **extra}, indent=2))
    (out_dir / f"fit_{law_name}_full.json").write_text(fit.to_json(indent=None))
    residuals_figure(fit, law, fit_input(df, law), out_dir)
    return fit, extra


def _noise(df: pd.DataFrame, assumed_sd: float | None) -> NoiseModel:
    valid = df[df["loss"].notna()]
    return noise_model(cells(valid), assumed_sd=assumed_sd)


@dataclass(frozen=True, kw_only=True)
class NoiseReport:
    """A sweep's replicate structure: cell means, noise floors and differences from the baselines."""

    noise: NoiseModel
    cells: pd.DataFrame
    floors: pd.DataFrame
    differences: dict[str, pd.DataFrame]  # baseline name -> per-cell differences with intervals

    def summary(self) -> str:
        lines = [self.noise.describe()]
        for name, d in self.differences.items():
            for r in d.itertuples():
                verdict = "resolved" if r.resolved else "not resolved at this noise"
                lines.append(f"  C={r.budget_flops:.3g} {r.arch} mu_rec={r.mu_rec:g} minus {name}: "
                             f"{r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}] ({verdict})")
        return "\n".join(lines)


def run_noise(df: pd.DataFrame, out_dir: Path, *, assumed_sd: float | None = None) -> NoiseReport:
    """Cells, noise floors and each cell's difference from the fixed-depth baselines (the Transformer,
    and mu_rec = 1 of the looped model) per budget."""
    table = cells(df[df["loss"].notna()])
    noise = noise_model(table, assumed_sd=assumed_sd)
    arch = table["arch"].astype(str) if "arch" in table.columns else pd.Series("parcae", index=table.index)
    diffs = {}
    baselines = {"transformer": arch == "transformer",
                 "mu_rec=1": (arch != "transformer") & (table.get("mu_rec", pd.Series(0, index=table.index)) == 1)}
    for name, mask in baselines.items():
        if mask.any():
            d = baseline_differences(table[(arch != "transformer") | mask], noise, baseline=mask, label=name)
            if len(d):
                diffs[name] = d
    floors = pd.DataFrame([{"arch": f.arch, "budget_flops": f.budget_flops, "sd": f.sd, "dof": f.dof,
                            "cells": f.n_cells, "low": f.interval.low if f.interval else float("nan"),
                            "high": f.interval.high if f.interval else float("nan")} for f in noise.floors])
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "cells.csv", index=False)
    return NoiseReport(noise=noise, cells=table, floors=floors, differences=diffs)


def fit_input(df: pd.DataFrame, law) -> pd.DataFrame:
    return df[df["loss"].notna()].reset_index(drop=True)


def run_test_time(df: pd.DataFrame, out_dir: Path) -> TestTimeResult:
    res = fit_test_time(df)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "test_time.json").write_text(res.to_json())
    test_time_figure(res, out_dir)
    return res


def run_frontier(df: pd.DataFrame, fit: FitResult, out_dir: Path, *,
                 effective_params: EffectiveParams | None = None, extrapolate: float = 16.0) -> FrontierResult:
    law = get_law(fit.law, effective_params=effective_params)
    fpt = flops_per_token_from_runs(df)
    c = df["budget_flops"].to_numpy(float)
    budgets = np.geomspace(c.min() / 2, c.max() * extrapolate, 25)
    reference = {col: float(df[col].iloc[0]) for col in law.columns if col not in ("mu_rec", "tokens")}
    front = frontier(fit, law, fpt, budgets, reference=reference, sampled_budgets=(c.min(), c.max()))
    sampled = frontier(fit, law, fpt, np.unique(c), reference=reference)  # exponents over the sampled budgets only
    front = replace(front, exponents=sampled.exponents, exponent_intervals=sampled.exponent_intervals)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "frontier.json").write_text(front.to_json())
    frontier_figure(front, out_dir, fit)
    return front
