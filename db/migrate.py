"""Schema versioning with Alembic: create, upgrade, or refuse with a clear message.

`ensure_schema` runs inside one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory lock), so many processes opening a fresh store at once create it exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from parcae_scaling.db.errors import NoStoreError, SchemaError
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


def _check_and_upgrade(conn: Connection, where: str, upgrade: bool, create: bool,
                       before_upgrade: Callable[[str], None] | None) -> str:
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
        if not (create and upgrade):
            raise NoStoreError(f"no store at {where}; check the path (launch creates a store)")
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
                f"{head!r}, and reading never migrates: run a write command on it (parcae-sweep resume "
                "or launch; an SQLite store is backed up first), or Store.open(url, upgrade=True)."
            )
        if before_upgrade is not None:
            before_upgrade(current)
    command.upgrade(alembic_config(conn), "head")
    return head


def ensure_schema(engine: Engine, *, where: str, upgrade: bool = True, create: bool = True,
                  before_upgrade: Callable[[str], None] | None = None) -> str:
    """Bring an empty or older database to the head revision; refuse foreign or newer ones.

    `upgrade=False` (reading) never changes the database: a missing or older schema is refused.
    `create=False` refuses an empty database. `before_upgrade(current_revision)` runs before a
    migration (not before creating a fresh schema), e.g. to back the store up."""
    with engine.connect() as conn:
        if not upgrade:  # reading: a deferred transaction, so a long writer does not block the check
            conn = conn.execution_options(parcae_readonly=True)
        with conn.begin():
            if conn.dialect.name == "postgresql" and upgrade:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            return _check_and_upgrade(conn, where, upgrade, create, before_upgrade)
