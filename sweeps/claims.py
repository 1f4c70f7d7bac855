"""Atomic run-state transitions the dispatcher needs beyond the Store API, and the attempt fence.

Each is one conditional UPDATE in one transaction (SQLite takes the write lock up front,
PostgreSQL re-checks the WHERE clause after a concurrent commit), so two `launch` calls racing
over the same sweep claim each run at most once, and a stale-heartbeat sweep never overwrites
a run that heartbeated a moment ago.

Every claim increments the run's `attempt`. A worker is told the attempt it was dispatched for
and writes only through a `FencedStore`: each of its writes first checks, in the same
transaction, that the run's attempt is still its own. A worker whose run was re-claimed (a
stale window that declared it lost while it lived) has every write refused and stops, so a
run is never trained by two live attempts.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import and_, or_, select, update

from parcae_scaling.db import EvalRow, IngestReport, RunStatus, Store
from parcae_scaling.db.schema import Run
from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S, FailureKind
from parcae_scaling.db.store import MetricRow

# Failure kinds `resume` retries from the checkpoint by default, and those --include-failed adds.
RETRYABLE_KINDS = tuple(k.value for k in FailureKind if k.is_retryable)
USER_RETRY_KINDS = tuple(k.value for k in FailureKind if not k.is_retryable and k is not FailureKind.DIVERGED)
# Liveness: a run is lost after `stale_after_s` without a heartbeat. Below a few heartbeats one
# late beat (a busy disk, a slow store) would declare a live run lost and let it be re-dispatched.
MIN_HEARTBEAT_S = 0.1  # below this the heartbeat thread and the pool's queue beats busy-loop
MIN_BEATS_PER_WINDOW = 3


def check_liveness(*, heartbeat_s: float, stale_after_s: float) -> None:
    """Refuse a heartbeat interval or stale window that could declare a live run lost."""
    if not heartbeat_s >= MIN_HEARTBEAT_S:  # also NaN
        raise ValueError(f"--heartbeat {heartbeat_s:g}: the heartbeat interval must be >= {MIN_HEARTBEAT_S:g} s; "
                         "use e.g. --heartbeat 10 (the default)")
    if not stale_after_s >= MIN_BEATS_PER_WINDOW * heartbeat_s:
        raise ValueError(f"--stale-after {stale_after_s:g}: a run is declared lost only after at least "
                         f"{MIN_BEATS_PER_WINDOW} missed heartbeats of {heartbeat_s:g} s; use --stale-after >= "
                         f"{MIN_BEATS_PER_WINDOW * heartbeat_s:g} (or a shorter --heartbeat)")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def claim_runs(store: Store, run_ids: Sequence[str], *, backend: str, statuses: Iterable[RunStatus],
               failure_kinds: Iterable[str] | None = None) -> dict[str, int]:
    """Move runs currently in `statuses` (and, for failed ones, with a failure kind in
    `failure_kinds`; None = any) to PENDING on `backend`; returns the ids this call won, each
    with the attempt number it claimed (the fence its worker writes under)."""
    statuses = [RunStatus(s).value for s in statuses]
    kinds = None if failure_kinds is None else list(failure_kinds)
    won: dict[str, int] = {}
    now = _now()
    with store.engine.begin() as conn:
        for run_id in run_ids:
            cond = and_(Run.id == run_id, Run.status.in_(statuses))
            if kinds is not None:
                cond = and_(cond, or_(Run.status != RunStatus.FAILED.value, Run.failure_kind.in_(kinds)))
            res = conn.execute(update(Run).where(cond).values(
                status=RunStatus.PENDING.value, status_at=now, heartbeat=now, backend=backend, job_id=None,
                attempt=Run.attempt + 1, failure_kind=None, failure_message=None, ended=None))
            if res.rowcount:  # read back inside the transaction: nobody can claim it in between
                won[run_id] = conn.execute(select(Run.attempt).where(Run.id == run_id)).scalar_one()
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


def mark_stale(store: Store, sweep: str | None, *, stale_after_s: float,
               heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> list[str]:
    """Runs whose heartbeat stopped: RUNNING ones anywhere, PENDING ones of the local backend
    (whose pool heartbeats its queue). They become FAILED with kind node_lost (resumable).
    `heartbeat_s` is the workers' interval: the window must span several of them."""
    check_liveness(heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)
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


