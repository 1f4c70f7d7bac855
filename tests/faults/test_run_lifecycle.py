"""A run's life under faults: killed at each stage, interrupted, declared lost while alive.

Each promise of the run lifecycle is a test here: after a SIGKILL at any stage (faults.py), a
Ctrl-C or a SIGTERM, plain `resume` finishes every run with exactly one copy of each metric row
and the losses of an uninterrupted run; a finished run directory reaches a new store; and no run
is ever trained by two live attempts (validation of the stale window, the attempt fence, the
output-directory lock).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import text, update

from parcae_scaling.db import RunStatus, Store, Superseded
from parcae_scaling.db.schema import Run
from parcae_scaling.model.run_spec import RunSpec
import parcae_scaling.sweeps.entry as entry
from parcae_scaling.sweeps import get_backend, resume
from parcae_scaling.sweeps.claims import FencedStore, check_liveness, claim_runs, mark_stale
from parcae_scaling.sweeps.worker import LOCK_FILE, lock_output_dir
from parcae_scaling.sweeps.writer import classify

SWEEP = "faults"  # the tiny sweep's name (tests/faults/conftest.py)

# Stage -> the PARCAE_FAULT value that kills there. "claim" kills launch itself (runs claimed,
# nothing submitted); the others kill the workers (each counts its own hits).
STAGES = {
    "claim": "claim",
    "first_step": "step:1",
    "checkpoint_tmp": "checkpoint_tmp:2",  # the second checkpoint's temporary file, before the rename
    "checkpoint_saved": "checkpoint_saved:2",
    "summary_written": "summary_written",
    "final_flush": "final_flush",
    "status_update": "status_update:2",  # before the succeeded status reaches the store
}
FAST = ("claim", "checkpoint_tmp", "summary_written", "status_update")


def _stage_params(fast: tuple[str, ...]) -> list:
    return [pytest.param(s, marks=() if s in fast else pytest.mark.slow) for s in STAGES]


@pytest.mark.parametrize("stage", _stage_params(FAST))
def test_kill_at_each_stage_then_resume_matches_the_uninterrupted_run(stage, new_sweep, assert_matches_reference):
    sweep = new_sweep()
    out = sweep.launch(fault=STAGES[stage])
    fired = f"parcae fault: SIGKILL at {STAGES[stage].split(':')[0]}"
    assert fired in out.stderr + sweep.logs(), f"the fault never fired:\n{out.stdout}{out.stderr}{sweep.logs()}"
    sweep.resume_until_done()
    assert_matches_reference(sweep)


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.parametrize("stage", ["first_step", "checkpoint_tmp", "summary_written"])
def test_kill_at_a_stage_under_slurm_then_resume(stage, slurm_cluster, new_sweep, assert_matches_reference):
    sweep = new_sweep()
    out = sweep.launch("--backend", "submitit", fault=STAGES[stage])
    logs = "".join(p.read_text(errors="replace") for p in sweep.root.rglob("*_log.err"))
    assert f"parcae fault: SIGKILL at {STAGES[stage].split(':')[0]}" in logs, out.stdout + out.stderr
    for _ in range(3):
        time.sleep(2)
        sweep.resume("--backend", "submitit")
        if set(sweep.state()["status"].values()) == {"succeeded"}:
            break
    assert_matches_reference(sweep)


# ---- interrupts ------------------------------------------------------------------------------

def _started(sweep) -> bool:  # noqa: ANN001
    return len(sweep.losses()) > 0


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="ctrl-c"),
                                 pytest.param(signal.SIGTERM, id="sigterm", marks=pytest.mark.slow)])
def test_interrupt_then_plain_resume_finishes_every_run(sig, new_sweep, wait_until, assert_matches_reference):
    sweep = new_sweep(resources={"max_concurrent": 1, "time_limit_min": 10, "mem_gb": 1})  # one run queued
    proc = sweep.start("launch", str(sweep.spec), "--heartbeat", "0.5", "--stale-after", "1.5")
    wait_until(lambda: _started(sweep), what="the first metrics")
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    state = sweep.state()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stdout + stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "interrupted" in lines[0], stderr
        assert f"parcae-sweep resume {SWEEP} --store {sweep.url}" in lines[0]
    # the running run and the queued one are both resumable now, without waiting for a stale window
    assert set(state["status"].values()) == {"preempted"}, state
    assert set(state["failure_kind"].values()) == {"preempted"}, state
    out = sweep.cli("resume", SWEEP, "--heartbeat", "0.5", "--stale-after", "1.5")
    assert out.returncode == 0 and "2 re-dispatched" in out.stdout, out.stdout + out.stderr
    assert_matches_reference(sweep)


def test_keyboard_interrupt_is_a_preemption() -> None:
    assert classify(KeyboardInterrupt()) == "preempted"


# ---- a finished run directory and a new store --------------------------------------------------

def test_finished_run_directory_reaches_a_new_store(reference, new_sweep, assert_matches_reference) -> None:
    """`rm store; relaunch`: every run is ingested from its directory, metrics included."""
    sweep = new_sweep()
    shutil.copytree(reference.root / "runs", sweep.root / "runs")
    out = sweep.launch()
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(sweep.state()["attempt"].values()) == {1}
    assert_matches_reference(sweep)
    out = sweep.launch()  # and again: nothing duplicated, nothing re-dispatched
    assert out.returncode == 0 and "0 dispatched" in out.stdout
    assert_matches_reference(sweep)


def test_old_run_directory_without_metric_files_gets_its_evals_and_status(reference, new_sweep) -> None:
    sweep = new_sweep()
    shutil.copytree(reference.root / "runs", sweep.root / "runs")
    for f in (sweep.root / "runs").rglob("*.jsonl"):
        f.unlink()
    out = sweep.launch()
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(sweep.state()["status"].values()) == {"succeeded"}
    assert sweep.evals() == reference.evals() and sweep.losses() == {}


# ---- never two live attempts -------------------------------------------------------------------

@pytest.mark.parametrize(("heartbeat", "stale"), [(0, 120), (-1, 120), (0.01, 120), (10, 5), (10, 29.9),
                                                  (float("nan"), 120)])
def test_unsafe_liveness_settings_are_refused(heartbeat, stale) -> None:
    with pytest.raises(ValueError, match="--heartbeat|--stale-after"):
        check_liveness(heartbeat_s=heartbeat, stale_after_s=stale)


@pytest.mark.parametrize("args", [
    ("launch", "{spec}", "--stale-after", "5"), ("launch", "{spec}", "--heartbeat", "0"),
    ("resume", SWEEP, "--heartbeat", "1", "--stale-after", "2"), ("status", "--stale-after", "2"),
])
def test_cli_refuses_a_stale_window_below_three_heartbeats(args, new_sweep) -> None:
    sweep = new_sweep()
    Store.open(sweep.url).close()  # an empty store: the refusal, not a missing store, is the error
    out = sweep.cli(*(a.format(spec=sweep.spec) for a in args))
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --"), out.stderr
    if args[0] == "launch":  # refused before anything was recorded
        with Store.open(sweep.url) as store:
            assert store.runs(SWEEP).empty


def _run_of(sweep) -> tuple[str, RunSpec]:  # noqa: ANN001
    with Store.open(sweep.url) as store:
        run_id = store.runs(SWEEP)["run_id"].iloc[0]
        return run_id, RunSpec.from_dict(store.run_spec(run_id))


def test_superseded_attempt_stops_and_a_second_worker_never_trains_alongside(new_sweep, wait_until, live_workers,
                                                                            assert_matches_reference):
    """The probe's case 2.12 with validation bypassed (library calls): a live run declared lost
    and resumed. The first worker's attempt is superseded, its writes are refused and it stops
    before the new attempt's worker takes the run directory's lock."""
    sweep = new_sweep()
    out = sweep.launch("--detach")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: len(sweep.metric_steps()) == 2, what="both runs training")
    run_id, run = _run_of(sweep)
    first = live_workers(run_id, sweep.url)
    assert len(first) == 1
    overlaps: list[str] = []
    with Store.open(sweep.url) as store:
        with store.engine.begin() as conn:  # what `status --stale-after 2` did before validation
            conn.execute(update(Run).where(Run.id == run_id).values(status="failed", failure_kind="node_lost"))
        rep = resume(store, SWEEP, get_backend("local"), store_url=sweep.url, detach=True, heartbeat_s=0.5,
                     stale_after_s=1.5)
        assert rep.dispatched == (run_id,)

        def settled() -> bool:
            row = store.runs(SWEEP).set_index("run_id").loc[run_id]
            job = row["job_id"]
            if isinstance(job, str) and job.startswith("pid:") and int(job.split(":")[2]) not in first:
                # attempt 2 trains: attempt 1 must be gone
                if any(pid in live_workers(run_id, sweep.url) for pid in first):
                    overlaps.append(f"attempt 2 ({job}) started while attempt 1 {first} was alive")
            return row["status"] in ("succeeded", "failed") and not set(first) & set(live_workers(run_id, sweep.url))

        wait_until(settled, what="the run to settle and the superseded worker to stop")
        assert not overlaps, overlaps
        row = store.runs(SWEEP).set_index("run_id").loc[run_id]
        if row["status"] == "failed":  # attempt 2 met attempt 1's lock before it stopped: refused, not run
            assert row["failure_kind"] == "locked" and str(first[0]) in row["failure_message"]
            assert sweep.resume("--include-failed").returncode == 0
        wait_until(lambda: set(sweep.state()["status"].values()) == {"succeeded"}, what="both runs")
    assert sweep.state()["attempt"][run_id] >= 2
    assert_matches_reference(sweep)


def test_fenced_writes_of_a_superseded_attempt_are_refused(new_sweep) -> None:
    sweep = new_sweep()
    assert sweep.cli("launch", str(sweep.spec), "--detach", "--backend", "local", "--max-concurrent", "1",
                     env={"PARCAE_NOOP_RUNS": "1"}).returncode == 0
    run_id, _ = _run_of(sweep)
    with Store.open(sweep.url) as store:
        time.sleep(1)
        with store.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(status="preempted"))
        old = FencedStore(store, run_id, int(store.runs(SWEEP).set_index("run_id").loc[run_id, "attempt"]))
        assert claim_runs(store, [run_id], backend="local", statuses=[RunStatus.PREEMPTED]) == {run_id: old.attempt + 1}
        for write in (lambda: old.log_metric_rows([(run_id, 1, "loss", 1.0)]), old.check,
                      lambda: old.update_run(run_id, status=RunStatus.RUNNING),
                      lambda: old.log_evals(run_id, []), lambda: old.set_provenance(run_id, {"host": "old"})):
            with pytest.raises(Superseded):
                write()
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM metrics WHERE run_id = :r"), {"r": run_id}).scalar() == 0
        assert store.runs(SWEEP).set_index("run_id").loc[run_id, "status"] == "pending"
        assert store.run_provenance(run_id) is None


def test_a_second_worker_on_a_locked_output_dir_fails_at_once_and_is_not_retried(new_sweep) -> None:
    sweep = new_sweep()
    assert sweep.cli("launch", str(sweep.spec), "--detach", env={"PARCAE_NOOP_RUNS": "1"}).returncode == 0
    time.sleep(1)
    run_id, run = _run_of(sweep)
    with Store.open(sweep.url) as store, lock_output_dir(run, attempt=99):  # held by this (test) process
        with store.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(status="preempted"))
        attempt = claim_runs(store, [run_id], backend="local", statuses=[RunStatus.PREEMPTED])[run_id]
        t0 = time.monotonic()
        out = subprocess.run(entry.command("worker", store=sweep.url, run_id=run_id, attempt=attempt),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and time.monotonic() - t0 < 60
        row = store.runs(SWEEP).set_index("run_id").loc[run_id]
        assert (row["status"], row["failure_kind"]) == ("failed", "locked")
        assert f"pid {os.getpid()}" in row["failure_message"] and LOCK_FILE in row["failure_message"]
        rep = resume(store, SWEEP, get_backend("local"), store_url=sweep.url, detach=True, heartbeat_s=0.5,
                     stale_after_s=1.5)
        assert run_id not in rep.dispatched  # plain resume does not hammer a locked directory
    with lock_output_dir(run, attempt=1):  # another process asking for a held lock is refused at once
        sub = subprocess.run([sys.executable, "-c", (
            "from parcae_scaling.model.run_spec import RunSpec; "
                "from parcae_scaling.sweeps.worker import lock_output_dir\n"
            f"run = RunSpec.from_json({run.to_json()!r})\n"
            "with lock_output_dir(run, 7): pass")], capture_output=True, text=True, timeout=60)
    assert "OutputDirLocked" in sub.stderr and f"pid {os.getpid()}" in sub.stderr


@pytest.mark.slow
def test_concurrent_status_resume_launch_against_live_runs_never_double_dispatch(new_sweep, live_worker_table):
    """launch with the shortest valid window (3 heartbeats) and a queued run, while status
    (mark_stale) and resume run in a loop beside it: every run trains once."""
    sweep = new_sweep(resources={"max_concurrent": 1, "time_limit_min": 10, "mem_gb": 1})
    proc = sweep.start("launch", str(sweep.spec), "--heartbeat", "1", "--stale-after", "3")
    doubles: list[dict[int, str]] = []  # every scan that saw more than one worker of a run
    seen = 0  # most workers of one run in a scan: 1, or the scan saw nothing and proves nothing
    with Store.open(sweep.url) as store:
        while proc.poll() is None:
            try:
                mark_stale(store, SWEEP, stale_after_s=3, heartbeat_s=1)
                resume(store, SWEEP, get_backend("local"), store_url=sweep.url, detach=True, heartbeat_s=1,
                       stale_after_s=3)
                ids = list(store.runs(SWEEP)["run_id"])
            except ValueError:  # the sweep is not recorded yet
                ids = []
            tables = [live_worker_table(r, sweep.url) for r in ids]
            doubles += [t for t in tables if len(t) > 1]
            seen = max([seen, *map(len, tables)])
            time.sleep(0.3)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    state = sweep.state()
    assert set(state["status"].values()) == {"succeeded"} and set(state["attempt"].values()) == {1}, state
    assert not doubles, doubles
    assert seen == 1
