"""Input resolution for the `parcae-fit` commands (kept out of cli.py so it stays thin)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from parcae_scaling.scaling.data import load_csv
from parcae_scaling.scaling.report.store_tables import load_store
from parcae_scaling.scaling.effective_params import ColumnParams, EffectiveParams, UnrolledParams
from parcae_scaling.scaling.report.analyses import looped_runs, select_model


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


def effective_params(kind: str, non_core: float | None, core: float | None, column: str) -> EffectiveParams:
    if kind == "unrolled":
        return UnrolledParams(non_core=non_core, core=core)
    if kind == "column":
        return ColumnParams(column=column)
    raise ValueError(f"--effective-params {kind!r}: choose 'unrolled' or 'column'")


__all__ = ["read_input", "effective_params", "looped_runs"]
