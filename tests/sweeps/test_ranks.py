"""Data-parallel runs through the local backend: 2 torchrun processes train the 1-process run's
trajectory, rank 0 alone writes the store (audited with SQLite triggers), a rank's failure is
classified from the ranks' reports, and a SIGKILLed rank leaves a resumable node_lost run."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from parcae_scaling.db import Store
from parcae_scaling.model.contracts import NullSink
from parcae_scaling.sweeps import get_backend, launch, load_spec, plan, resume
from parcae_scaling.sweeps.backend_local import parse_job_id
from parcae_scaling.sweeps.ranks import failure_from_reports, rank_sink

RTOL = 1e-5  # 2 ranks vs 1: only the order of float sums in the gradient all-reduce differs


def _losses(store: Store, sweep: str) -> dict[int, float]:
    h = store.metric_history(sweep=sweep, names=["loss"])
    return dict(zip(h["step"].tolist(), h["value"].tolist()))


def _assert_close(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=RTOL), f"step {step}"


@pytest.mark.timeout(420)
@pytest.mark.parametrize("sharding", ["ddp", pytest.param("zero", marks=pytest.mark.slow)])
def test_two_process_local_run_matches_one_process_and_only_rank0_writes(
        sharding, write_spec, dp_spec, store_url, tmp_path, write_audit, one_process_reference) -> None:  # noqa: ANN001
    path = write_spec(dp_spec(2.5e9, sharding=sharding))
    p = plan(load_spec(path))
    assert p.runs[0].run.sharding == sharding  # zero: ZeRO-1 optimizer shards, the same trajectory
    with Store.open(store_url) as store:
        write_audit.install(store)
        rep = launch(p, store, get_backend("local"), store_url=store_url, heartbeat_s=1)
        assert rep.unfinished == () and rep.final == {"succeeded": 1}
        got = _losses(store, "dp")
        final = store.final_losses("dp")
        audit = write_audit.read(store)
    # rank 0 alone wrote: one transition per state, each metric and eval row attempted once
    assert audit["statuses"] == ["pending", "running", "succeeded"]
    assert audit["metric_writes"] == {1}
    assert audit["eval_writes"] == {t: 1 for t in p.runs[0].run.recurrences_to_evaluate()}
    assert len(got) == p.runs[0].steps
    want, want_val = one_process_reference(path, tmp_path / "reference")
    _assert_close(got, want)
    assert float(final["eval_loss"].iloc[0]) == pytest.approx(want_val, rel=RTOL)


def test_rank_sink_opens_the_store_on_rank_0_only(tmp_path: Path) -> None:
    unreachable = f"sqlite:///{tmp_path / 'no-such-dir' / 'store.sqlite'}"
    with rank_sink(unreachable, 1, heartbeat_s=1.0) as sink:
        assert isinstance(sink, NullSink)
    with pytest.raises(Exception), rank_sink(unreachable, 0, heartbeat_s=1.0):
        pass


def _report(rank: int, kind: str, t: float, message: str = "boom") -> dict[str, Any]:
    return {"rank": rank, "kind": kind, "message": message, "traceback": "Traceback ...", "time": t}


def test_failure_from_reports_classifies_the_first_real_cause() -> None:
    lost = failure_from_reports([_report(0, "error", 1.0, "RuntimeError: Connection closed by peer")], world_size=2,
                                exit_code=1)
    assert lost.failure_kind == "node_lost" and "rank(s) [1] of 2" in str(lost) and "resume" in str(lost)
    oom = failure_from_reports([_report(0, "preempted", 1.0), _report(1, "oom", 2.0, "OutOfMemoryError: x")],
                               world_size=2, exit_code=1)
    assert oom.failure_kind == "oom" and str(oom).startswith("rank 1: OutOfMemoryError")
    first = failure_from_reports([_report(0, "error", 3.0, "late"), _report(1, "error", 2.0, "ValueError: early")],
                                 world_size=2, exit_code=1)
    assert first.failure_kind == "error" and "ValueError: early" in str(first)
    stopped = failure_from_reports([_report(0, "preempted", 1.0), _report(1, "preempted", 1.1)],
                                   world_size=2, exit_code=1)
    assert stopped.failure_kind == "preempted"
    nothing = failure_from_reports([], world_size=2, exit_code=1, log="/x/launch.log")
    assert nothing.failure_kind == "error" and "/x/launch.log" in str(nothing)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    """The process below `root` (the worker) that torchrun started as `rank`."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and pid != root:
                return pid
        except OSError:
            pass
        todo += _children(pid)
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkilled_rank_fails_the_run_classified_and_resume_finishes_it(
        write_spec, dp_spec, store_url, tmp_path, wait_for, one_process_reference) -> None:  # noqa: ANN001
    path = write_spec(dp_spec(1.2e10))
    p = plan(load_spec(path))
    with Store.open(store_url) as store:
        launch(p, store, get_backend("local"), store_url=store_url, detach=True, heartbeat_s=1)
        wait_for(lambda: max(_losses(store, "dp") or {0: 0}) >= 12, what="12 steps (a checkpoint at 10)")
        _, worker = parse_job_id(store.runs("dp")["job_id"].iloc[0])  # type: ignore[misc]
        rank1 = _rank_pid(worker, 1)
        assert rank1 is not None, "rank 1 not found below the worker"
        os.kill(rank1, signal.SIGKILL)
        wait_for(lambda: store.runs("dp")["status"].iloc[0] == "failed", timeout_s=120, what="the failure")
        row = store.runs("dp").iloc[0]
        assert (row["failure_kind"] == "node_lost"
                and "rank(s) [1] of 2" in row["failure_message"]), row["failure_message"]
        killed_at = max(_losses(store, "dp"))
        assert killed_at < p.runs[0].steps, "the run finished before rank 1 was killed"
        time.sleep(1)
        rep = resume(store, "dp", get_backend("local"), store_url=store_url, heartbeat_s=1)
        assert rep.dispatched == (p.runs[0].run_id,) and rep.unfinished == ()
        row = store.runs("dp").iloc[0]
        assert row["status"] == "succeeded" and row["attempt"] == 2
        got = _losses(store, "dp")
    logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "runs" / "dp" / "_logs").glob("*.log"))
    resumed_at = [int(m) for m in re.findall(r"resumes from its checkpoint at step (\d+)", logs)]
    assert len(resumed_at) == 1 and 10 <= resumed_at[0] <= killed_at  # from the last checkpoint, not step 0
    want, _ = one_process_reference(path, tmp_path / "reference")
    _assert_close(got, want)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkilled_worker_takes_torchrun_and_its_ranks_with_it(
        write_spec, dp_spec, store_url, wait_for) -> None:  # noqa: ANN001
    p = plan(load_spec(write_spec(dp_spec(1e11))))
    assert p.runs[0].steps >= 400  # still training long after the kill
    with Store.open(store_url) as store:
        launch(p, store, get_backend("local"), store_url=store_url, detach=True, heartbeat_s=1)
        wait_for(lambda: max(_losses(store, "dp") or {0: 0}) >= 2, what="2 training steps")
        _, worker = parse_job_id(store.runs("dp")["job_id"].iloc[0])  # type: ignore[misc]
        launched = [pid for pid in (_rank_pid(worker, 0), _rank_pid(worker, 1), *_children(worker)) if pid]
        assert len(launched) >= 3, "torchrun and two ranks expected below the worker"
        os.kill(worker, signal.SIGKILL)  # no handler runs: only the kernel's parent-death signal is left
        wait_for(lambda: not any(_alive(pid) for pid in launched), timeout_s=60,
                 what="torchrun and its ranks to stop after their worker was killed")
        steps = max(_losses(store, "dp"))
        time.sleep(3)
        assert max(_losses(store, "dp")) == steps < p.runs[0].steps  # nobody trains (or writes) the run unseen
