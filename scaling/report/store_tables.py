"""A sweep in the store as the fit library's tables (scaling/data.py RUN_COLUMNS and the
test-time curves), and fits back into the store: the one place where store rows become
DataFrames to fit and fits become store rows."""

from __future__ import annotations

import pandas as pd

from parcae_scaling.db import Store
from parcae_scaling.scaling.results import FitResult


def require_sweeps(store: Store, names: tuple[str, ...], url: str) -> None:
    """Refuse sweep names the store has no runs of, listing the recorded ones."""
    known = set(store.runs()["sweep"])
    missing = [s for s in names if s not in known]
    if missing:
        raise ValueError(f"sweep(s) {missing} have no runs in {url}; recorded sweeps: {sorted(known)} "
                         "(check --sweep)")


def load_store(url: str, sweep: str, *, kind: str = "runs") -> pd.DataFrame:
    """Read a sweep from the SQL store: kind 'runs' (loss at T = mu_rec) or 'test_time'."""
    if kind not in ("runs", "test_time"):
        raise ValueError(f"kind={kind!r}: choose 'runs' or 'test_time'")
    with Store.open(url, upgrade=False) as store:
        require_sweeps(store, (sweep,), url)
        if kind == "runs":
            return with_diverged(store.isoflop_table(sweep), store.runs(sweep, status="diverged"))
        return store.test_time_curves(sweep)


def with_diverged(table: pd.DataFrame, diverged: pd.DataFrame) -> pd.DataFrame:
    """The fit table plus one row per diverged run with loss NaN (scaling/data.py: NaN marks a
    diverged run). Every fit leaves them out with a notice; the isoFLOP figure marks them."""
    if diverged.empty:
        return table
    rows = diverged[[c for c in table.columns if c in diverged.columns]].assign(loss=float("nan"))
    return pd.concat([table, rows], ignore_index=True)[table.columns]


def save_fit(url: str, sweep: str, fit: FitResult, *, model: str | None = None) -> int:
    """Store a fit of a sweep's runs (its JSON, parameters and intervals; `Store.fits()` lists
    them, `Store.load_fit(id)` and `FitResult.from_dict` read one back); returns its fit id."""
    with Store.open(url, upgrade=False) as store:
        return store.save_fit(fit, kind=fit.law, selection={"sweep": sweep, "model": model}, sweep=sweep)
