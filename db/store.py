"""The experiment store: open a URL, record sweeps/runs/metrics/evals/fits, ingest run dirs.

Every write is one short transaction; batches of metric rows use executemany with
INSERT ... ON CONFLICT DO NOTHING, so replaying a batch is a no-op and a killed writer leaves
each batch either committed or absent. DataFrame queries live in db/queries.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import BigInteger, Connection, Engine, Float, String, bindparam, exc, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL

from parcae_scaling.db.engine import display_url, is_sqlite_file, make_engine, normalise_url
from parcae_scaling.db.errors import StoreError, Superseded, UnknownRunError
from parcae_scaling.db.files import RUN_DIR_FILES, read_run_dir
from parcae_scaling.db.migrate import ensure_schema
from parcae_scaling.db.fits import StoreFits
from parcae_scaling.db.queries import StoreQueries
from parcae_scaling.db.records import IngestReport, RunRecord, check_json
from parcae_scaling.db.schema import Eval, Metric, Run, Sweep, utcnow
from parcae_scaling.model.contracts import EvalRow, RunStatus

MetricRow = tuple[str, int, str, float]  # (run_id, step, name, value)
# Rows per executemany inside one transaction: large enough to amortise the commit, small
# enough that other writers wait only milliseconds for the lock.
WRITE_CHUNK_ROWS = 20_000
_METRIC_COLUMNS = ("run_id", "name", "step", "value")
_DbMetric = tuple[str, str, int, float]  # in _METRIC_COLUMNS order
_FAILURE_STATUSES = {RunStatus.FAILED, RunStatus.DIVERGED, RunStatus.PREEMPTED, RunStatus.CANCELLED}


def _insert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@functools.cache
def _sqlite_metric_insert_sql() -> str:
    stmt = sqlite.insert(Metric).values({c: bindparam(c) for c in _METRIC_COLUMNS}).on_conflict_do_nothing()
    compiled = stmt.compile(dialect=sqlite.dialect())
    if list(compiled.positiontup or []) != list(_METRIC_COLUMNS):
        raise RuntimeError(f"unexpected parameter order {compiled.positiontup} in {compiled}")
    return str(compiled)


@functools.cache
def _pg_metric_insert() -> Any:
    types = (String, String, BigInteger, Float)
    rows = func.unnest(
        *(bindparam(c, type_=postgresql.ARRAY(t)) for c, t in zip(_METRIC_COLUMNS, types))
    ).table_valued(*_METRIC_COLUMNS).render_derived()
    return (
        postgresql.insert(Metric)
        .from_select(list(_METRIC_COLUMNS), select(*(rows.c[c] for c in _METRIC_COLUMNS)))
        .on_conflict_do_nothing()
    )


def backup_sqlite(path: Path, revision: str) -> Path:
    """A consistent copy of an SQLite store (the backup API: WAL contents included) beside it,
    named after its schema revision; returns the copy's path."""
    target = path.with_name(f"{path.name}.{revision}.bak")
    if target.exists():  # an earlier backup of this revision: keep it, add a dated one
        target = path.with_name(f"{path.name}.{revision}.{datetime.now():%Y%m%d-%H%M%S}.bak")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return target


