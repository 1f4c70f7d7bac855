"""Launch, resume, status and cancel: a Plan (or a recorded sweep) against a Store and a Backend.

Idempotence comes from the store: runs are recorded by content-hashed id, and a run is
dispatched only by the call that atomically claims it (PLANNED -> PENDING, or, for resume, a
retryable failure -> PENDING). Relaunching a finished or running run is therefore a no-op, also
when two `launch` calls race. The stored RunSpec is what gets dispatched, so a relaunch from
another directory still trains into the recorded output directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import pandas as pd

import parcae_scaling
from parcae_scaling.db import RunStatus, Store
from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S, DEFAULT_STALE_AFTER_S, FailureKind
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.sweeps.backend import Backend, DispatchOptions, JobHandle
from parcae_scaling.faults import fault_point
from parcae_scaling.sweeps.claims import (
    RETRYABLE_KINDS, USER_RETRY_KINDS, check_liveness, claim_runs,
    mark_stale, recorded_sweeps, release_unstarted, set_job_ids, settle_claimed, sweep_spec, touch,
)
from parcae_scaling.sweeps.plan import Plan, check_trackers
from parcae_scaling.sweeps.spec import ResourceSpec, SweepSpec, spec_from_dict

# Called with status_table(store, sweep) after each poll of a blocking wait (the CLI's live view).
OnPoll = Callable[[pd.DataFrame], None]


class ConfigDriftError(ValueError):
    """The sweep is recorded with a different spec than the one given."""


@dataclass(frozen=True, kw_only=True)
class LaunchReport:
    sweep: str
    planned: int
    newly_recorded: int
    dispatched: tuple[str, ...]
    lost: tuple[str, ...] = ()
    handles: tuple[JobHandle, ...] = ()
    final: dict[str, int] = field(default_factory=dict)  # status -> count after waiting (if waited)
    unfinished: tuple[str, ...] = ()  # runs this call dispatched and waited for that did not succeed


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _with_defaults(stored: dict | None) -> dict | None:
    """A recorded spec with the fields added since it was recorded at their defaults, so that a
    new optional field (e.g. resources.nproc_per_node) is not mistaken for config drift."""
    if stored is None:
        return None
    try:
        return spec_from_dict(stored, source="<recorded>").to_dict()
    except ValueError:
        return stored  # compare as stored: the drift error then names what differs


def record_plan(store: Store, plan: Plan, *, allow_drift: bool = False) -> int:
    """Record the sweep (config-drift guard) and its not-yet-recorded runs; returns how many were new."""
    spec_dict = plan.spec.to_dict()
    raw = sweep_spec(store, plan.sweep)
    stored = _with_defaults(raw)
    if stored is not None and stored != spec_dict and not allow_drift:
        raise ConfigDriftError(
            f"{plan.spec.source}: sweep {plan.sweep!r} is recorded with a different spec (changed: "
            f"{', '.join(_diff_keys(stored, spec_dict)) or '?'}); relaunching with a changed spec is refused; "
            "use a new sweep name, or pass --allow-drift to record the new spec and add its runs")
    existing_sweeps = recorded_sweeps(store, [r.run_id for r in plan.runs])
    elsewhere = {rid: s for rid, s in existing_sweeps.items() if s != plan.sweep}
    if elsewhere:
        rid, other = next(iter(elsewhere.items()))
        raise ValueError(
            f"{plan.spec.source}: {len(elsewhere)} run(s) of sweep {plan.sweep!r} are already recorded in sweep "
            f"{other!r} (e.g. {rid}); a run id names its content, so identical runs cannot belong to two sweeps; "
            "change a seed or the recipe, or use a separate store (--store)")
    # the same spec, stored before new optional fields existed: rewrite it in full
    store.record_sweep(plan.sweep, spec_dict, replace=allow_drift or (raw != spec_dict and stored == spec_dict))
    existing = set(existing_sweeps)
    new = [r.record(plan.sweep) for r in plan.runs if r.run_id not in existing]
    return store.record_runs(new)


def _stored_specs(store: Store, run_ids: Sequence[str]) -> list[RunSpec]:
    return [RunSpec.from_dict(store.run_spec(rid)) for rid in run_ids]


def dispatch(store: Store, backend: Backend, run_ids: Sequence[str], *, options: DispatchOptions,
             statuses: Sequence[RunStatus], failure_kinds: Sequence[str] | None = None,
             stale_after_s: float = DEFAULT_STALE_AFTER_S, poll_s: float = 1.0,
             sweep: str | None = None, on_poll: OnPoll | None = None) -> tuple[list[str], list[JobHandle]]:
    """Claim the runs that are in `statuses`, submit them, and (unless detached) wait for them.

    Interrupted (Ctrl-C) while submitting or waiting, the runs it claimed that never started
    become PREEMPTED at once (plain `resume` re-dispatches them); started runs are their
    workers' to record."""
    check_liveness(heartbeat_s=options.heartbeat_s, stale_after_s=stale_after_s)
    if options.detach and not backend.can_detach:
        raise ValueError(f"the {backend.name} backend cannot detach (its jobs die with this process); "
                         "launch without --detach or use the local or submitit backend")
    claimed = claim_runs(store, run_ids, backend=backend.name, statuses=statuses, failure_kinds=failure_kinds)
    if not claimed:
        return [], []
    fault_point("claim")
    options = dataclasses.replace(options, attempts=claimed)
    try:
        handles = backend.submit(_stored_specs(store, list(claimed)), options)
    except KeyboardInterrupt:
        release_unstarted(store, claimed, message="interrupted (Ctrl-C) before it was submitted")
        raise
    except BaseException as exc:  # nothing was started: give the claims back as failures to retry
        settle_claimed(store, claimed, live=[RunStatus.PENDING], status=RunStatus.FAILED,
                       failure_kind=FailureKind.NODE_LOST.value,
                       message=f"submission failed: {type(exc).__name__}: {exc}")
        raise
    set_job_ids(store, {h.run_id: h.job_id for h in handles})
    if not options.detach:
        try:
            with _sigterm_as_interrupt():
                wait(store, backend, handles, stale_after_s=stale_after_s, poll_s=poll_s, sweep=sweep,
                     heartbeat_s=options.heartbeat_s, attempts=claimed, on_poll=on_poll)
        except KeyboardInterrupt:
            release_unstarted(store, claimed, message="interrupted (Ctrl-C) before it started")
            raise
    return list(claimed), handles


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While waiting, a SIGTERM to the launcher (`kill`, a scheduler ending the driver's job) ends
    the wait like Ctrl-C, so the runs it claimed that never started are released at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait(store: Store, backend: Backend, handles: Sequence[JobHandle], *, stale_after_s: float,
         poll_s: float = 1.0, sweep: str | None = None, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
         attempts: Mapping[str, int] | None = None, on_poll: OnPoll | None = None) -> None:
    """Block until the backend knows none of the jobs any more and no run of them is live.
    `attempts` (run id -> the attempt claimed) limits the final node_lost verdict to runs that
    are still the claimed attempt: a run claimed again meanwhile belongs to its new dispatcher.
    `on_poll` gets the sweep's status_table after every poll and once more at the end."""
    job_ids = sorted({h.job_id for h in handles})
    while True:
        native = backend.poll(job_ids)
        # A queued run whose job the backend still runs is alive (a starting pool has not beaten yet).
        touch(store, [h.run_id for h in handles if native.get(h.job_id) is not None and not native[h.job_id].is_final],
              status=RunStatus.PENDING)
        mark_stale(store, sweep, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
        if on_poll is not None:
            on_poll(status_table(store, sweep))
        if all(state is None or state.is_final for state in native.values()):
            break
        time.sleep(poll_s)
    if attempts is None:
        runs = store.runs(sweep).set_index("run_id")["attempt"]
        attempts = {h.run_id: int(runs[h.run_id]) for h in handles if h.run_id in runs.index}
    # the backend is done with them but they never reported an end
    settle_claimed(store, attempts, live=[RunStatus.PENDING, RunStatus.RUNNING], status=RunStatus.FAILED,
                   failure_kind=FailureKind.NODE_LOST.value,
                   message="the backend reports the job ended but the run never reported an end")
    if on_poll is not None:  # the final states, node_lost verdicts included
        on_poll(status_table(store, sweep))


def launch(plan: Plan, store: Store, backend: Backend, *, store_url: str, detach: bool = False,
           allow_drift: bool = False, log_dir: str | None = None, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
           stale_after_s: float = DEFAULT_STALE_AFTER_S, resources: ResourceSpec | None = None,
           on_poll: OnPoll | None = None) -> LaunchReport:
    """Record the plan and dispatch every run not yet claimed (PLANNED). Safe to repeat.
    Unless detached, waits for them, calling `on_poll` with the status table after each poll."""
    check_liveness(heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)  # before anything is recorded
    new = record_plan(store, plan, allow_drift=allow_drift)
    lost = mark_stale(store, plan.sweep, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
    options = DispatchOptions(store_url=store_url, resources=resources or plan.spec.resources,
                              log_dir=log_dir or str(Path(plan.spec.output_root) / plan.sweep / "_logs"),
                              detach=detach, heartbeat_s=heartbeat_s)
    claimed, handles = dispatch(store, backend, [r.run_id for r in plan.runs], options=options,
                                statuses=[RunStatus.PLANNED], stale_after_s=stale_after_s, sweep=plan.sweep,
                                on_poll=on_poll)
    return LaunchReport(sweep=plan.sweep, planned=len(plan.runs), newly_recorded=new, dispatched=tuple(claimed),
                        lost=tuple(lost), handles=tuple(handles), final=_counts(store, plan.sweep),
                        unfinished=_unfinished(store, plan.sweep, claimed, detach))


def recorded_spec(store: Store, sweep: str) -> SweepSpec:
    stored = sweep_spec(store, sweep)
    if stored is None:
        raise ValueError(f"sweep {sweep!r} is not in the store; launch it first (parcae-sweep launch SPEC)")
    return spec_from_dict(stored, source=f"store sweep {sweep!r}")


def resume(store: Store, sweep: str, backend: Backend, *, store_url: str, detach: bool = False,
           include_failed: bool = False, log_dir: str | None = None, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
           stale_after_s: float = DEFAULT_STALE_AFTER_S, spec: SweepSpec | None = None,
           allow_drift: bool = False, on_poll: OnPoll | None = None) -> LaunchReport:
    """Mark stale runs lost, then re-dispatch planned, preempted and retryable failed runs (all
    failed kinds but diverged with include_failed) from their checkpoints. Given `spec`, it must
    match the recorded one unless allow_drift (then its new runs are recorded too). `on_poll`:
    as for launch."""
    check_liveness(heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)  # before anything is recorded
    recorded = recorded_spec(store, sweep)
    if spec is not None:
        from parcae_scaling.sweeps.plan import plan as make_plan

        if spec.name != sweep:
            raise ValueError(f"{spec.source}: names sweep {spec.name!r}, not {sweep!r}; resume the sweep it names")

        record_plan(store, make_plan(spec), allow_drift=allow_drift)
        recorded = spec
    check_trackers(recorded)  # the workers' trackers: a missing library is one line here
    lost = mark_stale(store, sweep, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
    kinds = list(RETRYABLE_KINDS) + (list(USER_RETRY_KINDS) if include_failed else [])
    statuses = [RunStatus.PLANNED, RunStatus.PREEMPTED, RunStatus.FAILED]
    if include_failed:
        statuses.append(RunStatus.CANCELLED)
    options = DispatchOptions(store_url=store_url, resources=recorded.resources,
                              log_dir=log_dir or str(Path(recorded.output_root) / sweep / "_logs"),
                              detach=detach, heartbeat_s=heartbeat_s)
    ids = list(store.runs(sweep)["run_id"])
    claimed, handles = dispatch(store, backend, ids, options=options, statuses=statuses, failure_kinds=kinds,
                                stale_after_s=stale_after_s, sweep=sweep, on_poll=on_poll)
    return LaunchReport(sweep=sweep, planned=len(ids), newly_recorded=0, dispatched=tuple(claimed),
                        lost=tuple(lost), handles=tuple(handles), final=_counts(store, sweep),
                        unfinished=_unfinished(store, sweep, claimed, detach))


def cancel(store: Store, sweep: str | None = None, *, run_ids: Sequence[str] | None = None) -> list[str]:
    """Mark live runs CANCELLED and stop their jobs (natively where the backend can; otherwise the
    worker's heartbeat thread sees the mark and stops itself). Returns the cancelled ids."""
    from parcae_scaling.sweeps.backend import get_backend

    df = store.runs(sweep)
    if run_ids is not None:
        df = df[df["run_id"].isin(list(run_ids))]
    live = df[~df["status"].isin([s.value for s in RunStatus if s.is_final])]
    for row in live.itertuples():
        store.update_run(row.run_id, status=RunStatus.CANCELLED, failure_kind="cancelled", message="cancelled by user")
    for name, group in live.groupby("backend"):
        jobs = [j for j in group["job_id"] if isinstance(j, str)]
        if jobs and name in ("local", "submitit"):
            get_backend(str(name)).cancel(jobs)
    return list(live["run_id"])


def _unfinished(store: Store, sweep: str, dispatched: Sequence[str], detach: bool) -> tuple[str, ...]:
    if detach or not dispatched:
        return ()
    df = store.runs(sweep)
    mine = df[df["run_id"].isin(list(dispatched))]
    return tuple(mine.loc[mine["status"] != RunStatus.SUCCEEDED.value, "run_id"])


def _counts(store: Store, sweep: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in store.runs(sweep)["status"].value_counts().items()}


def status_table(store: Store, sweep: str | None = None, *, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: state, progress (tokens done / planned), last loss, failure kind,
    planned_flops (FLOPs per token x planned tokens, what the plan costs it), the package_version
    that last (re)started it and other_version: that is not the running parcae-scaling. `run_ids`:
    only these runs."""
    runs = store.runs(sweep)
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(list(run_ids))].reset_index(drop=True)
    hist = store.metric_history(run_ids=list(runs["run_id"]), names=["loss", "tokens"]) if len(runs) else None
    last = {}
    if hist is not None and len(hist):
        latest = hist.sort_values("step").groupby(["run_id", "name"])["value"].last().unstack()
        last = latest.to_dict("index")
    out = runs[["run_id", "sweep", "model", "mu_rec", "budget_flops", "tokens", "status", "attempt",
                "backend", "job_id", "heartbeat", "failure_kind", "failure_message"]].copy()
    # A run with no `tokens` row (diverged before its first log) unstacks to NaN beside runs with one.
    done = (last.get(r, {}).get("tokens") for r in out["run_id"])
    out["tokens_done"] = [int(v) if pd.notna(v) else 0 for v in done]
    out.loc[out["status"] == RunStatus.SUCCEEDED.value, "tokens_done"] = out["tokens"]
    out["last_loss"] = [last.get(r, {}).get("loss", float("nan")) for r in out["run_id"]]
    out["progress"] = out["tokens_done"] / out["tokens"].clip(lower=1)
    out["planned_flops"] = runs["flops_per_token"] * runs["tokens"]
    # provenance, not identity: a run trained by another code version keeps its id; status flags it
    versions = store.code_versions(sweep) if len(runs) else {}
    out["package_version"] = [versions.get(r) for r in out["run_id"]]
    # not started (no provenance: None, or NaN once pandas holds the column) is not another version
    out["other_version"] = [isinstance(v, str) and v != parcae_scaling.__version__ for v in out["package_version"]]
    return out


def run_details(store: Store, run_id: str, sweep: str | None = None) -> dict[str, object]:
    """One run, named by its id or its legacy id, as `status --run` shows it: its status_table row,
    its legacy id and the provenance of its latest (re)start (other_version: that was another
    parcae-scaling than this one). Given `sweep`, the run must belong to it."""
    rid = store.resolve_run_id(run_id)
    recorded = store.runs(sweep)
    if rid not in set(recorded["run_id"]):
        raise ValueError(f"run {run_id} is not a run of sweep {sweep!r}; `parcae-sweep status {sweep}` lists its runs")
    mine = recorded.set_index("run_id").loc[rid]
    row = status_table(store, str(mine["sweep"]), run_ids=[rid]).iloc[0]
    legacy = mine["legacy_id"]
    out: dict[str, object] = {"run_id": rid, "legacy_id": legacy if isinstance(legacy, str) else None}
    for name in ("sweep", "model", "mu_rec", "budget_flops", "tokens", "status", "attempt", "tokens_done",
                 "last_loss", "failure_kind", "failure_message", "package_version", "other_version"):
        value = row[name]
        out[name] = None if pd.isna(value) else value.item() if hasattr(value, "item") else value
    out["running_version"] = parcae_scaling.__version__
    out["provenance"] = store.run_provenance(rid)
    return out
