"""Fixtures for sweep tests: tiny spec files, stores, and a real single-node SLURM cluster.

The SLURM cluster is started by tests/services/slurm.sh (Debian slurmctld/slurmd/munge, installed
if missing, root only); SLURM tests skip with the reason when it cannot start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from parcae_scaling.db import RunStatus, Store
import parcae_testing
from parcae_testing import ListSink, dp_sweep_spec, tiny_sweep_spec



@pytest.fixture
def tiny_spec() -> Callable[..., dict[str, Any]]:
    return tiny_sweep_spec


@pytest.fixture
def wait_for() -> Callable[..., None]:
    return parcae_testing.wait_for


@pytest.fixture
def final_losses() -> Callable[[str, str], dict[tuple[str, int], float]]:
    return _final_losses


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec mapping as YAML (output_root inside tmp_path unless given); returns the path."""

    def write(spec: dict[str, Any], filename: str = "spec.yaml") -> Path:
        spec = {"output_root": str(tmp_path / "runs"), **spec}
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


def _final_losses(url: str, sweep: str) -> dict[tuple[str, int], float]:
    """(model, mu_rec) -> eval loss at T = mu_rec, for comparing backends."""
    with Store.open(url) as store:
        df = store.final_losses(sweep)
    assert (df["status"] == RunStatus.SUCCEEDED.value).all(), df[["run_id", "status"]]
    return {(r.model, int(r.mu_rec)): float(r.eval_loss) for r in df.itertuples()}


# ---- data-parallel runs: a tiny 2-process spec, its 1-process reference, a write audit ----------

@pytest.fixture
def dp_spec() -> Callable[..., dict[str, Any]]:
    return dp_sweep_spec


def _one_process_reference(spec_path: Path, out: Path) -> tuple[dict[int, float], float]:
    """(step -> loss, final val loss) of the spec's first run laid out on one process (the same
    global batch, accumulated), trained in this process."""
    from parcae_scaling.model.train.loop import train_run
    from parcae_scaling.sweeps import load_spec, plan

    run = plan(load_spec(spec_path)).runs[0].run.with_world_size(1).replace(output_dir=str(out), sharding="ddp")
    sink = ListSink()
    result = train_run(run, sink)
    return sink.losses(), float(result.final_val_loss)


@pytest.fixture
def one_process_reference() -> Callable[[Path, Path], tuple[dict[int, float], float]]:
    return _one_process_reference


class WriteAudit:
    """SQLite triggers recording every attempted store write, duplicates included (BEFORE INSERT
    fires for rows that ON CONFLICT DO NOTHING then ignores): proves which process wrote what."""

    STATEMENTS = (
        "CREATE TABLE audit_metrics (run_id TEXT, name TEXT, step INTEGER)",
        "CREATE TRIGGER audit_m BEFORE INSERT ON metrics BEGIN "
        "INSERT INTO audit_metrics VALUES (NEW.run_id, NEW.name, NEW.step); END",
        "CREATE TABLE audit_evals (run_id TEXT, recurrence INTEGER)",
        "CREATE TRIGGER audit_e BEFORE INSERT ON evals BEGIN "
        "INSERT INTO audit_evals VALUES (NEW.run_id, NEW.recurrence); END",
        "CREATE TABLE audit_status (run_id TEXT, status TEXT)",
        "CREATE TRIGGER audit_s AFTER UPDATE OF status_at ON runs BEGIN "
        "INSERT INTO audit_status VALUES (NEW.id, NEW.status); END",
    )

    @classmethod
    def install(cls, store: Store) -> None:
        from sqlalchemy import text

        with store.engine.begin() as conn:
            for stmt in cls.STATEMENTS:
                conn.execute(text(stmt))

    @staticmethod
    def read(store: Store) -> dict[str, Any]:
        """statuses in order; how often each (metric, step) and each eval recurrence was written."""
        from sqlalchemy import text

        with store.engine.connect() as conn:
            return {
                "statuses": [s for (s,) in conn.execute(text("SELECT status FROM audit_status ORDER BY rowid"))],
                "metric_writes": {n for (n,) in conn.execute(text(
                    "SELECT COUNT(*) FROM audit_metrics GROUP BY run_id, name, step"))},
                "eval_writes": dict(conn.execute(text(
                    "SELECT recurrence, COUNT(*) FROM audit_evals GROUP BY run_id, recurrence")).all()),
            }


@pytest.fixture
def write_audit() -> type[WriteAudit]:
    return WriteAudit