def settle_claimed(store: Store, attempts: Mapping[str, int], *, live: Iterable[RunStatus], status: RunStatus,
                   failure_kind: str, message: str) -> list[str]:
    """The dispatcher's own end for runs it claimed: those still in `live` under the attempt it
    claimed become `status`. A run that was claimed again since (a newer attempt) is not ours to
    touch. Returns the ids changed."""
    changed: list[str] = []
    now = _now()
    values: dict[str, Any] = dict(status=status.value, status_at=now, failure_kind=failure_kind,
                                  failure_message=message)
    if status.is_final:
        values["ended"] = now
    with store.engine.begin() as conn:
        for run_id, attempt in attempts.items():
            res = conn.execute(update(Run).where(
                Run.id == run_id, Run.attempt == attempt, Run.status.in_([RunStatus(s).value for s in live]))
                .values(**values))
            if res.rowcount:
                changed.append(run_id)
    return changed


def release_unstarted(store: Store, attempts: Mapping[str, int], *, message: str) -> list[str]:
    """Claimed runs still PENDING (never started: their dispatcher or pool was interrupted)
    become PREEMPTED at once, so plain `resume` re-dispatches them without waiting out the stale
    window. A started run is left to its worker (which records its own interruption)."""
    return settle_claimed(store, attempts, live=[RunStatus.PENDING], status=RunStatus.PREEMPTED,
                          failure_kind=FailureKind.PREEMPTED.value, message=message)


def current_attempt(store: Store, run_id: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(Run.attempt).where(Run.id == run_id)).scalar_one())


class FencedStore:
    """The store as one attempt of one run sees it: the writes a worker and its sinks make
    (`StoreSink` needs log_metric_rows, log_evals, update_run and heartbeat), each fenced by the
    store (`if_attempt`: refused with `Superseded` unless the run's attempt is still `attempt`)
    and refused for any other run."""

    def __init__(self, store: Store, run_id: str, attempt: int) -> None:
        self.store, self.run_id, self.attempt = store, run_id, attempt

    def _own(self, run_id: str) -> None:
        if run_id != self.run_id:
            raise ValueError(f"a worker of run {self.run_id} cannot write rows of run {run_id}")

    def check(self) -> None:
        """Raise Superseded unless this attempt is still current (also a heartbeat)."""
        self.store.heartbeat(self.run_id, if_attempt=self.attempt)

    def heartbeat(self, run_id: str) -> None:
        self._own(run_id)
        self.check()

    def log_metric_rows(self, rows: Iterable[MetricRow]) -> None:
        batch = list(rows)
        for run_id in {row[0] for row in batch}:
            self._own(run_id)
        if batch:
            self.store.log_metric_rows(batch, if_attempt=self.attempt)
        else:
            self.check()

    def log_evals(self, run_id: str, rows: Sequence[EvalRow]) -> None:
        self._own(run_id)
        self.store.log_evals(run_id, rows, if_attempt=self.attempt)

    def set_provenance(self, run_id: str, record: Mapping[str, Any]) -> None:
        self._own(run_id)
        self.store.set_provenance(run_id, record, if_attempt=self.attempt)

    def update_run(self, run_id: str, *, status: RunStatus | None = None, step: int | None = None,
                   message: str | None = None, failure_kind: str | None = None, job_id: str | None = None,
                   **_: Any) -> bool:
        self._own(run_id)
        return self.store.update_run(run_id, status=status, step=step, message=message, failure_kind=failure_kind,
                                     job_id=job_id, if_attempt=self.attempt)

    def ingest_run_dir(self, path: str | os.PathLike[str]) -> IngestReport:
        """The run directory's metric and eval files into the store (idempotent: replayed rows
        are ignored), after checking this attempt is current."""
        self.check()
        return self.store.ingest_run_dir(self.run_id, path)
