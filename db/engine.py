"""Engines for the store: URL normalisation, SQLite pragmas and locking, network-FS refusal."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.pool import StaticPool

from parcae_scaling.db.errors import NoStoreError, StoreError, StoreUnavailableError, UnsafeFilesystemError

# Where every command, the Makefile and the notebooks find the store: --store, else $PARCAE_STORE,
# else this file in the current directory or the nearest parent holding one (see default_url).
DEFAULT_URL = "sqlite:///parcae.sqlite"
STORE_ENV = "PARCAE_STORE"
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


def default_url(cwd: Path | None = None) -> str:
    """The store a command uses when given none: $PARCAE_STORE if set, else DEFAULT_URL's file in
    `cwd` or, as git finds its repository, in the nearest parent directory holding one (a notebook
    runs in notebooks/, the demo's store is one level up), else DEFAULT_URL (launch creates it)."""
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    name = make_url(DEFAULT_URL).database or ""
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / name).is_file():
            return DEFAULT_URL if folder == here else f"sqlite:///{folder / name}"
    return DEFAULT_URL


def normalise_url(url: str | URL | None) -> URL:
    """`None` -> the default store (default_url); a bare path -> SQLite; `postgresql://` -> psycopg 3."""
    if url is None:
        url = default_url()
    if isinstance(url, str) and "://" not in url:
        url = f"sqlite:///{url}"
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError) as err:  # ValueError: e.g. a port that is not a number
        shown = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(url))  # no password in messages
        raise StoreError(f"{shown!r} is not a store URL ({err}); use sqlite:///path/to/file.sqlite "
                         "or postgresql://user@host/dbname") from None
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


def display_url(url: URL) -> str:
    """The URL as shown in messages: the password masked."""
    return url.render_as_string(hide_password=True)


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and (url.database or "") not in ("", ":memory:")


def _sqlite_cause(path: Path, text: str) -> StoreError | None:
    """A one-line StoreError for an SQLite failure the user can fix, or None to leave it be."""
    low = text.lower()
    dir_blocked = path.exists() and not os.access(path.parent, os.W_OK)
    if dir_blocked and ("readonly" in low or "unable to open" in low):
        # WAL mode keeps FILE-wal and FILE-shm beside the store: even a reader must create them.
        return StoreError(
            f"store {path} is in a read-only directory ({text}): SQLite cannot create its -wal/-shm "
            f"files beside the store; make {path.parent} writable or copy the store to a writable directory")
    if "readonly" in low or "read-only" in low:
        return StoreError(
            f"store {path} is read-only ({text}); make it writable (chmod u+w; chattr -i) or copy it, "
            "or use a read command (status, parcae-fit) on it")
    if "malformed" in low:
        return StoreError(
            f"store {path} is damaged ({text}); restore a backup or point --store at a new file")
    if "not a database" in low:
        return StoreError(
            f"cannot open {path} as a store: {text}; point --store at a store file or at a new path")
    if "unable to open" in low:
        return StoreError(f"cannot open store {path} ({text}); check that the file and its directory are readable "
                          "and writable")
    if "database is locked" in low:
        return StoreUnavailableError(
            f"store {path} stayed locked by another process for more than {SQLITE_BUSY_TIMEOUT_S:.0f} s; "
            "retry, or stop the process holding it")
    if "disk is full" in low or "disk i/o" in low:
        return StoreError(f"store {path}: {text}; free space on its disk or move the store")
    return None


def _translate_error(url: URL, ctx: ExceptionContext) -> StoreError | None:
    """Raw driver errors become one-line StoreErrors that name the store (password masked) and the
    fix, without the SQL. Integrity errors stay as they are: the store handles them itself."""
    err = ctx.sqlalchemy_exception
    if ctx.is_pre_ping or isinstance(err, exc.IntegrityError) or not isinstance(err, exc.DBAPIError):
        return None
    text = " ".join(str(ctx.original_exception).split())
    if url.get_backend_name() == "sqlite":
        return _sqlite_cause(Path(url.database or "").expanduser(), text) if is_sqlite_file(url) else None
    if ctx.is_disconnect or isinstance(err, (exc.OperationalError, exc.InterfaceError)):
        return StoreUnavailableError(
            f"cannot open {display_url(url)} as a store: {text}; check that the server is up and the "
            "database, user and password exist")
    return None


def _translate_errors(engine: Engine, url: URL) -> Engine:
    event.listen(engine, "handle_error", lambda ctx: _translate_error(url, ctx))
    return engine


def _sqlite_engine(url: URL, *, create: bool = True) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory:
        path = Path(database).expanduser()
        if not path.parent.exists():
            raise StoreError(f"directory {path.parent} for SQLite store {path} does not exist; create it first")
        if not create and not path.exists():
            # sqlite3.connect would create the file: a mistyped path must not become an empty store.
            raise NoStoreError(f"no store at {path}; check the path, or set --store / ${STORE_ENV} to the store "
                               "`parcae-sweep launch` filled (launch creates one)")
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


def make_engine(url: str | URL | None, *, create: bool = True) -> Engine:
    """An engine for the store at `url`. `create=False` refuses a missing SQLite file instead of
    letting SQLite create it."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _translate_errors(_sqlite_engine(parsed, create=create), parsed)
    return _translate_errors(create_engine(parsed, pool_pre_ping=True), parsed)
