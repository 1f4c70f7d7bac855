"""A store written while run ids hashed the package version keeps working (schema revision 0004).

The fixture tests/db/data/store_0003/ was written by the code of revision 0003 (make_store_0003.py
beside it): sweep `legacy`, its mu_rec=1 run succeeded, its mu_rec=2 run preempted after the
checkpoint of step 20. Opening it moves every run to its new id and keeps every row; launching the
same spec dispatches nothing; resume continues the preempted run from the checkpoint in the
directory named by its old id; status marks runs trained by another code version."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db import SchemaError, Store
from parcae_scaling.db.migrate import head_revision
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.plan import plan
from parcae_scaling.sweeps.spec import load_spec

FIXTURE = Path(__file__).resolve().parent / "data" / "store_0003"
FIXTURE_ROOT = "/tmp/PARCAE_LEGACY_ROOT"  # where make_store_0003.py wrote it
OLD_IDS = {1: "f8856f9621ba1adf", 2: "96c0f5109bc3a05a"}  # mu_rec -> the id the old code recorded


@dataclass(frozen=True)
class Legacy:
    root: Path
    spec: Path
    url: str

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.root / "store.sqlite") as conn:
            return conn.execute(sql).fetchall()

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(sweep_app, [*args, "--store", self.url])


@pytest.fixture
def legacy(tmp_path: Path) -> Legacy:
    """A copy of the fixture under tmp_path, its recorded paths moved there (nothing else changed)."""
    shutil.copytree(FIXTURE / "runs", tmp_path / "runs")
    shutil.copy(FIXTURE / "store.sqlite", tmp_path / "store.sqlite")
    root = str(tmp_path)
    spec = tmp_path / "legacy.yaml"
    spec.write_text((FIXTURE / "legacy.yaml").read_text().replace(FIXTURE_ROOT, root))
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        conn.execute("UPDATE runs SET output_dir = replace(output_dir, ?, ?), spec = replace(spec, ?, ?)",
                     (FIXTURE_ROOT, root, FIXTURE_ROOT, root))
        conn.execute("UPDATE sweeps SET spec = replace(spec, ?, ?)", (FIXTURE_ROOT, root))
    return Legacy(tmp_path, spec, f"sqlite:///{tmp_path / 'store.sqlite'}")


def _new_ids(legacy: Legacy) -> dict[int, str]:
    return {r.run.mu_rec: r.run_id for r in plan(load_spec(legacy.spec)).runs}


def _dump(legacy: Legacy) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the data tables, with run ids in one column each."""
    return {
        "runs": legacy.raw("SELECT id, sweep, spec, status, status_step, attempt, output_dir, provenance, "
                           "failure_kind, created FROM runs ORDER BY mu_rec"),
        "metrics": legacy.raw("SELECT run_id, name, step, value FROM metrics ORDER BY run_id, name, step"),
        "evals": legacy.raw("SELECT run_id, recurrence, split, loss, tokens FROM evals ORDER BY run_id, recurrence"),
        "sweeps": legacy.raw("SELECT name, spec FROM sweeps"),
    }


def test_fixture_ids_are_the_legacy_ids_of_todays_specs(legacy: Legacy) -> None:
    runs = {r.run.mu_rec: r.run for r in plan(load_spec(legacy.spec)).runs}
    assert {mu: run.legacy_run_ids[0] for mu, run in runs.items()} == OLD_IDS
    assert not set(OLD_IDS.values()) & {run.run_id for run in runs.values()}


