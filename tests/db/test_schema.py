"""Schema versioning and unsafe locations: migrations match the ORM, foreign/newer databases and
SQLite on network file systems are refused with clear messages."""

from __future__ import annotations

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from parcae_scaling.db import SchemaError, Store, StoreError, UnsafeFilesystemError
from parcae_scaling.db.engine import check_sqlite_path, filesystem_type, normalise_url
from parcae_scaling.db.migrate import head_revision
from parcae_scaling.db.schema import Base


def test_migrated_schema_matches_orm(store):
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert diffs == []
    assert version == head_revision()


def test_reopening_keeps_data(store_url, make_run):
    with Store.open(store_url) as s:
        s.record_sweep("sw", {})
        s.record_run(make_run("r1"))
    with Store.open(store_url, upgrade=False) as s:
        assert s.runs().run_id.tolist() == ["r1"]


def test_foreign_database_is_refused_untouched(store_url):
    eng = create_engine(normalise_url(store_url))
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
    with pytest.raises(SchemaError, match=r"not a parcae-scaling store: it holds tables \['users'\]"):
        Store.open(store_url)
    with eng.connect() as conn:  # nothing was created next to the foreign table
        tables = conn.execute(
            text("SELECT name FROM sqlite_master WHERE type='table'")
            if eng.dialect.name == "sqlite"
            else text("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        ).scalars().all()
    assert sorted(tables) == ["users"]
    eng.dispose()


def test_unknown_or_newer_revision_is_refused(store_url):
    Store.open(store_url).close()
    eng = create_engine(normalise_url(store_url))
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    eng.dispose()
    with pytest.raises(SchemaError, match="'0099_future', which this parcae-scaling does not know"):
        Store.open(store_url)


def test_non_database_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match="cannot open .* as a store"):
        Store.open(f"sqlite:///{path}")
    assert path.read_bytes().startswith(b"these are my notes")


def test_pre_alembic_parcae_layout_is_refused(tmp_path):
    # A hand-made "old" store: our table names, no version stamp. Never guess its layout.
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE metrics (run TEXT, step INT, loss REAL)")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="no parcae-scaling schema version"):
        Store.open(str(path))


def test_url_handling(tmp_path, monkeypatch):
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("runs.sqlite").database == "runs.sqlite"
    with pytest.raises(StoreError, match="unsupported store URL scheme 'mysql'"):
        normalise_url("mysql://u@h/db")
    with pytest.raises(StoreError, match="does not exist; create it first"):
        Store.open(f"sqlite:///{tmp_path / 'missing' / 'x.sqlite'}")
    monkeypatch.chdir(tmp_path)
    with Store.open() as s:  # default: parcae.sqlite in the working directory
        assert s.count_rows("runs") == 0
    assert (tmp_path / "parcae.sqlite").exists()
    with pytest.raises(ValueError, match="unknown table"):
        Store.open().count_rows("users")


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,vers=4.2 0 0
//nas/lab /mnt/my\\040lab cifs rw 0 0
tmpfs /mnt/shared/local tmpfs rw 0 0
"""


def test_network_filesystem_detection():
    assert filesystem_type("/mnt/shared/sweeps/parcae.sqlite", MOUNTS) == "nfs4"
    assert filesystem_type("/mnt/my lab/x.sqlite", MOUNTS) == "cifs"
    assert filesystem_type("/mnt/shared/local/x.sqlite", MOUNTS) == "tmpfs"  # longest prefix wins
    assert filesystem_type("/mnt/sharedother/x.sqlite", MOUNTS) == "ext4"
    with pytest.raises(UnsafeFilesystemError, match="nfs4 network file system.*PostgreSQL URL.*RunDirSink"):
        check_sqlite_path("/mnt/shared/sweeps/parcae.sqlite", MOUNTS)
    with pytest.raises(UnsafeFilesystemError, match="cifs"):
        check_sqlite_path("/mnt/my lab/x.sqlite", MOUNTS)
    check_sqlite_path("/home/me/parcae.sqlite", MOUNTS)  # local disk: fine
    check_sqlite_path("/mnt/shared/local/x.sqlite", MOUNTS)


def test_older_revision_is_migrated_or_refused(store_url):
    from alembic import command
    from datetime import datetime

    from parcae_scaling.db.engine import make_engine
    from parcae_scaling.db.migrate import alembic_config

    engine = make_engine(store_url)
    with engine.begin() as conn:  # a store as parcae-scaling 0001 left it, with one run
        command.upgrade(alembic_config(conn), "0001_initial")
        now = datetime(2026, 1, 1)
        conn.execute(text("INSERT INTO sweeps (name, spec, created) VALUES ('old', '{}', :t)"), {"t": now})
        conn.execute(
            text(
                "INSERT INTO runs (id, sweep, spec, model_family, model_size, params_total, "
                "params_non_embedding, mu_rec, mu_bwd, budget_flops, flop_convention, flops_per_token, "
                "tokens, status, status_at, attempt, created) VALUES ('r-old', 'old', '{\"k\": 1}', "
                "'parcae', 'tiny', 10, 5, 2, 1, 1e12, 'reference', 1e6, 1000, 'succeeded', :t, 0, :t)"
            ),
            {"t": now},
        )
    engine.dispose()
    with pytest.raises(SchemaError, match="older schema revision '0001_initial'.*upgrade=True"):
        Store.open(store_url, upgrade=False)
    with Store.open(store_url) as s:  # default: migrate in place, keeping the data
        runs = s.runs("old")
        assert runs.run_id.tolist() == ["r-old"] and runs.output_dir.isna().all()
        assert s.run_spec("r-old") == {"k": 1} and s.run_provenance("r-old") is None
        with s.engine.connect() as conn:
            assert not compare_metadata(MigrationContext.configure(conn), Base.metadata)


@pytest.mark.service
def test_missing_postgres_database_is_a_clear_error(postgres_server):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server).set(database="no_such_db").render_as_string(hide_password=False)
    with pytest.raises(StoreError, match='cannot open .*no_such_db.*does not exist.*server is up'):
        Store.open(url)
