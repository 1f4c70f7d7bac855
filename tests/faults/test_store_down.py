"""A store that goes away mid-run loses nothing: PostgreSQL is stopped while a run trains and
started again. A short outage: the worker's StoreSink keeps its rows and retries, and the run's
metric rows equal an uninterrupted run's. An outage past the limit: the run stops with a
resumable kind, and resuming it completes it with the same rows."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from parcae_scaling.db import RunStatus, Store, StoreUnavailableError
from parcae_scaling.db.store_sink import OUTAGE_LIMIT_ENV
from parcae_scaling.sweeps import get_backend, mark_stale, plan, record_plan, resume, spec_from_dict
from parcae_scaling.sweeps.claims import RETRYABLE_KINDS
from parcae_scaling.sweeps.worker import execute_run

pytestmark = [pytest.mark.slow, pytest.mark.service, pytest.mark.timeout(900)]

SERVICE = Path(__file__).resolve().parents[1] / "services" / "postgres.sh"
# Wall-clock metrics differ between any two runs; everything else must be identical.
TIMING = {"tokens_per_s", "mfu"}


class Server:
    """A private PostgreSQL cluster this test may stop and start again (same port and data)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.url = ""

    def _run(self, cmd: str) -> str:
        proc = subprocess.run(["bash", str(SERVICE), cmd, self.workdir], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"postgres.sh {cmd} failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""

    def start(self) -> None:
        self.url = self._run("start") or self.url

    def stop(self) -> None:
        self._run("stop")

    def database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # generated name, not user input
        admin.dispose()
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    workdir = tempfile.mkdtemp(prefix="parcae-pgdown-")
    Path(workdir).chmod(0o755)  # the server runs as the postgres user and must enter the dir
    srv = Server(workdir)
    try:
        srv.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"PostgreSQL test server could not start: {err}")
    try:
        yield srv
    finally:
        subprocess.run(["bash", str(SERVICE), "stop", workdir], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


def _recorded_run(url: str, root: Path):  # noqa: ANN202
    """One ~10 s training run (1,500 steps, a checkpoint every 300), recorded in the store."""
    spec = spec_from_dict({
        "name": "down", "models": ["parcae-tiny-48"], "model_overrides": {"seq_len": 32},
        "tokens": [192_000], "mu_rec": [2],
        "recipe": {"batch_size": 4, "eval_tokens": 1024, "metrics_every_steps": 10, "checkpoint_every_steps": 300},
        "output_root": str(root),
    }, source="tests/faults store-down sweep")
    p = plan(spec)
    with Store.open(url) as store:
        record_plan(store, p)
    return p.runs[0].run


def _rows(url: str, run_id: str) -> list[tuple[int, str, float]]:
    with Store.open(url, upgrade=False) as store:
        hist = store.metric_history(run_ids=[run_id])
    rows = [(int(r.step), str(r.name), float(r.value)) for r in hist.itertuples() if r.name not in TIMING]
    return sorted(rows, key=lambda r: (r[0], r[1]))


def _status(url: str, run_id: str) -> tuple[str, str | None]:
    with Store.open(url, upgrade=False) as store:
        row = store.runs().set_index("run_id").loc[run_id]
    return str(row["status"]), row["failure_kind"]


def _outage_after_first_rows(server: Server, url: str, run_id: str, *, down_s: float | None) -> threading.Thread:
    """Stop the server once the run has stored its first rows; start it again after `down_s`
    (None: the test starts it). Returns the thread; it records what it did in `.events`."""
    events: list[str] = []

    def outage() -> None:
        engine = create_engine(url)
        try:
            while True:
                with engine.connect() as conn:
                    n = conn.execute(text("SELECT count(*) FROM metrics WHERE run_id = :r"), {"r": run_id}).scalar()
                if n:
                    break
                time.sleep(0.1)
        finally:
            engine.dispose()
        server.stop()
        events.append("stopped")
        if down_s is not None:
            time.sleep(down_s)
            server.start()
            events.append("started")

    thread = threading.Thread(target=outage, daemon=True)
    thread.events = events  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.fixture(scope="module")
def reference(server: Server, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, str, float]]:
    """The metric rows of the run trained without any outage."""
    url = server.database()
    run = _recorded_run(url, tmp_path_factory.mktemp("ref"))
    assert execute_run(run, url, heartbeat_s=1.0) is RunStatus.SUCCEEDED
    rows = _rows(url, run.run_id)
    assert len(rows) > 500
    return rows


def test_rows_written_during_an_outage_arrive_once_the_store_is_back(server, reference, tmp_path, capfd) -> None:
    url = server.database()
    run = _recorded_run(url, tmp_path)
    outage = _outage_after_first_rows(server, url, run.run_id, down_s=5.0)
    status = execute_run(run, url, heartbeat_s=1.0)  # flushes every second: several hit the outage
    outage.join(timeout=120)
    assert outage.events == ["stopped", "started"]
    err = capfd.readouterr().err
    assert "retrying for up to" in err and "the store is back after" in err  # the outage was seen
    assert status is RunStatus.SUCCEEDED and _status(url, run.run_id)[0] == "succeeded"
    assert _rows(url, run.run_id) == reference  # every row, once, with the same values


def test_an_outage_past_the_limit_stops_the_run_resumably(server, reference, tmp_path, monkeypatch) -> None:
    url = server.database()
    run = _recorded_run(url, tmp_path)
    monkeypatch.setenv(OUTAGE_LIMIT_ENV, "3")
    outage = _outage_after_first_rows(server, url, run.run_id, down_s=None)
    with pytest.raises(StoreUnavailableError) as info:
        execute_run(run, url, heartbeat_s=1.0)
    assert outage.events == ["stopped"]
    assert info.value.failure_kind in RETRYABLE_KINDS  # what the worker records, when it can
    server.start()
    # The worker could not record its end either (the store was down), so the run looks alive with
    # an old heartbeat: stale detection marks it node_lost, and `resume` re-dispatches it from its
    # checkpoint (a short stale window only here: the restarted worker must not look stale).
    monkeypatch.delenv(OUTAGE_LIMIT_ENV)
    time.sleep(3.0)
    with Store.open(url, create=False) as store:
        assert mark_stale(store, "down", stale_after_s=2.5, heartbeat_s=0.5) == [run.run_id]
        assert _status(url, run.run_id) == ("failed", "node_lost")
        rep = resume(store, "down", get_backend("local"), store_url=url, heartbeat_s=1.0, stale_after_s=60.0)
    assert rep.dispatched == (run.run_id,)
    assert _status(url, run.run_id) == ("succeeded", None)
    assert _rows(url, run.run_id) == reference
