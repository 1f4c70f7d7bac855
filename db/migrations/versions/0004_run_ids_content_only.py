"""Run ids without the package version: every run gets the id its stored spec has now
(`RunSpec.run_id`: scientific content + RUN_SPEC_VERSION) and keeps its former id in
runs.legacy_id.

Until this revision a run id hashed the package version, so a version bump changed every id and a
relaunch of an unchanged sweep would have trained it again. The rows of runs, metrics and evals
move to the new id (fits name sweeps, not runs); nothing is renamed on disk: a run's stored spec
and output_dir still name the directory it trained in, whose files carry the legacy id, which the
readers of run directories accept (RunSpec.has_id, Store.ingest_run_dir).

A run keeps its id (legacy_id stays NULL) if its stored spec no longer reads as a RunSpec or its
new id is taken already (the same content recorded twice under two package versions); it is
logged. This revision computes ids with the installed RunSpec: a later RUN_SPEC_VERSION must still
read version-1 specs for it to run on a store older than it.

Revision ID: 0004_run_ids_content_only
Revises: 0003_run_provenance
Create Date: 2026-12-03
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_run_ids_content_only"
down_revision = "0003_run_provenance"
branch_labels = None
depends_on = None

_log = logging.getLogger(__name__)
_CHUNK = 500  # runs per executemany


def _new_ids(rows: list[tuple[str, Any]]) -> dict[str, str]:
    """old id -> new id for the runs whose id changes."""
    from parcae_scaling.model.run_spec import RunSpec

    taken = {old for old, _ in rows}
    moves: dict[str, str] = {}
    for old, spec in rows:
        try:
            new = RunSpec.from_dict(spec).run_id
        except (ValueError, TypeError, KeyError) as exc:
            _log.warning("run %s keeps its id: its stored spec does not read as a RunSpec (%s)", old, exc)
            continue
        if new == old:
            continue
        if new in taken:
            _log.warning("run %s keeps its id: its new id %s names another run of the same content", old, new)
            continue
        taken.add(new)
        moves[old] = new
    return moves


def _other_columns(conn: sa.Connection) -> str:
    """The runs columns but id and legacy_id, quoted, for INSERT ... SELECT copies of a row."""
    quote = conn.dialect.identifier_preparer.quote
    return ", ".join(quote(c["name"]) for c in sa.inspect(conn).get_columns("runs")
                     if c["name"] not in ("id", "legacy_id"))


def _move(conn: sa.Connection, pairs: list[dict[str, str]], *, keep: str | None) -> None:
    """Move each run `src` -> `dst` with its metrics and evals; legacy_id := the param `keep`
    names (or NULL). Copy, repoint, delete: valid at every statement under enforced (not
    deferrable) foreign keys, on SQLite and PostgreSQL."""
    names = _other_columns(conn)
    legacy = f"CAST(:{keep} AS VARCHAR(64))" if keep else "NULL"  # typed: psycopg binds server-side
    copy = sa.text(f"INSERT INTO runs (id, legacy_id, {names}) "
                   f"SELECT CAST(:dst AS VARCHAR(64)), {legacy}, {names} FROM runs WHERE id = :src")
    repoint = [sa.text(f"UPDATE {t} SET run_id = :dst WHERE run_id = :src") for t in ("metrics", "evals")]
    drop = sa.text("DELETE FROM runs WHERE id = :src")
    for i in range(0, len(pairs), _CHUNK):
        chunk = pairs[i : i + _CHUNK]
        for stmt in (copy, *repoint, drop):
            conn.execute(stmt, chunk)


def upgrade() -> None:
    op.add_column("runs", sa.Column("legacy_id", sa.String(64), nullable=True))
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    moves = _new_ids([(r.id, r.spec) for r in conn.execute(sa.select(runs.c.id, runs.c.spec))])
    _move(conn, [{"src": old, "dst": new} for old, new in moves.items()], keep="src")


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, legacy_id FROM runs WHERE legacy_id IS NOT NULL")).all()
    _move(conn, [{"src": new, "dst": old} for new, old in rows], keep=None)
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), not a batch table copy: dropping the old runs
    # table would cascade to every metric and eval under the enforced foreign keys
    op.drop_column("runs", "legacy_id")
