"""Bad stores on disk, through the real CLI: each gets one `error:` line naming the store and the
fix, exit 1, no traceback, and the file is left byte for byte as it was. Stores that need a file
prepared on disk live here; URL-only cases are in tests/bad_inputs/stores/.

Permission bits do not stop root (these tests run as root in CI), so read-only files and
directories are made with `chattr +i`; the cases skip, with the reason, where that is impossible."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.fit_cli import fit_app
from parcae_scaling.db import RunRecord, Store

APPS = {"parcae-sweep": sweep_app, "parcae-fit": fit_app}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _make_store(path: Path) -> None:
    """A store with one sweep `sw` and one live (planned) run, closed (WAL folded into the file)."""
    with Store.open(f"sqlite:///{path}") as store:
        store.record_sweep("sw", {"name": "sw"})
        store.record_run(RunRecord(
            run_id="r0", sweep="sw", spec={"id": "r0"}, arch="parcae", model="tiny",
            params=10, params_non_embedding=5, mu_rec=2, mu_bwd=1, budget_flops=1e12,
            flop_convention="reference", flops_per_token=1e6, tokens=1000))
        store.log_metric_rows([("r0", s, "loss", 5.0 - s / 100) for s in range(0, 2000, 10)])
    assert not Path(f"{path}-wal").exists()


def _invoke(command: str) -> tuple[int, str]:
    argv = command.split()
    result = CliRunner().invoke(APPS[argv[0]], argv[1:])
    assert "Traceback" not in result.output, result.output[-2000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _one_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "SELECT" not in errors[0] and "INSERT" not in errors[0] and "UPDATE" not in errors[0]
    return errors[0]


@contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: read-only even for root."""
    proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot make {path} immutable here (chattr +i: {proc.stderr.strip() or proc.returncode})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _corrupt_mid_file(path: Path) -> None:
    """Overwrite every page after the first (the header and schema stay readable)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xde\xad\xbe\xef" * ((len(data) - page) // 4)
    path.write_bytes(bytes(data))


def _future_schema(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '0099_future'")
    con.commit()
    con.close()


@pytest.mark.parametrize(("damage", "command", "expect"), [
    (_corrupt_mid_file, "parcae-sweep status --store {url}",
     "is damaged (database disk image is malformed); restore a backup or point --store at a new file"),
    (_corrupt_mid_file, "parcae-fit isoflop --store {url} --sweep sw --out {tmp}/fits", "is damaged"),
    (_future_schema, "parcae-sweep status --store {url}", "'0099_future', which this parcae-scaling does not know"),
    (_future_schema, "parcae-sweep cancel sw --store {url}", "'0099_future', which this parcae-scaling does not know"),
], ids=["corrupt-status", "corrupt-fit", "future-status", "future-cancel"])
def test_damaged_store_gets_one_line_and_is_untouched(tmp_path: Path, damage: Callable[[Path], None],
                                                      command: str, expect: str) -> None:
    path = tmp_path / "store.sqlite"
    _make_store(path)
    damage(path)
    before = _md5(path)
    code, output = _invoke(command.format(url=f"sqlite:///{path}", tmp=tmp_path))
    assert code == 1 and expect in _one_error(output)
    assert _md5(path) == before


def test_read_only_file_reads_but_refuses_writes_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    _make_store(path)
    before = _md5(path)
    with _immutable(path):
        code, output = _invoke(f"parcae-sweep status --store sqlite:///{path}")
        assert code == 0 and "r0" in output  # reading a read-only store works
        code, output = _invoke(f"parcae-sweep cancel sw --store sqlite:///{path}")
        line = _one_error(output)
        assert code == 1 and f"store {path} is read-only" in line and "chattr -i" in line
    assert _md5(path) == before
    with Store.open(f"sqlite:///{path}", upgrade=False) as store:
        assert store.runs("sw")["status"].tolist() == ["planned"]


@pytest.mark.parametrize("command", ["parcae-sweep status --store {url}", "parcae-sweep cancel sw --store {url}"])
def test_read_only_directory_names_the_real_cause(tmp_path: Path, command: str) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "store.sqlite"
    _make_store(path)
    before = _md5(path)
    with _immutable(folder):
        code, output = _invoke(command.format(url=f"sqlite:///{path}"))
    line = _one_error(output)
    assert code == 1 and f"store {path} is in a read-only directory" in line
    assert "-wal/-shm" in line and f"make {folder} writable" in line
    assert "not a database" not in line
    assert _md5(path) == before and sorted(p.name for p in folder.iterdir()) == ["store.sqlite"]


@pytest.mark.parametrize("command", [
    "parcae-sweep status --store {url}", "parcae-sweep status sw --store {url}",
    "parcae-sweep cancel sw --store {url}", "parcae-sweep resume sw --store {url}",
    "parcae-fit isoflop --store {url} --sweep sw --out {tmp}/fits",
    "parcae-fit report --store {url} --sweep sw --out {tmp}/report",
])
def test_read_commands_never_create_a_store(tmp_path: Path, command: str) -> None:
    path = tmp_path / "typo.sqlite"
    code, output = _invoke(command.format(url=f"sqlite:///{path}", tmp=tmp_path))
    assert code == 1 and f"no store at {path}; check the path, or set --store" in _one_error(output)
    assert not path.exists() and not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("command", ["parcae-sweep status nope --store {url}",
                                     "parcae-sweep cancel nope --store {url}"])
def test_unknown_sweep_names_the_recorded_ones(tmp_path: Path, command: str) -> None:
    path = tmp_path / "store.sqlite"
    _make_store(path)
    before = _md5(path)
    code, output = _invoke(command.format(url=f"sqlite:///{path}"))
    assert (code == 1 and "sweep 'nope' is not recorded" in (line := _one_error(output))
            and "recorded sweeps: sw" in line)
    assert _md5(path) == before


def test_cancel_needs_a_sweep_or_all(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    _make_store(path)
    code, output = _invoke(f"parcae-sweep cancel --store sqlite:///{path}")
    assert code == 2 and "--all" in output
    with Store.open(f"sqlite:///{path}", upgrade=False) as store:
        assert store.runs()["status"].tolist() == ["planned"]  # nothing cancelled by omission
    code, output = _invoke(f"parcae-sweep cancel --all --yes --store sqlite:///{path}")  # --yes: do not ask
    assert code == 0 and "cancelled 1 run(s): r0" in output


def _old_store(path: Path) -> None:
    """A store as parcae-scaling's first schema revision left it."""
    from alembic import command as alembic_command

    from parcae_scaling.db.engine import make_engine
    from parcae_scaling.db.migrate import alembic_config

    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        alembic_command.upgrade(alembic_config(conn), "0001_initial")
        conn.execute(text("INSERT INTO sweeps (name, spec, created) VALUES ('old', '{}', '2026-01-01')"))
    engine.dispose()


def test_reading_never_migrates_and_a_write_backs_up_first(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _old_store(path)
    before = _md5(path)
    code, output = _invoke(f"parcae-sweep status --store sqlite:///{path}")
    line = _one_error(output)
    assert code == 1 and "older schema revision '0001_initial'" in line and "reading never migrates" in line
    assert _md5(path) == before
    code, output = _invoke(f"parcae-sweep cancel old --store sqlite:///{path}")  # a write command migrates
    backup = tmp_path / "old.sqlite.0001_initial.bak"
    assert code == 0 and f"its previous copy is {backup}" in output
    con = sqlite3.connect(backup)  # the store as it was before the migration
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001_initial",)]
    assert con.execute("SELECT name FROM sweeps").fetchall() == [("old",)]
    con.close()
    with Store.open(f"sqlite:///{path}", upgrade=False) as store:  # migrated: reads now work
        assert store.sweep_names() == ["old"]
