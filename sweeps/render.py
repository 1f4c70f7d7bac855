"""Rich tables for plans and sweep status (what the CLI prints; usable from notebooks too)."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table

from parcae_scaling.sweeps.plan import Plan, PlannedRun

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


def status_view(df: pd.DataFrame, *, title: str = "sweep status") -> Group:
    counts = Table.grid(padding=(0, 2))
    for state, n in df["status"].value_counts().items():
        counts.add_row(str(state), str(int(n)))
    t = Table(title=title)
    for col in ("run id", "size", "mu_rec", "budget", "state", "progress", "tokens", "last loss", "attempt", "failure"):
        t.add_column(col)
    for r in df.itertuples():
        failure = "" if not isinstance(r.failure_kind, str) else r.failure_kind
        if isinstance(r.failure_message, str) and failure:
            failure += ": " + r.failure_message.splitlines()[0][:60]
        t.add_row(r.run_id, r.model, str(r.mu_rec), _si(r.budget_flops), r.status,
                  ProgressBar(total=1.0, completed=float(min(max(r.progress, 0.0), 1.0)), width=20),
                  f"{_si(r.tokens_done)}/{_si(r.tokens)}", "-" if math.isnan(r.last_loss) else f"{r.last_loss:.4f}",
                  str(r.attempt), failure)
    return Group(counts, t)