class Store(StoreQueries, StoreFits):
    """One experiment database. Create with `Store.open(url)`; close when done."""

    def __init__(self, engine: Engine, url: URL, *, backup: Path | None = None) -> None:
        self.engine = engine
        self.url = url
        self.backup = backup  # where open() copied an SQLite store before migrating it, if it did

    @classmethod
    def open(cls, url: str | URL | None = None, *, upgrade: bool = True, create: bool = True) -> Store:
        """Open (creating or migrating if needed) the store at `url`.

        `url`: `sqlite:///path.sqlite` (default `sqlite:///parcae.sqlite`, a bare path also works)
        or `postgresql://user@host/dbname`. `create=False` refuses a place that holds no store
        (`NoStoreError`) instead of creating one there. `upgrade=False` is for readers: it never
        changes the database, so it refuses both a missing store and an older schema. Migrating an
        SQLite file first copies it to `<file>.<revision>.bak` (`Store.backup`). Foreign or newer
        databases are always refused with `SchemaError`. Driver failures arrive as `StoreError`.
        """
        parsed = normalise_url(url)
        engine = make_engine(parsed, create=create and upgrade)
        backups: list[Path] = []

        def before_upgrade(revision: str) -> None:
            if is_sqlite_file(parsed):
                backups.append(backup_sqlite(Path(parsed.database or "").expanduser(), revision))

        try:
            ensure_schema(engine, where=display_url(parsed), upgrade=upgrade, create=create,
                          before_upgrade=before_upgrade)
        except exc.DBAPIError as err:  # one the engine's error translation does not know
            engine.dispose()
            raise StoreError(f"cannot open {display_url(parsed)} as a store: {' '.join(str(err.orig).split())}; "
                             "point --store at a store file, or a PostgreSQL database that is up") from err
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, parsed, backup=backups[0] if backups else None)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url.render_as_string(hide_password=True)!r})"

    # ---- sweeps and runs -------------------------------------------------------------------

    def record_sweep(self, name: str, spec: Mapping[str, Any], *, replace: bool = False) -> bool:
        """Record a sweep; returns False if it already exists with the same spec."""
        if not name:
            raise ValueError("sweep name must be a non-empty string")
        spec = check_json(spec, "sweep spec")
        with self.engine.begin() as conn:
            # Insert-or-ignore first: two drivers recording the same sweep at once must not race.
            inserted = conn.execute(
                _insert(conn, Sweep).values(name=name, spec=spec, created=utcnow())
                .on_conflict_do_nothing().returning(Sweep.name)
            ).first()
            if inserted is not None:
                return True
            existing = conn.execute(select(Sweep.spec).where(Sweep.name == name)).scalar_one()
            if existing == spec:
                return False
            if not replace:
                raise ValueError(
                    f"sweep {name!r} is already recorded with a different spec; choose a new sweep "
                    "name, or pass replace=True to overwrite the stored spec (its runs are kept)"
                )
            conn.execute(update(Sweep).where(Sweep.name == name).values(spec=spec))
            return True

    def record_runs(self, records: Sequence[RunRecord]) -> int:
        """Insert planned runs; re-recording an identical run is a no-op. Returns new-run count."""
        if not records:
            return 0
        by_id = {r.run_id: r for r in records}
        now = utcnow()
        with self.engine.begin() as conn:
            stored: dict[str, Any] = {}
            ids = list(by_id)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                stored.update(conn.execute(select(Run.id, Run.spec).where(Run.id.in_(chunk))).all())
            for run_id, spec in stored.items():
                if spec != by_id[run_id].spec:
                    raise ValueError(
                        f"run {run_id!r} is already recorded with a different spec; run ids are content "
                        "hashes, so this means two specs hashed alike or a spec changed after hashing"
                    )
            new = [r for r in by_id.values() if r.run_id not in stored]
            if not new:
                return 0
            rows = [
                {
                    "id": r.run_id, "sweep": r.sweep, "spec": r.spec, "model_family": r.arch,
                    "model_size": r.model, "params_total": r.params,
                    "params_non_embedding": r.params_non_embedding, "params_core": r.core_params,
                    "mu_rec": r.mu_rec, "mu_bwd": r.mu_bwd, "budget_flops": r.budget_flops,
                    "flop_convention": r.flop_convention, "flops_per_token": r.flops_per_token,
                    "tokens": r.tokens, "status": r.status.value, "status_step": None,
                    "status_at": now, "backend": r.backend, "job_id": r.job_id,
                    "attempt": r.attempt, "output_dir": r.output_dir, "created": now,
                }
                for r in new
            ]
            missing = {r.sweep for r in new} - set(
                conn.execute(select(Sweep.name).where(Sweep.name.in_({r.sweep for r in new}))).scalars()
            )
            if missing:
                raise StoreError(f"sweeps {sorted(missing)} are not recorded; call record_sweep first")
            conn.execute(_insert(conn, Run).on_conflict_do_nothing(), rows)
            return len(new)

    def record_run(self, record: RunRecord) -> bool:
        return self.record_runs([record]) == 1

    def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        step: int | None = None,
        message: str | None = None,
        failure_kind: str | None = None,
        backend: str | None = None,
        job_id: str | None = None,
        attempt: int | None = None,
        at: datetime | None = None,
        if_attempt: int | None = None,
    ) -> bool:
        """Change a run's lifecycle fields. Status events older than the stored one are ignored
        (so replays are idempotent); returns whether the status was applied. `if_attempt`: fenced
        (see `_fence`)."""
        at = at or utcnow()
        if at.tzinfo is None:
            raise ValueError("update_run(at=...) must be timezone-aware, e.g. datetime.now(timezone.utc)")
        with self.engine.begin() as conn:
            self._fence(conn, {run_id}, if_attempt)
            return self._update_run(conn, run_id, status, step, message, failure_kind, backend, job_id, attempt, at)

    def _update_run(
        self, conn: Connection, run_id: str, status: RunStatus | None, step: int | None,
        message: str | None, failure_kind: str | None, backend: str | None, job_id: str | None,
        attempt: int | None, at: datetime,
    ) -> bool:
        extra = {k: v for k, v in (("backend", backend), ("job_id", job_id), ("attempt", attempt)) if v is not None}
        if extra:
            conn.execute(update(Run).where(Run.id == run_id).values(**extra))
        applied = False
        if status is not None:
            status = RunStatus(status)
            values: dict[str, Any] = {"status": status.value, "status_step": step, "status_at": at, "heartbeat": at}
            if status is RunStatus.RUNNING:
                values["started"] = at
                values["ended"] = None
            if status.is_final:
                values["ended"] = at
            if status in _FAILURE_STATUSES:
                values["failure_kind"] = failure_kind or status.value
                values["failure_message"] = message
            else:
                values["failure_kind"] = None
                values["failure_message"] = None
            res = conn.execute(update(Run).where(Run.id == run_id, Run.status_at <= at).values(**values))
            applied = res.rowcount > 0
        if not applied and conn.execute(select(Run.id).where(Run.id == run_id)).first() is None:
            raise UnknownRunError(f"run {run_id!r} is not recorded; call Store.record_run first")
        return applied

    def heartbeat(self, run_id: str, *, if_attempt: int | None = None) -> None:
        """Mark the run alive now; fenced with `if_attempt` (see `_fence`)."""
        with self.engine.begin() as conn:
            if if_attempt is None:
                conn.execute(update(Run).where(Run.id == run_id).values(heartbeat=utcnow()))
            else:
                self._fence(conn, {run_id}, if_attempt)

    def _fence(self, conn: Connection, run_ids: set[str], if_attempt: int | None) -> None:
        """Fencing, for the writes of one attempt of a run (a worker passes if_attempt=<its
        attempt>): the write first updates the run's row (a heartbeat) where the attempt still
        matches, in the write's own transaction. A concurrent claim (which bumps the attempt) either
        waits for the write or wins first, and a superseded attempt's write is refused whole."""
        if if_attempt is None:
            return
        for run_id in sorted(run_ids):
            current = update(Run).where(Run.id == run_id, Run.attempt == if_attempt)
            res = conn.execute(current.values(heartbeat=utcnow()))
            if not res.rowcount:  # read on this connection: a second one would wait for our own write lock
                now = conn.execute(select(Run.attempt).where(Run.id == run_id)).scalar_one_or_none()
                raise Superseded(f"run {run_id}: attempt {if_attempt} was superseded (the run was claimed again, "
                                 f"now attempt {now}); this worker stops (pid {os.getpid()})")

    def set_provenance(self, run_id: str, record: Mapping[str, Any], *, if_attempt: int | None = None) -> None:
        """Record what the run's latest (re)start runs on (model/train/provenance.py); fenced
        with `if_attempt` (see `_fence`)."""
        record = check_json(record, "provenance")
        with self.engine.begin() as conn:
            self._fence(conn, {run_id}, if_attempt)
            res = conn.execute(update(Run).where(Run.id == run_id).values(provenance=record))
            if not res.rowcount:
                raise UnknownRunError(f"run {run_id!r} is not recorded; call Store.record_run first")

    # ---- metrics and evals ------------------------------------------------------------------

    def log_metric_rows(self, rows: Iterable[MetricRow], *, if_attempt: int | None = None) -> None:
        """Write (run_id, step, name, value) rows; replayed rows are ignored. Each chunk of
        WRITE_CHUNK_ROWS rows is one transaction: committed whole or not at all. `if_attempt`:
        fenced (see `_fence`)."""
        batch: list[_DbMetric] = []
        for run_id, step, name, value in rows:
            batch.append((run_id, name, int(step), float(value)))
            if len(batch) >= WRITE_CHUNK_ROWS:
                self._write_metrics(batch, if_attempt)
                batch = []
        if batch:
            self._write_metrics(batch, if_attempt)

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        """One optimizer step's scalars (convenience; batch with log_metric_rows for speed)."""
        self.log_metric_rows((run_id, step, name, value) for name, value in values.items())

    def _write_metrics(self, batch: list[_DbMetric], if_attempt: int | None = None) -> None:
        with self.engine.begin() as conn:
            self._fence(conn, {row[0] for row in batch}, if_attempt)
            self._insert_metrics(conn, batch)

    def _insert_metrics(self, conn: Connection, batch: list[_DbMetric]) -> None:
        try:
            if conn.dialect.name == "sqlite":
                # Hot path: SQLAlchemy compiles the statement once; the driver's executemany binds
                # plain tuples (SQLAlchemy's per-row parameter processing halves throughput).
                conn.exec_driver_sql(_sqlite_metric_insert_sql(), batch)
            else:
                # One statement per batch: four array parameters unnested server-side (row-by-row
                # executemany is ~3x slower). The savepoint keeps an error from aborting the caller.
                with conn.begin_nested():
                    conn.execute(_pg_metric_insert(), dict(zip(_METRIC_COLUMNS, map(list, zip(*batch)))))
        except exc.IntegrityError as err:
            self._raise_unknown_runs(conn, {row[0] for row in batch}, err)
            raise

    def _raise_unknown_runs(self, conn: Connection, run_ids: set[str], err: Exception) -> None:
        known = set(conn.execute(select(Run.id).where(Run.id.in_(run_ids))).scalars())
        missing = sorted(run_ids - known)
        if missing:
            raise UnknownRunError(
                f"runs {missing[:5]} are not recorded; call Store.record_run before logging their rows"
            ) from err

    def log_evals(self, run_id: str, rows: Sequence[EvalRow], *, if_attempt: int | None = None) -> None:
        """Evaluation losses keyed by (run, recurrence, split); a re-evaluation replaces the row.
        `if_attempt`: fenced (see `_fence`)."""
        with self.engine.begin() as conn:
            self._fence(conn, {run_id}, if_attempt)
            if rows:
                self._upsert_evals(conn, run_id, rows)

    def _upsert_evals(self, conn: Connection, run_id: str, rows: Sequence[EvalRow]) -> None:
        now = utcnow()
        payload = [
            {"run_id": run_id, "recurrence": int(r.recurrence), "split": r.split,
             "loss": float(r.loss), "tokens": int(r.tokens), "created": now}
            for r in rows
        ]
        stmt = _insert(conn, Eval)
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "recurrence", "split"],
            set_={"loss": stmt.excluded.loss, "tokens": stmt.excluded.tokens, "created": stmt.excluded.created},
        )
        try:
            with conn.begin_nested() if conn.dialect.name == "postgresql" else contextlib.nullcontext():
                conn.execute(stmt, payload)
        except exc.IntegrityError as err:
            self._raise_unknown_runs(conn, {run_id}, err)
            raise

    # ---- run directories --------------------------------------------------------------------

    def ingest_run_dir(self, run_id: str, path: str | os.PathLike[str]) -> IngestReport:
        """Load a RunDirSink directory in one transaction; safe to repeat (idempotent) and safe
        while the worker is still writing (an incomplete last line waits for the next ingest).
        Rows under the run's legacy id (written before schema revision 0004) are the run's too."""
        contents = read_run_dir(path)
        with self.engine.begin() as conn:
            known = conn.execute(select(Run.id, Run.legacy_id).where(Run.id == run_id)).first()
            if known is None:
                raise UnknownRunError(f"run {run_id!r} is not recorded; call Store.record_run first")
            foreign = {r for r, *_ in contents.metrics} | {r for r, _ in contents.evals}
            foreign |= {s.run_id for s in contents.statuses} | {r for r, _ in contents.provenance}
            foreign -= {run_id, known.legacy_id}
            if foreign:
                raise ValueError(
                    f"run directory {path} holds rows of runs {sorted(foreign)}, not only {run_id!r}; "
                    "ingest each run's directory with its own run id"
                )
            rows: list[_DbMetric] = [(run_id, n, s, v) for _, s, n, v in contents.metrics]
            for i in range(0, len(rows), WRITE_CHUNK_ROWS):
                self._insert_metrics(conn, rows[i : i + WRITE_CHUNK_ROWS])
            if contents.evals:
                self._upsert_evals(conn, run_id, [row for _, row in contents.evals])
            for ev in contents.statuses:
                self._update_run(conn, run_id, ev.status, ev.step, ev.message, None, None, None, None, ev.at)
            if contents.provenance:
                latest = check_json(contents.provenance[-1][1], "provenance")
                conn.execute(update(Run).where(Run.id == run_id).values(provenance=latest))
        return IngestReport(
            run_id=run_id,
            metric_rows=len(rows),
            eval_rows=len(contents.evals),
            status_events=len(contents.statuses),
            final_status=contents.statuses[-1].status if contents.statuses else None,
        )

    def ingest_sweep(self, sweep: str) -> list[IngestReport]:
        """Ingest the RunDirSink files of every run of `sweep` whose recorded output_dir holds
        them (runs without files yet are skipped; repeat as often as you like)."""
        with self._read() as conn:
            dirs = conn.execute(
                select(Run.id, Run.output_dir).where(Run.sweep == sweep, Run.output_dir.is_not(None)).order_by(Run.id)
            ).all()
        return [
            self.ingest_run_dir(run_id, out)
            for run_id, out in dirs
            if any(os.path.exists(os.path.join(out, name)) for name in RUN_DIR_FILES)
        ]
