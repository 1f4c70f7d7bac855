"""Schema versioning with Alembic: create, upgrade, or refuse with a clear message.

`ensure_schema` runs inside one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory lock), so many processes opening a fresh store at once create it exactly once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from parcae_scaling.db.errors import SchemaError
from parcae_scaling.db.schema import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
STORE_TABLES = frozenset(Base.metadata.tables)
_PG_LOCK_KEY = 0x70617263  # "parc": serialises schema creation across clients


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"parcae-scaling migrations must have one head, found {heads}")
    return heads[0]


def current_revision(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if len(heads) == 1 else (None if not heads else ",".join(heads))


def _check_and_upgrade(conn: Connection, where: str, upgrade: bool) -> str:
    script = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    current = current_revision(conn)
    tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
    if current is None:
        if tables:
            raise SchemaError(
                f"{where} is not a parcae-scaling store: it holds tables {sorted(tables)} but no "
                "parcae-scaling schema version; open a new file or an empty database instead "
                "(nothing was changed)"
            )
    elif current == head:
        return head
    else:
        known = {rev.revision for rev in script.walk_revisions()}
        if current not in known:
            raise SchemaError(
                f"{where} has schema revision {current!r}, which this parcae-scaling does not know: "
                f"either a newer parcae-scaling wrote it (upgrade the package; this one knows up to "
                f"{head!r}) or it belongs to another application. Nothing was changed."
            )
        if not upgrade:
            raise SchemaError(
                f"{where} has the older schema revision {current!r}; this parcae-scaling needs "
                f"{head!r}. Open it with Store.open(url, upgrade=True) to migrate (back it up first)."
            )
    command.upgrade(alembic_config(conn), "head")
    return head


def ensure_schema(engine: Engine, *, where: str, upgrade: bool = True) -> str:
    """Bring an empty or older database to the head revision; refuse foreign or newer ones."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        return _check_and_upgrade(conn, where, upgrade)
