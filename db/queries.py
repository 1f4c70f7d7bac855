"""DataFrame queries over the store: the tables the fits, figures and status views read.

Every query returns the same columns and dtypes whether or not rows match, so callers can
rely on `df["loss"].dtype == float64` even for an empty sweep.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pandas as pd
from sqlalchemy import Connection, Engine, Select, and_, func, select, table as sql_table

from parcae_scaling.db.errors import UnknownRunError, UnknownSweepError
from parcae_scaling.db.schema import Eval, Fit, Metric, Run, Sweep
from parcae_scaling.model.contracts import RunStatus

# Column name -> pandas dtype, per query. Every frame speaks the fit tables' vocabulary
# (scaling/data.py: arch, model, params, core_params, non_core_params); the SQL columns keep their
# recorded names (db/schema.py) and are mapped onto it here, once (_SIZE_SELECT).
_SIZE_COLUMNS: dict[str, str] = {
    "arch": "object", "model": "object", "params": "int64", "params_non_embedding": "int64",
    "core_params": "Int64", "non_core_params": "float64",
}
_RUN_COLUMNS: dict[str, str] = {
    "run_id": "object", "sweep": "object", **_SIZE_COLUMNS, "mu_rec": "int64", "mu_bwd": "int64",
    "budget_flops": "float64", "flop_convention": "object", "flops_per_token": "float64",
    "tokens": "int64", "status": "object",
}
RUNS_COLUMNS: dict[str, str] = {
    **_RUN_COLUMNS, "status_step": "Int64", "backend": "object", "job_id": "object",
    "attempt": "int64", "heartbeat": "datetime64[ns, UTC]", "started": "datetime64[ns, UTC]",
    "ended": "datetime64[ns, UTC]", "failure_kind": "object", "failure_message": "object",
    "output_dir": "object", "legacy_id": "object",
}
FINAL_LOSS_COLUMNS: dict[str, str] = {
    **_RUN_COLUMNS, "final_step": "Int64", "train_loss": "float64", "eval_loss": "float64",
}
ISOFLOP_COLUMNS: dict[str, str] = {
    "run_id": "object", **_SIZE_COLUMNS, "budget_flops": "float64", "mu_rec": "int64", "mu_bwd": "int64",
    "tokens": "int64", "flops_per_token": "float64", "flop_convention": "object", "loss": "float64",
}
TEST_TIME_COLUMNS: dict[str, str] = {
    "run_id": "object", **_SIZE_COLUMNS, "mu_rec": "int64", "mu_bwd": "int64", "budget_flops": "float64",
    "tokens": "int64", "flop_convention": "object", "recurrence": "int64", "loss": "float64",
}
HISTORY_COLUMNS: dict[str, str] = {"run_id": "object", "step": "int64", "name": "object", "value": "float64"}
FITS_COLUMNS: dict[str, str] = {
    "fit_id": "int64", "kind": "object", "sweep": "object", "convention": "object",
    "created": "datetime64[ns, UTC]", "selection": "object", "parameters": "object",
    "uncertainties": "object",
}

_SIZE_SELECT = [
    Run.model_family.label("arch"), Run.model_size.label("model"), Run.params_total.label("params"),
    Run.params_non_embedding, Run.params_core.label("core_params"),
    (Run.params_non_embedding - Run.params_core).label("non_core_params"),
]
_RUN_SELECT = [
    Run.id.label("run_id"), Run.sweep, *_SIZE_SELECT, Run.mu_rec, Run.mu_bwd, Run.budget_flops,
    Run.flop_convention, Run.flops_per_token, Run.tokens, Run.status,
]


def frame(rows: Iterable[Any], columns: Mapping[str, str]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly `columns` and their dtypes (also when empty)."""
    df = pd.DataFrame.from_records(list(rows), columns=list(columns))
    out = {}
    for name, dtype in columns.items():
        col = df[name]
        if dtype.startswith("datetime64"):
            out[name] = pd.to_datetime(col, utc=True).astype(dtype)
        elif dtype == "float64":
            out[name] = pd.to_numeric(col, errors="raise").astype("float64")  # None -> NaN
        else:
            out[name] = col.astype(dtype)
    return pd.DataFrame(out, columns=list(columns))


