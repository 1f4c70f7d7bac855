"""Atomic run-state transitions the dispatcher needs beyond the Store API.

Each is one conditional UPDATE in one transaction (SQLite takes the write lock up front,
PostgreSQL re-checks the WHERE clause after a concurrent commit), so two `launch` calls racing
over the same sweep claim each run at most once, and a stale-heartbeat sweep never overwrites
a run that heartbeated a moment ago.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

from sqlalchemy import and_, or_, select, update

from parcae_scaling.db import RunStatus, Store
from parcae_scaling.db.schema import Run

# Failure kinds `resume` retries from the checkpoint by default; others need --include-failed.
RETRYABLE_KINDS = ("preempted", "timeout", "node_lost")
FAILURE_KINDS = ("diverged", "oom", "timeout", "preempted", "node_lost", "error", "cancelled")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def claim_runs(store: Store, run_ids: Sequence[str], *, backend: str, statuses: Iterable[RunStatus],
               failure_kinds: Iterable[str] | None = None) -> list[str]:
    """Move runs currently in `statuses` (and, for failed ones, with a failure kind in
    `failure_kinds`; None = any) to PENDING on `backend`; returns the ids this call won."""
    statuses = [RunStatus(s).value for s in statuses]
    kinds = None if failure_kinds is None else list(failure_kinds)
    won: list[str] = []
    now = _now()
    with store.engine.begin() as conn:
        for run_id in run_ids:
            cond = and_(Run.id == run_id, Run.status.in_(statuses))
            if kinds is not None:
                cond = and_(cond, or_(Run.status != RunStatus.FAILED.value, Run.failure_kind.in_(kinds)))
            res = conn.execute(update(Run).where(cond).values(
                status=RunStatus.PENDING.value, status_at=now, heartbeat=now, backend=backend, job_id=None,
                attempt=Run.attempt + 1, failure_kind=None, failure_message=None, ended=None))
            if res.rowcount:
                won.append(run_id)
    return won


def run_status(store: Store, run_id: str) -> RunStatus:
    with store.engine.connect() as conn:
        return RunStatus(conn.execute(select(Run.status).where(Run.id == run_id)).scalar_one())


def set_job_ids(store: Store, job_ids: dict[str, str]) -> None:
    with store.engine.begin() as conn:
        for run_id, job_id in job_ids.items():
            # Only fill an empty id: a worker that already started has written its own.
            conn.execute(update(Run).where(Run.id == run_id, Run.job_id.is_(None)).values(job_id=job_id))


def sweep_spec(store: Store, name: str) -> dict | None:
    from parcae_scaling.db.schema import Sweep

    with store.engine.connect() as conn:
        return conn.execute(select(Sweep.spec).where(Sweep.name == name)).scalar_one_or_none()


def recorded_sweeps(store: Store, run_ids: Sequence[str]) -> dict[str, str]:
    """run id -> the sweep it is recorded in, for the ids already in the store."""
    out: dict[str, str] = {}
    ids = list(run_ids)
    with store.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            out.update(conn.execute(select(Run.id, Run.sweep).where(Run.id.in_(ids[i:i + 500]))).all())
    return out


def touch(store: Store, run_ids: Sequence[str], *, status: RunStatus | None = None) -> None:
    """Heartbeat several runs at once (the local pool keeps its queued runs alive this way)."""
    if not run_ids:
        return
    cond = Run.id.in_(list(run_ids))
    if status is not None:
        cond = and_(cond, Run.status == status.value)
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(cond).values(heartbeat=_now()))


def mark_stale(store: Store, sweep: str | None, *, stale_after_s: float) -> list[str]:
    """Runs whose heartbeat stopped: RUNNING ones anywhere, PENDING ones of the local backend
    (whose pool heartbeats its queue). They become FAILED with kind node_lost (resumable)."""
    cutoff = _now() - timedelta(seconds=stale_after_s)
    stale_cond = and_(
        Run.heartbeat < cutoff,
        or_(Run.status == RunStatus.RUNNING.value,
            and_(Run.status == RunStatus.PENDING.value, Run.backend == "local")),
    )
    if sweep is not None:
        stale_cond = and_(stale_cond, Run.sweep == sweep)
    lost: list[str] = []
    with store.engine.begin() as conn:
        rows = conn.execute(select(Run.id, Run.heartbeat).where(stale_cond)).all()
        for run_id, beat in rows:
            res = conn.execute(update(Run).where(and_(Run.id == run_id, stale_cond)).values(
                status=RunStatus.FAILED.value, status_at=_now(), failure_kind="node_lost", ended=_now(),
                failure_message=f"no heartbeat since {beat.isoformat()} (> {stale_after_s:g} s)"))
            if res.rowcount:
                lost.append(run_id)
    return lost
