"""Input resolution for the `parcae-fit` commands (kept out of cli.py so it stays thin)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd

from parcae_scaling.db import NoStoreError, Store, default_url
from parcae_scaling.scaling.data import RUN_COLUMNS, TEST_TIME_COLUMNS, adapt_external, load_csv, parse_column_map
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
    columns: str | None = None  # a CSV's column mapping, `params=N,tokens=D` (scaling/data.py parse_column_map)

    def read(self, kind: str = "runs") -> tuple[pd.DataFrame, str]:
        sweep = self.one_sweep() if self.store is not None else None
        return read_input(self.csv, self.store, sweep, kind=kind, model=self.model, columns=self.columns)

    save_to: str | None = None  # the store the fits are saved in (the one read; for a CSV the default one)

    @classmethod
    def resolve(cls, *, csv: Path | None, store: str | None, sweep: str | None, out: Path,
                model: str | None, assumed_sd: float | None = None, columns: str | None = None) -> "FitInputs":
        """A CSV, else the store (--store, $PARCAE_STORE, else the default file) and its sweep
        (--sweep, else the store's only sweep). Fits are saved in that store; a CSV's in the
        store --store names (or the default one), when it exists."""
        if csv is not None:
            parse_column_map(columns)  # a malformed mapping fails before any work
            return cls(csv=csv, store=None, sweep=sweep, out=out, model=model, assumed_sd=assumed_sd,
                       columns=columns, save_to=store or default_url())
        if columns:
            raise ValueError("--columns maps a CSV's columns; a store's tables already have the toolkit's names")
        url = store or default_url()
        return cls(csv=None, store=url, sweep=sweep, out=out, model=model, assumed_sd=assumed_sd, save_to=url)

    def save(self, result: Any, *, kind: str, table: pd.DataFrame) -> str:
        """Save a fit in the store's fits table (`parcae-fit list` shows it); one line saying where.
        A CSV's fit with no store to save in is not an error: its JSON is in the output folder."""
        convention = ",".join(sorted(set(map(str, table["flop_convention"].dropna())))) \
            if "flop_convention" in table.columns else ""
        selection = {"sweep": self.sweeps()[0] if self.store else None, "csv": str(self.csv) if self.csv else None,
                     "model": self.model, "n_rows": int(len(table))}
        payload = json.loads(result.to_json())
        payload.pop("bootstrap_params", None)  # large; kept in the output folder's JSON
        try:
            with Store.open(self.save_to, create=False) as store:
                fit_id = store.save_fit(payload, kind=kind, selection=selection, convention=convention or "unknown",
                                        sweep=selection["sweep"])
        except NoStoreError:
            return f"fit not stored: no store at {self.save_to} (its JSON is in {self.out})"
        return f"stored as fit {fit_id} in {self.save_to} (parcae-fit list)"

    def sweeps(self) -> list[str]:
        """The sweeps named by --sweep (comma-separated), else every sweep of the store."""
        if self.sweep:
            return [s.strip() for s in self.sweep.split(",") if s.strip()]
        return stored_sweeps(self.store)

    def one_sweep(self) -> str:
        """The sweep named by --sweep, else the store's only one (with several: an error listing them)."""
        names = self.sweeps()
        if len(names) != 1:
            raise ValueError(f"{self.store} holds {len(names)} sweeps {names}; choose one with --sweep NAME")
        return names[0]


def stored_sweeps(url: str | None) -> list[str]:
    """The sweeps with runs in a store; none is an error (nothing to fit)."""
    with Store.open(url, upgrade=False, create=False) as store:
        names = sorted(set(store.runs()["sweep"]))
    if not names:
        raise ValueError(f"{url} holds no runs yet; launch a sweep first (parcae-sweep launch)")
    return names


def read_input(csv: Path | None, store: str | None, sweep: str | None, *, kind: str = "runs",
               model: str | None = None, columns: str | None = None) -> tuple[pd.DataFrame, str]:
    """A run (or test-time) table from a CSV or the store, with one model selected."""
    if (csv is None) == (store is None):
        raise ValueError("give exactly one input: a CSV path, or --store URL with --sweep NAME")
    if store is not None:
        if not sweep:
            raise ValueError("--store needs --sweep NAME (the sweep to read)")
        df, source = load_store(store, sweep, kind=kind), f"store {store} sweep {sweep}"
    else:
        df, notes = adapt_external(load_csv(csv), parse_column_map(columns))
        source = f"csv {csv}" + (f" ({'; '.join(notes)})" if notes else "")
        required = RUN_COLUMNS if kind == "runs" else TEST_TIME_COLUMNS
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise ValueError(f"{csv} has no column(s) {missing} (it has {list(df.columns)}); name the file's columns "
                             "with --columns, e.g. --columns params=N,tokens=D,loss=L")
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
    stored: tuple[str, ...] = ()  # where each fit was saved (FitInputs.save)


def csv_report(inputs: FitInputs, *, n_bootstrap: int = DEFAULT_BOOTSTRAP,
               effective_params: EffectiveParams | None = None, test_time_csv: Path | None = None) -> CsvReport:
    """The report from CSVs: isoFLOP, the Parcae law and its compute-optimal frontier, and test-time
    fits when a test-time CSV is given. A CSV holds fit inputs only, so no plan, status or HTML.
    Each fit is also saved in the store (FitInputs.save); `stored` says where."""
    out_dir = inputs.out
    df, source = inputs.read()
    runs = looped_runs(df)
    iso = run_isoflop(runs, out_dir, n_bootstrap=n_bootstrap, source=source, assumed_sd=inputs.assumed_sd)
    fit, _ = run_parametric(runs, out_dir, n_bootstrap=n_bootstrap, source=source, effective_params=effective_params,
                            assumed_sd=inputs.assumed_sd)
    front = run_frontier(runs, fit, out_dir, effective_params=effective_params)
    stored = [inputs.save(iso, kind="isoflop", table=df), inputs.save(fit, kind=fit.law, table=df),
              inputs.save(front, kind="frontier", table=df)]
    test_time = None
    if test_time_csv is not None:
        tt, _ = read_input(test_time_csv, None, None, kind="test_time", model=inputs.model)
        test_time = run_test_time(tt, out_dir)
        stored.append(inputs.save(test_time, kind="test_time", table=tt))
    return CsvReport(isoflop=iso, fit=fit, frontier=front, test_time=test_time, stored=tuple(stored))


__all__ = ["FitInputs", "read_input", "effective_params", "looped_runs", "csv_report", "CsvReport", "ParametricLaw",
           "EffectiveParamsMode"]