class StoreQueries:
    """Read side of `Store` (mixed in); uses deferred read transactions that never block writers."""

    engine: Engine

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(parcae_readonly=True)

    def _frame(self, stmt: Select[Any], columns: Mapping[str, str]) -> pd.DataFrame:
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return frame(rows, columns)

    def runs(self, sweep: str | None = None, *, status: RunStatus | str | None = None) -> pd.DataFrame:
        """One row per run (the status view), ordered by sweep, size, budget, mu_rec."""
        cols = [*_RUN_SELECT, Run.status_step, Run.backend, Run.job_id, Run.attempt,
                Run.heartbeat, Run.started, Run.ended, Run.failure_kind, Run.failure_message,
                Run.output_dir, Run.legacy_id]
        stmt = select(*cols).order_by(Run.sweep, Run.model_size, Run.budget_flops, Run.mu_rec, Run.id)
        if sweep is not None:
            stmt = stmt.where(Run.sweep == sweep)
        if status is not None:
            stmt = stmt.where(Run.status == RunStatus(status).value)
        return self._frame(stmt, RUNS_COLUMNS)

    def sweep_names(self) -> list[str]:
        """Names of the recorded sweeps, sorted."""
        with self._read() as conn:
            return list(conn.execute(select(Sweep.name).order_by(Sweep.name)).scalars())

    def require_sweep(self, sweep: str) -> None:
        """Refuse a sweep name this store has not recorded, listing the ones it has."""
        names = self.sweep_names()
        if sweep not in names:
            where = self.engine.url.render_as_string(hide_password=True)
            raise UnknownSweepError(f"sweep {sweep!r} is not recorded in {where}; recorded sweeps: "
                                    f"{', '.join(names) if names else 'none (launch records one)'}")

    def run_provenance(self, run_id: str) -> dict[str, Any] | None:
        """What the run's latest (re)start ran on (model/train/provenance.py); None before it started."""
        with self._read() as conn:
            row = conn.execute(select(Run.provenance).where(Run.id == run_id)).first()
        if row is None:
            raise KeyError(f"run {run_id!r} is not recorded; list runs with Store.runs(sweep)")
        return row[0]

    def code_versions(self, sweep: str | None = None) -> dict[str, str | None]:
        """run id -> the package version of its latest (re)start (provenance); None before it started."""
        stmt = select(Run.id, Run.provenance["package_version"].as_string())
        if sweep is not None:
            stmt = stmt.where(Run.sweep == sweep)
        with self._read() as conn:
            return {rid: version for rid, version in conn.execute(stmt)}

    def resolve_run_id(self, run_id: str) -> str:
        """The recorded id of a run named by its id or by its legacy id (the id it had while ids
        hashed the package version, before schema revision 0004); UnknownRunError if neither."""
        with self._read() as conn:
            for column in (Run.id, Run.legacy_id):
                found = conn.execute(select(Run.id).where(column == run_id)).scalars().first()
                if found is not None:
                    return found
        where = self.engine.url.render_as_string(hide_password=True)
        raise UnknownRunError(f"run {run_id!r} is not recorded in {where}; `parcae-sweep status SWEEP` lists its runs")

    def run_spec(self, run_id: str) -> dict[str, Any]:
        """The full resolved spec a run was recorded with."""
        with self._read() as conn:
            spec = conn.execute(select(Run.spec).where(Run.id == run_id)).scalar_one_or_none()
        if spec is None:
            raise KeyError(f"run {run_id!r} is not recorded; list runs with Store.runs(sweep)")
        return spec

    def final_losses(self, sweep: str, *, split: str = "val", train_metric: str = "loss") -> pd.DataFrame:
        """Per run: the last logged training loss (and its step) and the eval loss at T = mu_rec.

        Every run of the sweep appears; missing values are NaN (e.g. a failed run has no eval)."""
        last_step = (
            select(Metric.step).where(Metric.run_id == Run.id, Metric.name == train_metric)
            .order_by(Metric.step.desc()).limit(1).scalar_subquery()
        )
        last_value = (
            select(Metric.value).where(Metric.run_id == Run.id, Metric.name == train_metric)
            .order_by(Metric.step.desc()).limit(1).scalar_subquery()
        )
        stmt = (
            select(*_RUN_SELECT, last_step.label("final_step"), last_value.label("train_loss"),
                   Eval.loss.label("eval_loss"))
            .outerjoin(Eval, and_(Eval.run_id == Run.id, Eval.recurrence == Run.mu_rec, Eval.split == split))
            .where(Run.sweep == sweep)
            .order_by(Run.model_size, Run.budget_flops, Run.mu_rec, Run.id)
        )
        return self._frame(stmt, FINAL_LOSS_COLUMNS)

    def isoflop_table(self, sweep: str, *, split: str = "val", model: str | None = None) -> pd.DataFrame:
        """Succeeded runs with their eval loss at T = mu_rec: the input of isoFLOP and
        parametric fits (scaling/data.py's columns). Runs without that eval are left out."""
        stmt = (
            select(Run.id.label("run_id"), *_SIZE_SELECT, Run.budget_flops, Run.mu_rec, Run.mu_bwd, Run.tokens,
                   Run.flops_per_token, Run.flop_convention, Eval.loss)
            .join(Eval, and_(Eval.run_id == Run.id, Eval.recurrence == Run.mu_rec, Eval.split == split))
            .where(Run.sweep == sweep, Run.status == RunStatus.SUCCEEDED.value)
            .order_by(Run.model_size, Run.budget_flops, Run.mu_rec, Run.id)
        )
        if model is not None:
            stmt = stmt.where(Run.model_size == model)
        return self._frame(stmt, ISOFLOP_COLUMNS)

    def test_time_curves(self, sweep: str, *, split: str = "val", model: str | None = None) -> pd.DataFrame:
        """Eval loss at every recurrence T of every succeeded run (long format, sorted by run, T),
        with the run's size columns so the unified law can compute N(mu_rec) and D."""
        stmt = (
            select(Run.id.label("run_id"), *_SIZE_SELECT, Run.mu_rec, Run.mu_bwd, Run.budget_flops, Run.tokens,
                   Run.flop_convention, Eval.recurrence, Eval.loss)
            .join(Eval, Eval.run_id == Run.id)
            .where(Run.sweep == sweep, Run.status == RunStatus.SUCCEEDED.value, Eval.split == split)
            .order_by(Run.model_size, Run.budget_flops, Run.mu_rec, Run.id, Eval.recurrence)
        )
        if model is not None:
            stmt = stmt.where(Run.model_size == model)
        return self._frame(stmt, TEST_TIME_COLUMNS)

    def metric_history(
        self, *, run_ids: Iterable[str] | None = None, sweep: str | None = None,
        names: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Metric rows (run_id, step, name, value) of some runs or a whole sweep, long format."""
        if run_ids is None and sweep is None:
            raise ValueError("metric_history needs run_ids=[...] or sweep=...; reading every run is rarely meant")
        stmt = select(Metric.run_id, Metric.step, Metric.name, Metric.value)
        if run_ids is not None:
            stmt = stmt.where(Metric.run_id.in_(list(run_ids)))
        if sweep is not None:
            stmt = stmt.join(Run, Run.id == Metric.run_id).where(Run.sweep == sweep)
        if names is not None:
            stmt = stmt.where(Metric.name.in_(list(names)))
        return self._frame(stmt.order_by(Metric.run_id, Metric.name, Metric.step), HISTORY_COLUMNS)

    def fits(self, *, kind: str | None = None, sweep: str | None = None) -> pd.DataFrame:
        """Stored fits, newest first; load the full payload with `load_fit(fit_id)`."""
        stmt = select(Fit.id.label("fit_id"), Fit.kind, Fit.sweep, Fit.convention, Fit.created,
                      Fit.selection, Fit.parameters, Fit.uncertainties).order_by(Fit.created.desc(), Fit.id.desc())
        if kind is not None:
            stmt = stmt.where(Fit.kind == kind)
        if sweep is not None:
            stmt = stmt.where(Fit.sweep == sweep)
        return self._frame(stmt, FITS_COLUMNS)

    def count_rows(self, table: str) -> int:
        """Row count of one store table (for checks and the status view)."""
        tables = {"sweeps", "runs", "metrics", "evals", "fits"}
        if table not in tables:
            raise ValueError(f"unknown table {table!r}; choose one of {sorted(tables)}")
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(sql_table(table))).scalar_one())

