"""Progress of long work: the ETA and summary math (sweeps/progress.py) and the plain and live
renderings of it (sweeps/render.py) on fake status frames and a fake clock."""

from __future__ import annotations

import io
import re

import pandas as pd
import pytest
from rich.console import Console

from parcae_scaling.sweeps.progress import eta_seconds, format_duration, format_eta, sweep_progress
from parcae_scaling.sweeps.render import (
    StepWatch, SweepWatch, resolve_progress_mode, status_view, step_progress_line, sweep_progress_line,
)

ANSI = re.compile(r"\x1b\[")


def _status(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    """A status_table-like frame from (state, progress, planned FLOPs) per run."""
    return pd.DataFrame({
        "run_id": [f"r{i}" for i in range(len(rows))], "model": "tiny", "mu_rec": 2, "budget_flops": 1e12,
        "status": [s for s, _, _ in rows], "progress": [p for _, p, _ in rows],
        "planned_flops": [f for _, _, f in rows], "tokens_done": [int(1000 * p) for _, p, _ in rows],
        "tokens": 1000, "last_loss": 3.0, "attempt": 1, "failure_kind": None, "failure_message": None,
    })


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_remaining_work_at_the_rate_so_far() -> None:
    assert eta_seconds(done_since_start=25.0, remaining=75.0, elapsed_s=10.0) == pytest.approx(30.0)
    assert eta_seconds(done_since_start=0.0, remaining=75.0, elapsed_s=10.0) is None  # nothing progressed yet
    assert eta_seconds(done_since_start=5.0, remaining=75.0, elapsed_s=0.0) is None
    assert eta_seconds(done_since_start=0.0, remaining=0.0, elapsed_s=0.0) == 0.0  # nothing left
    assert format_eta(None) == "ETA unknown" and format_eta(310.0) == "ETA 05:10"
    assert format_duration(192) == "03:12" and format_duration(3909) == "1:05:09" and format_duration(-3) == "00:00"


def test_sweep_progress_counts_done_and_remaining_flops() -> None:
    df = _status([("succeeded", 1.0, 100.0), ("running", 0.5, 200.0), ("pending", 0.0, 100.0),
                  ("failed", 0.25, 400.0), ("planned", 0.0, 200.0)])
    p = sweep_progress(df)
    assert p.counts == {"planned": 1, "pending": 1, "running": 1, "succeeded": 1, "failed": 1}  # RunStatus order
    assert p.runs == 5 and p.planned_flops == 1000.0
    assert p.done_flops == pytest.approx(100 + 100 + 100)  # succeeded in full, the others' progress
    assert p.remaining_flops == pytest.approx(100 + 100)  # pending and running only: no one trains the rest now
    assert p.fraction_done == pytest.approx(0.3)
    assert sweep_progress(_status([])).fraction_done == 0.0


def test_plain_sweep_line() -> None:
    df = _status([("succeeded", 1.0, 100.0)] * 5 + [("running", 0.5, 100.0)] * 2 + [("pending", 0.0, 100.0)] * 9)
    line = sweep_progress_line(sweep_progress(df), elapsed_s=192, eta_s=310)
    assert line == "[03:12] 5/16 succeeded, 2 running, 9 pending; 37% of planned FLOPs; ETA 05:10"
    almost = sweep_progress(_status([("succeeded", 1.0, 100.0), ("running", 0.999, 100.0)]))
    assert "99% of planned FLOPs; ETA unknown" in sweep_progress_line(almost, elapsed_s=0, eta_s=None)
    assert step_progress_line(24, 64, loss=2.81234, elapsed_s=12, eta_s=20) == \
        "[00:12] step 24/64 (37%); loss 2.8123; ETA 00:20"
    assert "loss -" in step_progress_line(1, 64, loss=float("nan"), elapsed_s=0, eta_s=None)


def test_plain_watch_prints_a_line_now_and_then_and_the_last_at_exit() -> None:
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out)  # not a terminal
    assert resolve_progress_mode("auto", console) == "plain"
    start = _status([("pending", 0.0, 100.0), ("pending", 0.0, 100.0)])
    early = _status([("running", 0.1, 100.0), ("pending", 0.0, 100.0)])
    half = _status([("running", 0.5, 100.0), ("pending", 0.0, 100.0)])
    done = _status([("succeeded", 1.0, 100.0), ("succeeded", 1.0, 100.0)])
    with SweepWatch(console, "auto", title="sweep t", every_s=30, clock=clock) as watch:
        watch(start)  # first poll: printed at once
        clock.now += 10
        watch(early)  # within 30 s of the last line: held back; training started: the rate counts from here
        clock.now += 25
        watch(half)  # printed: 40 FLOPs in 25 s since the start, 150 left (50 running, 100 pending)
        clock.now += 5
        watch(done)  # held back, then printed at exit
    lines = out.getvalue().splitlines()
    assert lines == [
        "[00:00] 0/2 succeeded, 2 pending; 0% of planned FLOPs; ETA unknown",
        "[00:35] 0/2 succeeded, 1 running, 1 pending; 25% of planned FLOPs; ETA 01:34",  # 150 * 25 / 40 s
        "[00:40] 2/2 succeeded; 100% of planned FLOPs; ETA 00:00",
    ]
    assert not ANSI.search(out.getvalue())
    again = io.StringIO()
    with SweepWatch(Console(file=again), "plain", title="sweep t", every_s=30, clock=clock) as watch:
        watch(done)
        clock.now += 2
        watch(done)  # the same line but for its time: not printed again at exit
    assert again.getvalue().splitlines() == ["[00:00] 2/2 succeeded; 100% of planned FLOPs; ETA 00:00"]


def test_watch_none_prints_nothing_and_live_draws_a_view() -> None:
    out = io.StringIO()
    df = _status([("running", 0.5, 100.0)])
    with SweepWatch(Console(file=out), "none", title="sweep t") as watch:
        watch(df)
    assert out.getvalue() == ""
    live = io.StringIO()
    with SweepWatch(Console(file=live, force_terminal=True, width=160), "auto", title="sweep t") as watch:
        watch(df)
    assert watch.mode == "live" and "sweep t" in live.getvalue() and "r0" in live.getvalue()
    assert "1 running" in live.getvalue()


def test_step_watch_plain() -> None:
    out, clock = io.StringIO(), FakeClock()
    with StepWatch(Console(file=out), "plain", total_steps=16, title="run x", every_s=30, clock=clock) as watch:
        watch(8, {"loss": 3.5})
        clock.now += 4
        watch(16, {"loss": 3.25})
    assert out.getvalue().splitlines() == ["[00:00] step 8/16 (50%); loss 3.5000; ETA unknown",
                                           "[00:04] step 16/16 (100%); loss 3.2500; ETA 00:00"]


def test_status_view_caps_rows_and_shows_live_runs_first() -> None:
    df = _status([("succeeded", 1.0, 100.0)] * 5 + [("running", 0.5, 100.0)])
    out = io.StringIO()
    Console(file=out, width=200).print(status_view(df, title="t", max_rows=2))
    text = out.getvalue()
    assert "r5" in text and "r0" in text and "r1" not in text  # the running run, then the first others
    assert "4 more runs not shown" in text
    assert "succeeded  5" in text  # the counts cover every run
