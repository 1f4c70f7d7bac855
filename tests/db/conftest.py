"""Fixtures for the store tests: the same suite runs on SQLite and on a real PostgreSQL server.

The PostgreSQL server is a private cluster started by tests/services/postgres.sh (which installs
the Debian package if needed); if it cannot start, PostgreSQL cases skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from parcae_scaling.db import RunRecord, Store
from services.service import running_service

SERVICE = Path(__file__).resolve().parents[1] / "services" / "postgres.sh"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of the maintenance database of a private PostgreSQL cluster (or of the server named
    by PARCAE_TEST_POSTGRES_URL, e.g. a CI service container; tests create their own databases)."""
    external = os.environ.get("PARCAE_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    with running_service(SERVICE, "PostgreSQL test server", start_timeout_s=600, world_readable=True) as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))  # identifier generated above, not user input
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as s:
        yield s


@pytest.fixture
def make_run() -> Callable[..., RunRecord]:
    """Factory of valid RunRecords; override any column by keyword."""

    def _make(run_id: str = "run0", sweep: str = "sw", **overrides: object) -> RunRecord:
        fields: dict[str, object] = dict(
            run_id=run_id, sweep=sweep, spec={"id": run_id, "seed": 0}, arch="parcae",
            model="small-140m", params=144_323_136, params_non_embedding=119_157_312,
            mu_rec=4, mu_bwd=2, budget_flops=1e18, flop_convention="reference",
            flops_per_token=1.0e9, tokens=1_000_000_000,
        )
        fields.update(overrides)
        return RunRecord(**fields)  # type: ignore[arg-type]

    return _make
