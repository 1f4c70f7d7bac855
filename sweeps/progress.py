"""How far long work is, and when it will end: pure functions over the status frame
(sweeps.launch.status_table) and over step counts. What `launch`, `resume` and `train-one` show
while they wait (rendered by sweeps/render.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from parcae_scaling.model.contracts import RunStatus

# The runs a blocking launch/resume is still waiting for; planned or preempted runs wait for the
# next launch/resume, so their work is not "remaining" for this one.
LIVE_STATES = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


def eta_seconds(*, done_since_start: float, remaining: float, elapsed_s: float) -> float | None:
    """Seconds until `remaining` units of work are done at the rate measured so far.

    rate = done_since_start / elapsed_s (work finished since observation began, e.g. FLOPs or
    steps), so eta = remaining / rate = remaining * elapsed_s / done_since_start. Work done before
    observation began (an earlier launch, a resumed checkpoint) is left out of the rate, else a
    relaunch of a mostly finished sweep would promise an ETA of seconds. None ("ETA unknown")
    until something has progressed; 0 when nothing remains."""
    if remaining <= 0:
        return 0.0
    if done_since_start <= 0 or elapsed_s <= 0:
        return None
    return remaining * elapsed_s / done_since_start


@dataclass(frozen=True, kw_only=True)
class SweepProgress:
    """A sweep's runs by state and its planned FLOPs: done, and still to do by live runs."""

    counts: dict[str, int]  # state -> runs, in RunStatus order, states with runs only
    runs: int
    planned_flops: float  # every run's, FLOPs per token x planned tokens
    done_flops: float  # succeeded runs in full, every other run's progress fraction of its own
    remaining_flops: float  # the untrained part of pending and running runs

    @property
    def fraction_done(self) -> float:
        return self.done_flops / self.planned_flops if self.planned_flops > 0 else 0.0


def sweep_progress(status: pd.DataFrame) -> SweepProgress:
    """Summarise a status frame (columns status, progress, planned_flops; status_table's)."""
    counts = status["status"].value_counts()
    ordered = {s.value: int(counts[s.value]) for s in RunStatus if counts.get(s.value, 0)}
    # status_table sets a succeeded run's progress to 1; clip guards a run logged past its plan
    progress = status["progress"].astype(float).fillna(0.0).clip(0.0, 1.0)
    planned = status["planned_flops"].astype(float)
    live = status["status"].isin(LIVE_STATES)
    return SweepProgress(counts=ordered, runs=len(status), planned_flops=float(planned.sum()),
                         done_flops=float((progress * planned).sum()),
                         remaining_flops=float(((1.0 - progress) * planned)[live].sum()))


def format_duration(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on (e.g. 03:12, 1:05:09)."""
    total = max(int(round(seconds)), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_eta(eta_s: float | None) -> str:
    return "ETA unknown" if eta_s is None else f"ETA {format_duration(eta_s)}"
