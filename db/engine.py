"""Engines for the store: URL normalisation, SQLite pragmas and locking, network-FS refusal."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from parcae_scaling.db.errors import StoreError, UnsafeFilesystemError

DEFAULT_URL = "sqlite:///parcae.sqlite"
# How long an SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 120.0

# File systems whose POSIX locks SQLite cannot rely on (https://www.sqlite.org/howtocorrupt.html §2).
NETWORK_FS_TYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
        "fuse.sshfs", "fuse.glusterfs", "glusterfs", "fuse.ceph", "9p", "afs", "ocfs2", "gfs2",
    }
)

MULTI_NODE_ADVICE = (
    "use a PostgreSQL URL (postgresql://user@host/db) for many nodes, or let workers write "
    "per-run files with parcae_scaling.db.files.RunDirSink and ingest them on the driver with "
    "Store.ingest_run_dir(run_id, path)"
)


def normalise_url(url: str | URL | None) -> URL:
    """`None` -> the default SQLite file; a bare path -> SQLite; `postgresql://` -> psycopg 3."""
    if url is None:
        url = DEFAULT_URL
    if isinstance(url, str) and "://" not in url:
        url = f"sqlite:///{url}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported store URL scheme {parsed.drivername!r}; use sqlite:///path/to/file.sqlite "
            "or postgresql://user@host/dbname"
        )
    return parsed


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(path: str | os.PathLike[str], mounts_text: str | None = None) -> str | None:
    """File-system type of the mount holding `path` (longest matching mount point), or None."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return None  # not Linux: nothing to check against
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point, fstype = _unescape_mount(fields[1]), fields[2]
        prefix = mount_point.rstrip("/") + "/"
        if target == mount_point or target.startswith(prefix) or mount_point == "/":
            if best is None or len(mount_point) >= best[0]:
                best = (len(mount_point), fstype)
    return None if best is None else best[1]


def check_sqlite_path(db_path: str, mounts_text: str | None = None) -> None:
    """Refuse an SQLite file on a network file system before SQLite touches it."""
    fstype = filesystem_type(db_path, mounts_text)
    if fstype is not None and (fstype in NETWORK_FS_TYPES or fstype.split(".")[-1] in NETWORK_FS_TYPES):
        raise UnsafeFilesystemError(
            f"refusing to open SQLite database {db_path}: it is on a {fstype} network file system, "
            f"where SQLite's file locking is unreliable and concurrent writers corrupt the database; "
            f"put the file on a local disk, or {MULTI_NODE_ADVICE}"
        )


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory:
        path = Path(database).expanduser()
        if not path.parent.exists():
            raise StoreError(f"directory {path.parent} for SQLite store {path} does not exist; create it first")
        check_sqlite_path(str(path))
    kwargs: dict = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared in-memory database per engine
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # We issue BEGIN ourselves (below) so the driver must not open implicit transactions.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if not memory:
            cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        # NORMAL in WAL mode survives any process crash; only an OS crash can drop the last commits.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # Writers take the write lock up front: a deferred transaction that upgrades a read lock
        # gets SQLITE_BUSY at once instead of waiting out the busy timeout.
        mode = "DEFERRED" if conn.get_execution_options().get("parcae_readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_engine(url: str | URL | None) -> Engine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_engine(parsed, pool_pre_ping=True)
