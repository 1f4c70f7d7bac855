"""Input resolution for the `parcae-fit` commands (kept out of cli.py so it stays thin)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import pandas as pd

from parcae_scaling.scaling.data import load_csv
from parcae_scaling.scaling.frontier import FrontierResult
from parcae_scaling.scaling.isoflop import IsoFlopResult
from parcae_scaling.scaling.report.store_tables import load_store
from parcae_scaling.scaling.effective_params import ColumnParams, EffectiveParams, UnrolledParams
from parcae_scaling.scaling.report.analyses import (
    looped_runs, run_frontier, run_isoflop, run_parametric, run_test_time, select_model,
)
from parcae_scaling.scaling.results import DEFAULT_BOOTSTRAP, FitResult
from parcae_scaling.scaling.testtime import TestTimeResult

# The choices of the fit commands that are narrower than the library's registries (the CLI's --help
# lists them): the laws of scaling/laws.py `LAWS` that `parametric` fits to a run table (the others
# need test-time or x columns), and the effective-params modes of scaling/effective_params.py that
# options can build (numbers or columns for "unrolled", one column for "column"; "table" and
# "callable" take Python objects).
ParametricLaw = Literal["parcae", "chinchilla"]
EffectiveParamsMode = Literal["unrolled", "column"]


@dataclass(frozen=True, kw_only=True)
class FitInputs:
    """Where a fit command reads its table (a CSV, or a store and sweep), which model it fits when
    the table holds several, and where it writes its JSON and figures."""

    csv: Path | None
    store: str | None
    sweep: str | None
    out: Path
    model: str | None
    assumed_sd: float | None = None  # the noise to assume without replicates (None: the spec's, else the default)

    def read(self, kind: str = "runs") -> tuple[pd.DataFrame, str]:
        return read_input(self.csv, self.store, self.sweep, kind=kind, model=self.model)


def read_input(csv: Path | None, store: str | None, sweep: str | None, *, kind: str = "runs",
               model: str | None = None) -> tuple[pd.DataFrame, str]:
    """A run (or test-time) table from a CSV or the store, with one model selected."""
    if (csv is None) == (store is None):
        raise ValueError("give exactly one input: a CSV path, or --store URL with --sweep NAME")
    if store is not None:
        if not sweep:
            raise ValueError("--store needs --sweep NAME (the sweep to read)")
        df, source = load_store(store, sweep, kind=kind), f"store {store} sweep {sweep}"
    else:
        df, source = load_csv(csv), f"csv {csv}"
    if df.empty:
        fix = f"check with: parcae-sweep status {sweep} --store URL" if store else "add rows below the header"
        raise ValueError(f"{source} has no finished runs to fit; {fix}")
    return select_model(df, model), source


def effective_params(kind: EffectiveParamsMode, non_core: float | None, core: float | None,
                     column: str) -> EffectiveParams:
    if kind == "unrolled":
        return UnrolledParams(non_core=non_core, core=core)
    if kind == "column":
        return ColumnParams(column=column)
    raise ValueError(f"--effective-params {kind!r}: choose one of {get_args(EffectiveParamsMode)}")


@dataclass(frozen=True, kw_only=True)
class CsvReport:
    """What `parcae-fit report` fits from CSV files (JSON and figures are in the output folder)."""

    isoflop: IsoFlopResult
    fit: FitResult  # the Parcae law, with the held-out check written beside it
    frontier: FrontierResult
    test_time: TestTimeResult | None  # None without a test-time CSV


def csv_report(csv: Path | None, out_dir: Path, *, model: str | None = None, n_bootstrap: int = DEFAULT_BOOTSTRAP,
               effective_params: EffectiveParams | None = None, test_time_csv: Path | None = None,
               assumed_sd: float | None = None) -> CsvReport:
    """The report from CSVs: isoFLOP, the Parcae law and its compute-optimal frontier, and test-time
    fits when a test-time CSV is given. A CSV holds fit inputs only, so no plan, status or HTML."""
    df, source = read_input(csv, None, None, model=model)
    runs = looped_runs(df)
    iso = run_isoflop(runs, out_dir, n_bootstrap=n_bootstrap, source=source, assumed_sd=assumed_sd)
    fit, _ = run_parametric(runs, out_dir, n_bootstrap=n_bootstrap, source=source, effective_params=effective_params,
                            assumed_sd=assumed_sd)
    front = run_frontier(runs, fit, out_dir, effective_params=effective_params)
    test_time = None
    if test_time_csv is not None:
        tt, _ = read_input(test_time_csv, None, None, kind="test_time", model=model)
        test_time = run_test_time(tt, out_dir)
    return CsvReport(isoflop=iso, fit=fit, frontier=front, test_time=test_time)


__all__ = ["FitInputs", "read_input", "effective_params", "looped_runs", "csv_report", "CsvReport", "ParametricLaw",
           "EffectiveParamsMode"]