def test_opening_moves_every_run_to_its_new_id_and_keeps_every_row(legacy: Legacy) -> None:
    before = _dump(legacy)
    assert [r[0] for r in before["runs"]] == [OLD_IDS[1], OLD_IDS[2]]
    with pytest.raises(SchemaError, match="older schema revision '0003_run_provenance'"):
        Store.open(legacy.url, upgrade=False)  # reading never migrates
    with Store.open(legacy.url) as store:
        assert store.backup is not None and store.backup.name.endswith(".0003_run_provenance.bak")
        runs = store.runs("legacy").set_index("mu_rec")
    new = _new_ids(legacy)
    rename = {OLD_IDS[mu]: new[mu] for mu in new}
    after = _dump(legacy)
    moved = {table: sorted((rename.get(row[0], row[0]), *row[1:]) for row in rows) for table, rows in before.items()}
    assert {table: sorted(rows) for table, rows in after.items()} == moved  # every row kept, only run ids changed
    assert len(after["metrics"]) == 240 + 72 and len(after["evals"]) == 4
    assert legacy.raw("SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert runs["run_id"].to_dict() == new and runs["legacy_id"].to_dict() == OLD_IDS
    # nothing renamed on disk: each run's recorded directory is still the one named by its old id
    for mu, old in OLD_IDS.items():
        assert runs.at[mu, "output_dir"] == str(legacy.root / "runs" / "legacy" / old)
        assert RunSpec.from_json(Path(runs.at[mu, "output_dir"], "run_spec.json").read_text()).run_id == new[mu]
    with Store.open(legacy.url) as store:  # a second open changes nothing
        assert _dump(legacy) == after and store.backup is None


def test_run_directories_with_legacy_ids_are_ingested(legacy: Legacy) -> None:
    new = _new_ids(legacy)
    with Store.open(legacy.url) as store:
        before = _dump(legacy)
        for mu, old in OLD_IDS.items():
            report = store.ingest_run_dir(new[mu], legacy.root / "runs" / "legacy" / old)
            assert report.run_id == new[mu] and report.metric_rows > 0
        assert store.resolve_run_id(OLD_IDS[1]) == new[1] and store.resolve_run_id(new[2]) == new[2]
        with pytest.raises(ValueError, match="holds rows of runs"):  # another run's directory is still refused
            store.ingest_run_dir(new[1], legacy.root / "runs" / "legacy" / OLD_IDS[2])
    assert _dump(legacy)["metrics"] == before["metrics"]  # the files hold what the store held


def test_launch_of_the_unchanged_spec_dispatches_nothing(legacy: Legacy) -> None:
    result = legacy.cli("launch", str(legacy.spec), "--progress", "none")
    assert result.exit_code == 0, result.output
    assert "2 runs planned, 0 newly recorded, 0 dispatched" in result.output
    assert "preempted=1" in result.output and "succeeded=1" in result.output
    assert len(legacy.raw("SELECT id FROM runs")) == 2
    assert sorted(p.name for p in (legacy.root / "runs" / "legacy").iterdir()) == sorted(OLD_IDS.values())


@pytest.mark.slow  # trains the preempted run's last 80 steps in a worker process
def test_resume_continues_the_preempted_run_in_its_old_directory(legacy: Legacy) -> None:
    new = _new_ids(legacy)
    old_dir = legacy.root / "runs" / "legacy" / OLD_IDS[2]
    result = legacy.cli("resume", "legacy", "--progress", "none")
    assert result.exit_code == 0, result.output
    assert "1 re-dispatched" in result.output and "succeeded=2" in result.output
    logs = "".join(p.read_text() for p in (legacy.root / "runs" / "legacy" / "_logs").glob("*.log"))
    assert f"run {new[2]} resumes from its checkpoint at step 20" in logs
    assert not (legacy.root / "runs" / "legacy" / new[2]).exists()  # no new directory: the old one
    summary = json.loads((old_dir / "summary.json").read_text())
    assert (summary["run_id"], summary["steps_done"]) == (new[2], 100)
    steps = [s for (s,) in legacy.raw(f"SELECT step FROM metrics WHERE run_id = '{new[2]}' AND name = 'loss'")]
    assert steps == list(range(5, 101, 5))  # steps 5..30 from before the preemption, the rest resumed
    with Store.open(legacy.url) as store:  # its files now hold rows under both ids: all the run's
        report = store.ingest_run_dir(new[2], old_dir)
    assert report.metric_rows > 0 and report.final_status is not None
    assert [s for (s,) in legacy.raw(f"SELECT step FROM metrics WHERE run_id = '{new[2]}' AND name = 'loss'")] == steps


def test_status_marks_runs_of_another_code_version(legacy: Legacy, monkeypatch: pytest.MonkeyPatch) -> None:
    import parcae_scaling

    new = _new_ids(legacy)
    unmigrated = legacy.cli("status", "legacy")
    assert unmigrated.exit_code == 1 and "older schema revision" in unmigrated.output
    Store.open(legacy.url).close()
    same = legacy.cli("status", "legacy")
    assert same.exit_code == 0, same.output
    assert "other code" not in same.output  # the fixture's runs were trained by 0.1.0, this package
    monkeypatch.setattr(parcae_scaling, "__version__", "0.2.0")
    other = legacy.cli("status", "legacy")
    assert other.exit_code == 0, other.output
    assert "other code" in other.output and "* 0.1.0" in other.output and "2 run(s) last trained" in other.output
    shown = legacy.cli("status", "legacy", "--run", OLD_IDS[2], "--format", "json")
    assert shown.exit_code == 0, shown.output
    details = json.loads(shown.output)
    assert (details["run_id"], details["legacy_id"], details["status"]) == (new[2], OLD_IDS[2], "preempted")
    assert (details["package_version"], details["running_version"], details["other_version"]) == ("0.1.0", "0.2.0",
                                                                                                   True)
    assert details["provenance"]["package_version"] == "0.1.0" and details["provenance"]["torch"]
    table = legacy.cli("status", "--run", new[1])
    assert table.exit_code == 0 and "provenance.git_commit" in table.output
    assert "another parcae-scaling than this one" in table.output


@pytest.mark.parametrize(("args", "message"), [
    (["status", "legacy", "--run", "0123456789abcdef"], "run '0123456789abcdef' is not recorded"),
    (["status", "nosuch", "--run", OLD_IDS[1]], "sweep 'nosuch' is not recorded"),
    (["status", "legacy", "--run", OLD_IDS[1], "--watch", "1"], "drop --watch"),
])
def test_status_run_bad_inputs(legacy: Legacy, args: list[str], message: str) -> None:
    Store.open(legacy.url).close()
    result = legacy.cli(*args)
    assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def _load_fixture_rows(url: str) -> dict[str, int]:
    """The fixture's rows, inserted into a fresh store of revision 0003 at `url` (SQLite or
    PostgreSQL) as the code of that revision wrote them; returns the row count per table."""
    from datetime import datetime

    from alembic import command
    from sqlalchemy import text

    from parcae_scaling.db.engine import make_engine
    from parcae_scaling.db.migrate import alembic_config

    src = sqlite3.connect(FIXTURE / "store.sqlite")
    src.row_factory = sqlite3.Row
    engine = make_engine(url)
    counts = {}
    json_columns = {"spec", "provenance"}
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0003_run_provenance")
            for table in ("sweeps", "runs", "metrics", "evals"):
                rows = [dict(r) for r in src.execute(f"SELECT * FROM {table}")]
                for row in rows:  # typed values: PostgreSQL does not cast text binds by itself
                    for k, v in row.items():
                        if isinstance(v, str) and k in ("created", "status_at", "heartbeat", "started", "ended"):
                            row[k] = datetime.fromisoformat(v)
                names = list(rows[0])
                as_json = json_columns if conn.dialect.name == "postgresql" else set()  # SQLite: JSON is text
                values = ", ".join(f"CAST(:{n} AS JSON)" if n in as_json else f":{n}" for n in names)
                conn.execute(text(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({values})"), rows)
                counts[table] = len(rows)
    finally:
        src.close()
        engine.dispose()
    return counts


def test_the_migration_moves_ids_on_every_backend(store_url: str) -> None:
    counts = _load_fixture_rows(store_url)
    assert counts == {"sweeps": 1, "runs": 2, "metrics": 312, "evals": 4}
    with Store.open(store_url) as store:
        runs = store.runs("legacy").set_index("mu_rec")
        history = store.metric_history(sweep="legacy", names=["loss"])
        evals = store.test_time_curves("legacy")
        provenance = store.run_provenance(runs.at[2, "run_id"])
        versions = store.code_versions("legacy")
    assert runs["legacy_id"].to_dict() == OLD_IDS
    assert versions == {rid: "0.1.0" for rid in runs["run_id"]}
    assert set(runs["run_id"]) == set(_new_ids_of_fixture().values()) == set(runs.index.map(_new_ids_of_fixture()))
    assert set(history["run_id"]) == set(runs["run_id"]) and len(history) == 20 + 6
    assert set(evals["run_id"]) == {runs.at[1, "run_id"]} and len(evals) == 4
    assert provenance is not None and provenance["package_version"] == "0.1.0"


def _new_ids_of_fixture() -> dict[int, str]:
    """mu_rec -> today's id of the fixture's runs (from its stored specs; paths do not count)."""
    with sqlite3.connect(FIXTURE / "store.sqlite") as conn:
        specs = [RunSpec.from_json(s) for (s,) in conn.execute("SELECT spec FROM runs")]
    return {s.mu_rec: s.run_id for s in specs}


def test_the_migration_reverses(store_url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from parcae_scaling.db.migrate import alembic_config

    _load_fixture_rows(store_url)
    with Store.open(store_url) as store, store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003_run_provenance")
        ids = set(conn.execute(text("SELECT id FROM runs")).scalars())
        metric_ids = list(conn.execute(text("SELECT run_id FROM metrics")).scalars())
    assert ids == set(OLD_IDS.values()) and set(metric_ids) == ids and len(metric_ids) == 312


def test_downgrading_to_the_first_schema_keeps_every_metric_and_eval(store_url: str) -> None:
    """Each downgrade drops its column in place: a batch table copy of `runs` would cascade
    through the enforced foreign keys and delete every metric and eval."""
    from alembic import command
    from sqlalchemy import text

    from parcae_scaling.db.migrate import alembic_config

    _load_fixture_rows(store_url)
    with Store.open(store_url) as store, store.engine.begin() as conn:
        before = [conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in ("runs", "metrics", "evals")]
        command.downgrade(alembic_config(conn), "0001_initial")
        after = [conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in ("runs", "metrics", "evals")]
    assert before == after and before[1] == 312
