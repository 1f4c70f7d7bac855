"""A sweep's results out of the store as CSV or Parquet files, for spreadsheets, other tools and
`parcae-fit` (which reads the runs file back as its input table).

Files, named after `path` (e.g. runs.csv):
- runs.csv: one row per run: identity and size columns, state, the last training loss, `loss`
  (the validation loss at T = mu_rec: the fit input; empty until the run has evaluated) and
  what produced it (`provenance_*`: package version, torch, device, precision, host...);
- runs.evals.csv: every recorded eval, one row per (run, split, recurrence T): the per-depth
  (test-time) curves;
- runs.metrics.csv (with metrics=True): the training metric histories, long format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from sqlalchemy import select

from parcae_scaling.db.schema import Eval, Run
from parcae_scaling.db.store import Store

WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    ".csv": lambda df, path: df.to_csv(path, index=False),
    ".parquet": lambda df, path: df.to_parquet(path, index=False),
}
PROVENANCE_PREFIX = "provenance_"


@dataclass(frozen=True)
class ExportReport:
    """What `export_sweep` wrote: file -> rows."""

    files: dict[Path, int]

    def summary(self) -> str:
        return "\n".join(f"{path}: {rows:,} rows" for path, rows in self.files.items())


def export_paths(path: Path, *, metrics: bool) -> dict[str, Path]:
    """The files an export to `path` writes (runs, evals, and metrics if asked), by table."""
    if path.suffix not in WRITERS:
        raise ValueError(f"--to {path}: write a .csv or .parquet file (e.g. --to runs.csv)")
    stem = path.with_suffix("")
    out = {"runs": path, "evals": stem.with_name(f"{stem.name}.evals{path.suffix}")}
    if metrics:
        out["metrics"] = stem.with_name(f"{stem.name}.metrics{path.suffix}")
    return out


def runs_frame(store: Store, sweep: str) -> pd.DataFrame:
    """One row per run of the sweep: the store's run columns, final losses and flattened provenance."""
    runs = store.runs(sweep)
    finals = store.final_losses(sweep)[["run_id", "final_step", "train_loss", "eval_loss"]]
    out = runs.merge(finals.rename(columns={"eval_loss": "loss"}), on="run_id", how="left")
    with store.engine.connect() as conn:
        provenance = dict(conn.execute(select(Run.id, Run.provenance).where(Run.sweep == sweep)).all())
    flat = pd.DataFrame([{PROVENANCE_PREFIX + k: _cell(v) for k, v in (provenance.get(r) or {}).items()}
                         for r in out["run_id"]], index=out.index)
    return pd.concat([out, flat], axis=1)


def evals_frame(store: Store, sweep: str) -> pd.DataFrame:
    """Every eval row of the sweep's runs (all splits and recurrences), with the run's budget and mu_rec."""
    stmt = (select(Eval.run_id, Run.model_size.label("model"), Run.budget_flops, Run.mu_rec, Run.status,
                   Eval.split, Eval.recurrence, Eval.loss)
            .join(Run, Run.id == Eval.run_id).where(Run.sweep == sweep)
            .order_by(Run.model_size, Run.budget_flops, Run.mu_rec, Eval.run_id, Eval.split, Eval.recurrence))
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return pd.DataFrame(rows, columns=["run_id", "model", "budget_flops", "mu_rec", "status", "split", "recurrence",
                                       "loss"])


def export_sweep(store: Store, sweep: str, path: Path, *, metrics: bool = False,
                 overwrite: bool = False) -> ExportReport:
    """Write the sweep's runs, evals (and metric histories) next to `path`; refuses to replace
    existing files unless `overwrite`."""
    store.require_sweep(sweep)
    paths = export_paths(path, metrics=metrics)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); choose another --to, or --force to replace")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it or choose another --to")
    tables = {"runs": lambda: runs_frame(store, sweep), "evals": lambda: evals_frame(store, sweep),
              "metrics": lambda: store.metric_history(sweep=sweep)}
    written: dict[Path, int] = {}
    for name, target in paths.items():
        frame = tables[name]()
        tmp = target.with_name(target.name + ".tmp")  # a reader never sees half a file
        WRITERS[path.suffix](frame, tmp)
        tmp.replace(target)
        written[target] = len(frame)
    return ExportReport(written)


def _cell(value: Any) -> Any:
    """Provenance values as table cells: nested records as compact text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value
