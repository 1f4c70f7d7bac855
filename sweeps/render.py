"""Rich tables for plans and sweep status (what the CLI prints; usable from notebooks too), and
the progress views of long work: a live view on a terminal, plain lines elsewhere."""

from __future__ import annotations

import math
import time
from typing import Callable, Literal, Mapping

import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import parcae_scaling
from parcae_scaling.model.train.prepare import PrepProgress
from parcae_scaling.sweeps.plan import Plan, PlannedRun
from parcae_scaling.sweeps.progress import (
    LIVE_STATES, SweepProgress, eta_seconds, format_duration, format_eta, sweep_progress,
)

# Above this many runs a plan table shows its first and last rows only (printing 100,000 rows
# took 100 s and 0.9 GB); the totals always cover every run.
PLAN_ROWS_SHOWN = 200


def _si(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _layouts(plan: Plan) -> str:
    """The distinct process layouts of a plan's runs, e.g. "2 processes on 1 node"."""
    shapes = sorted({(r.processes, r.nodes) for r in plan.runs})
    return ", ".join(f"{p} process{'es' if p > 1 else ''} on {n} node{'s' if n > 1 else ''}" for p, n in shapes) or "-"


def _plan_row(r: PlannedRun) -> tuple[str, ...]:
    return (r.run_id, r.model, f"{r.params:,}", str(r.run.mu_rec), str(r.run.mu_bwd),
            _si(r.budget_flops), f"{r.flops_per_token:,}", f"{r.tokens:,}", f"{r.steps:,}",
            str(r.processes), str(r.nodes), f"{r.wall_hours:.3g}", f"{r.device_hours:.3g}", "; ".join(r.problems))


def plan_table(plan: Plan, *, max_rows: int | None = None, more_hint: str = "max_rows=None") -> Group:
    """The runs and totals of a plan. With max_rows, a larger plan shows its first and last
    max_rows // 2 runs and a line saying how many are left out (`more_hint` prints them all)."""
    spec = plan.spec
    t = Table(title=f"plan {plan.sweep!r} ({spec.source})")
    device = spec.resources.device
    for col in ("run id", "size", "params", "mu_rec", "mu_bwd", "budget", "FLOPs/token", "tokens", "steps",
                "procs", "nodes", "wall-hours", f"{device}-hours", "problems"):
        t.add_column(col, justify="left" if col in ("run id", "size", "problems") else "right")
    runs = plan.runs
    elided = max_rows is not None and len(runs) > max_rows
    if elided:
        half = max((max_rows or 0) // 2, 1)
        for r in runs[:half]:
            t.add_row(*_plan_row(r))
        t.add_row(f"... {len(runs) - 2 * half:,} more runs", *[""] * 12, f"({more_hint} prints every run)")
        for r in runs[-half:]:
            t.add_row(*_plan_row(r))
    else:
        for r in runs:
            t.add_row(*_plan_row(r))
    totals = Table.grid(padding=(0, 2))
    totals.add_row("runs", f"{len(plan.runs):,}")
    totals.add_row("FLOPs", f"{plan.total_flops:.4g}")
    totals.add_row("tokens", f"{plan.total_tokens:,}")
    totals.add_row("processes", f"{sum(r.processes for r in plan.runs):,} over all runs "
                                f"(per run: {_layouts(plan)})")
    totals.add_row("wall-hours", f"{plan.total_wall_hours:.4g} (runs one after another)")
    totals.add_row(f"{device}-hours", f"{plan.total_device_hours:.4g} (wall-hours x processes, "
                                      f"at MFU {spec.resources.mfu:g})")
    flagged = sum(1 for r in runs if r.problems)
    totals.add_row("flagged", f"{len(plan.problems)} problem(s) in {flagged:,} run(s)"
                   + (f"; {more_hint} lists them" if flagged and elided else ""))
    return Group(t, totals)


def status_view(df: pd.DataFrame, *, title: str = "sweep status", max_rows: int | None = None) -> Group:
    """Runs by state, then one row per run. With max_rows, a larger sweep shows its pending and
    running runs first and says how many rows are left out (the counts cover every run)."""
    counts = Table.grid(padding=(0, 2))
    for state, n in df["status"].value_counts().items():
        counts.add_row(str(state), str(int(n)))
    t = Table(title=title)
    # runs last (re)started by another parcae-scaling (status_table's other_version) get a column
    other = df["other_version"].fillna(False).astype(bool) if "other_version" in df else pd.Series(False, df.index)
    cols = ("run id", "size", "mu_rec", "budget", "state", "progress", "tokens", "last loss", "attempt", "failure")
    for col in cols + (("other code",) if other.any() else ()):
        t.add_column(col)
    shown = df
    captions = []
    if max_rows is not None and len(df) > max_rows:
        live = df["status"].isin(LIVE_STATES)
        shown = pd.concat([df[live], df[~live]]).head(max_rows)
        captions.append(f"{len(df) - len(shown):,} more runs not shown; `parcae-sweep status` lists every run")
    if other.any():
        captions.append(f"other code: {int(other.sum()):,} run(s) last trained by another parcae-scaling than "
                        f"this {parcae_scaling.__version__}; `parcae-sweep status SWEEP --run RUN_ID` shows "
                        "a run's provenance")
    t.caption = "\n".join(captions) or None
    for r in shown.itertuples():
        failure = "" if not isinstance(r.failure_kind, str) else r.failure_kind
        if isinstance(r.failure_message, str) and failure:
            failure += ": " + r.failure_message.splitlines()[0][:60]
        flag = ((f"* {r.package_version}" if other[r.Index] else "",) if other.any() else ())
        t.add_row(r.run_id, r.model, str(r.mu_rec), _si(r.budget_flops), r.status,
                  ProgressBar(total=1.0, completed=float(min(max(r.progress, 0.0), 1.0)), width=20),
                  f"{_si(r.tokens_done)}/{_si(r.tokens)}", "-" if math.isnan(r.last_loss) else f"{r.last_loss:.4f}",
                  str(r.attempt), failure, *flag)
    return Group(counts, t)


# ---- progress of long work (launch/resume waiting for a sweep, train-one's steps) -------------
ProgressMode = Literal["auto", "live", "plain", "none"]
PLAIN_EVERY_S = 30.0  # a plain line at most this often: a readable CI log even for a day-long sweep
# A sweep's live view shows as many runs as fit the terminal beside these lines: the summary, up
# to 8 state counts, the table's title, header and borders, its caption and a spare.
_LIVE_VIEW_LINES = 16
# The plain line's order: what moves first, then what is done for good.
_LINE_STATES = ("running", "pending", "planned", "preempted", "failed", "diverged", "cancelled")


def sweep_progress_line(p: SweepProgress, *, elapsed_s: float, eta_s: float | None) -> str:
    """e.g. `[03:12] 5/16 succeeded, 2 running, 9 pending; 38% of planned FLOPs; ETA 05:10`."""
    states = [f"{p.counts.get('succeeded', 0)}/{p.runs} succeeded"]
    states += [f"{p.counts[s]} {s}" for s in _LINE_STATES if p.counts.get(s)]
    percent = math.floor(100 * p.fraction_done)  # floored: 100% only when every planned FLOP is done
    return f"[{format_duration(elapsed_s)}] {', '.join(states)}; {percent}% of planned FLOPs; {format_eta(eta_s)}"


def step_progress_line(step: int, total_steps: int, *, loss: float | None, elapsed_s: float,
                       eta_s: float | None) -> str:
    """e.g. `[00:12] step 24/64 (37%); loss 2.8123; ETA 00:20`."""
    percent = math.floor(100 * step / total_steps) if total_steps > 0 else 0
    shown = "-" if loss is None or math.isnan(loss) else f"{loss:.4f}"
    return f"[{format_duration(elapsed_s)}] step {step}/{total_steps} ({percent}%); loss {shown}; {format_eta(eta_s)}"


def resolve_progress_mode(mode: ProgressMode, console: Console) -> Literal["live", "plain", "none"]:
    """auto: a live view when the console is a terminal, plain lines otherwise (a pipe, a log)."""
    if mode == "auto":
        return "live" if console.is_terminal else "plain"
    return mode


class _Watch:
    """Shows long work as it changes: a rich Live view redrawn at each update ("live"), a plain
    line at most every `every_s` seconds and the latest one at exit ("plain": no control codes,
    flushed at once for logs), or nothing ("none"). Use as a context manager."""

    def __init__(self, console: Console, mode: ProgressMode, *, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.mode = console, resolve_progress_mode(mode, console)
        self.every_s, self.clock = every_s, clock
        self._t0 = clock()
        self._live: Live | None = None
        self._printed_at: float | None = None
        self._printed = ""  # the last line printed
        self._unprinted: str | None = None  # the latest line, when throttling held it back
        self._baseline: tuple[float, float] | None = None  # (elapsed s, work done) when the work started
        self._started = False

    def elapsed_s(self) -> float:
        return self.clock() - self._t0

    def _eta(self, elapsed_s: float, done: float, remaining: float, *, started: bool) -> float | None:
        """ETA from the work done since it started (sweeps/progress.eta_seconds): until `started`,
        the baseline follows the updates, so start-up (queueing, imports, loading data) does not
        count as slow training."""
        if self._baseline is None or not self._started:
            self._baseline, self._started = (elapsed_s, done), started
        t0, done0 = self._baseline
        return eta_seconds(done_since_start=done - done0, remaining=remaining, elapsed_s=elapsed_s - t0)

    def _show(self, line: str, view: Callable[[], RenderableType]) -> None:
        if self.mode == "live":
            if self._live is None:
                self._live = Live(view(), console=self.console, auto_refresh=False)
                self._live.start(refresh=True)
            else:
                self._live.update(view(), refresh=True)
        elif self.mode == "plain":
            now = self.clock()
            if self._printed_at is None or now - self._printed_at >= self.every_s:
                self._print(line)
                self._printed_at = now
            else:
                self._unprinted = line

    def _print(self, line: str) -> None:
        self.console.file.write(line + "\n")  # not console.print: no markup, wrapping or colour
        self.console.file.flush()
        self._printed, self._unprinted = line, None

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        # the latest line, unless only its elapsed time ("[mm:ss] ...") differs from the last one
        if self._unprinted is not None and self._unprinted.split("] ", 1)[-1] != self._printed.split("] ", 1)[-1]:
            self._print(self._unprinted)

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SweepWatch(_Watch):
    """The `on_poll` of a blocking launch/resume: runs by state, the share of planned FLOPs done,
    elapsed time and ETA; the live view adds per-run progress and last loss (status_view)."""

    def __init__(self, console: Console, mode: ProgressMode, *, title: str, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console, mode, every_s=every_s, clock=clock)
        self.title = title

    def __call__(self, status: pd.DataFrame) -> None:
        if self.mode == "none":
            return
        elapsed = self.elapsed_s()
        p = sweep_progress(status)
        started = bool(p.counts.get("running")) or (self._baseline is not None and p.done_flops > self._baseline[1])
        eta = self._eta(elapsed, p.done_flops, p.remaining_flops, started=started)
        line = sweep_progress_line(p, elapsed_s=elapsed, eta_s=eta)
        rows = max(self.console.height - _LIVE_VIEW_LINES, 4)  # a taller view would scroll off the terminal
        self._show(line, lambda: Group(Text(line), status_view(status, title=self.title, max_rows=rows)))


class StepWatch(_Watch):
    """Step progress of one training run (train-one), fed by its metrics rows."""

    def __init__(self, console: Console, mode: ProgressMode, *, total_steps: int, title: str,
                 every_s: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console, mode, every_s=every_s, clock=clock)
        self.total_steps, self.title = total_steps, title

    def __call__(self, step: int, values: Mapping[str, float]) -> None:
        if self.mode == "none":
            return
        elapsed = self.elapsed_s()
        loss = values.get("loss")
        eta = self._eta(elapsed, float(step), float(max(self.total_steps - step, 0)), started=True)
        line = step_progress_line(step, self.total_steps, loss=loss, elapsed_s=elapsed, eta_s=eta)

        def view() -> RenderableType:
            grid = Table.grid(padding=(0, 2))
            grid.add_row(self.title, ProgressBar(total=max(self.total_steps, 1), completed=step, width=40), line)
            return grid
        self._show(line, view)


def prep_progress_line(p: PrepProgress) -> str:
    """e.g. `[00:12] train: 12,000/50,000 rows (24%); 11,800 documents, 5.2M tokens; 983 documents/s,
    431k tokens/s; ETA 00:40` (rates over the whole tokenization so far)."""
    percent = math.floor(100 * p.rows_done / p.rows_total) if p.rows_total > 0 else 100
    rate = (lambda n: _si(n / p.elapsed_s)) if p.elapsed_s > 0 else (lambda n: "-")
    eta = eta_seconds(done_since_start=p.rows_done, remaining=p.rows_total - p.rows_done, elapsed_s=p.elapsed_s)
    return (f"[{format_duration(p.elapsed_s)}] {p.label}: {p.rows_done:,}/{p.rows_total:,} rows ({percent}%); "
            f"{p.documents:,} documents, {_si(p.tokens)} tokens; {rate(p.documents)} documents/s, "
            f"{rate(p.tokens)} tokens/s; {format_eta(eta)}")


class PrepWatch(_Watch):
    """Tokenization progress of `prepare-data` (model/train/prepare.py `PrepProgress`): a bar per
    split on a terminal, plain lines otherwise, and each split's final line always."""

    def __call__(self, p: PrepProgress) -> None:
        if self.mode == "none":
            return
        line = prep_progress_line(p)

        def view() -> RenderableType:
            grid = Table.grid(padding=(0, 2))
            grid.add_row(p.label, ProgressBar(total=max(p.rows_total, 1), completed=p.rows_done, width=40), line)
            return grid
        if p.done and self.mode == "plain":  # a split's totals are never throttled away
            self._print(line)
            self._printed_at = self.clock()
        else:
            self._show(line, view)
