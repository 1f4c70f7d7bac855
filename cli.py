"""Command-line entry points: `parcae-sweep` and `parcae-fit`.

Argument parsing and printing only; every command calls the library API.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

# What the library raises for a failure the user can act on: bad input (ValueError: SpecError,
# ConfigDriftError, ...), the environment (OSError) and failed operations (RuntimeError: the
# store's StoreError/SchemaError, the backends' BackendError). KeyboardInterrupt is not among them.
USER_ERRORS = (ValueError, OSError, RuntimeError)
TRACEBACK_ENV = "PARCAE_TRACEBACK"  # =1: let errors through with their traceback (debugging)


def _fail(err: BaseException) -> NoReturn:
    """Print a library error as one `error:` line (newlines collapsed) and exit 1."""
    message = " ".join(str(err).split()) or type(err).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


class _ErrorBoundary(TyperGroup):
    """The one error boundary of every command of both apps: a library error becomes one line."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise  # exit signals, RuntimeErrors themselves: pass on
        except USER_ERRORS as err:
            if os.environ.get(TRACEBACK_ENV) == "1":
                raise
            _fail(err)


sweep_app = typer.Typer(
    name="parcae-sweep",
    help="Plan, launch and track FLOP-matched sweeps of looped (Parcae) language models.",
    no_args_is_help=True,
    add_completion=False,
    cls=_ErrorBoundary,
)
fit_app = typer.Typer(
    name="parcae-fit",
    help="Fit scaling laws to sweep results and draw publication figures.",
    no_args_is_help=True,
    add_completion=False,
    cls=_ErrorBoundary,
)


@sweep_app.command("train-one")
def train_one_command(
    model: str = typer.Option("parcae-tiny-64", help="Model config name (see model/config.py)."),
    mu_rec: int = typer.Option(2, help="Mean recurrence (ignored for transformer-* configs)."),
    budget_flops: float = typer.Option(2e11, help="FLOP budget; tokens = budget / FLOPs-per-token."),
    tokens: int = typer.Option(None, help="Train this many tokens instead of a FLOP budget."),
    batch_size: int = typer.Option(16, help="Sequences per micro-batch."),
    seq_len: int = typer.Option(128, help="Context length."),
    optimizer: str = typer.Option("adamw", help="adamw | muon (Muon on matrices + AdamW)."),
    lr: float = typer.Option(3e-3, help="Peak learning rate."),
    seed: int = typer.Option(0, help="Seed for init, batches and depths."),
    tokenizer: str = typer.Option("byte", help="byte | bpe (trained locally on the corpus)."),
    eval_tokens: int = typer.Option(16_384, help="Validation tokens per evaluated recurrence."),
    output_dir: str = typer.Option(None, help="Run directory (default runs/train-one-<run id>)."),
    spec: str = typer.Option(None, help="Train a RunSpec JSON file instead (other options ignored)."),
    threads: int = typer.Option(1, help="torch CPU threads; 1 is fastest for tiny models on a busy box."),
    nproc: int = typer.Option(None, help="Data-parallel processes on this node (torchrun); batch size is per "
                              "process. Default: the spec's nproc_per_node, else 1."),
) -> None:
    """Train one run end to end (default: a tiny Parcae on the embedded corpus) and print its summary."""
    import json

    import torch

    from parcae_scaling.model.run_spec import RunSpec
    from parcae_scaling.sweeps.train_one import train_one, train_one_spec

    torch.set_num_threads(threads)
    if spec:
        run = RunSpec.from_file(spec)
    else:
        run = train_one_spec(model=model, mu_rec=mu_rec, budget_flops=budget_flops,
                             tokens=tokens, batch_size=batch_size, seq_len=seq_len, optimizer=optimizer,
                             lr=lr, seed=seed, tokenizer=tokenizer, eval_tokens=eval_tokens,
                             output_dir=output_dir, nproc_per_node=1 if nproc is None else nproc)
    if spec and nproc is not None:
        run = run.replace(nproc_per_node=nproc)
    if run.world_size > 1:
        from parcae_scaling.sweeps.ranks import launch_local

        result = launch_local(run, threads=threads)
        typer.echo(json.dumps(result.to_dict(), indent=2))
        if result.status.value != "succeeded":
            raise typer.Exit(code=1)
        return
    out = train_one(run)
    r = out.result
    typer.echo(json.dumps(r.to_dict(), indent=2))
    typer.echo(f"data: {out.data_description}")
    if out.unigram_entropy_nats is not None and r.final_val_loss is not None:
        typer.echo(f"val loss {r.final_val_loss:.4f} nats/token vs unigram entropy "
                   f"{out.unigram_entropy_nats:.4f} nats/token")
    if r.status.value != "succeeded":
        raise typer.Exit(code=1)


@sweep_app.command("configs")
def configs_command(
    convention: str = typer.Option("reference", help="FLOP convention: reference | exact."),
    contains: str = typer.Option("", help="Only configs whose name contains this text."),
) -> None:
    """List the named model configs with parameter counts and FLOPs per token."""
    from rich.console import Console
    from rich.table import Table

    from parcae_scaling.model import get_config, list_configs
    from parcae_scaling.model.flops import config_summary

    rows = [config_summary(get_config(n), convention) for n in list_configs() if contains in n]
    table = Table("name", "layers", "d", "params", "non-emb", "core", "mu_rec/mu_bwd", f"FLOPs/token ({convention})")
    for r in rows:
        table.add_row(r["name"], r["layers"], str(r["d_model"]), f"{r['params']:,}", f"{r['non_embedding']:,}",
                      f"{r['core']:,}", f"{r['mu_rec']}/{r['mu_bwd']}", f"{r['flops_per_token']:,}")
    Console(width=200).print(table)  # wide: exact counts must never be truncated


@sweep_app.command("flops")
def flops_command(
    name: str = typer.Argument(..., help="Model config name, e.g. parcae-small-140m."),
    mu_rec: int = typer.Option(None, help="Mean recurrence (default: the config's)."),
    mu_bwd: int = typer.Option(None, help="Backprop depth (default: ceil(mu_rec / 2))."),
    seq_len: int = typer.Option(None, help="Context length for attention FLOPs (default: the config's)."),
    budget: float = typer.Option(None, help="Also print the tokens this FLOP budget buys."),
) -> None:
    """FLOPs per token of one config under every convention (and tokens for a budget)."""
    from parcae_scaling.model import get_config
    from parcae_scaling.model.flops import FLOP_CONVENTIONS, flops_per_token, tokens_for_budget

    overrides = {k: v for k, v in {"mu_rec": mu_rec, "mu_bwd": mu_bwd, "seq_len": seq_len}.items() if v is not None}
    config = get_config(name, **overrides)
    for convention in FLOP_CONVENTIONS:
        fpt = flops_per_token(config, convention=convention)
        extra = f"  tokens for {budget:.3g} FLOPs: {tokens_for_budget(budget, fpt):,}" if budget else ""
        typer.echo(f"{convention:>9}: {fpt:,} FLOPs/token (mu_rec={config.mu_rec}, mu_bwd={config.mu_bwd}){extra}")


# ---- parcae-sweep plan | launch | status | resume | cancel (library: sweeps/) ------------------
_SPEC = typer.Argument(None, help="Sweep spec (.yaml/.toml) or a built-in name; default: the built-in 'default'.")
_STORE_URL = typer.Option("sqlite:///parcae.sqlite", "--store", help="Store URL (SQLite file or PostgreSQL).")
_BACKEND = typer.Option("local", "--backend", help="local | submitit | ray")
_DETACH = typer.Option(False, "--detach", help="Return after submission (local, submitit).")
_HEARTBEAT = typer.Option(10.0, "--heartbeat", help="Worker heartbeat interval (s).")
_STALE = typer.Option(120.0, "--stale-after", help="A running run with no heartbeat for this long is lost (s).")


def _sweep_backend(name: str, partition: str | None = None, address: str | None = None):  # noqa: ANN202
    from parcae_scaling.sweeps.backend import get_backend

    opts = {"submitit": {"partition": partition}, "ray": {"address": address}}.get(name, {})
    return get_backend(name, **{k: v for k, v in opts.items() if v is not None})


def _open_store(url: str, *, write: bool, create: bool = False):  # noqa: ANN202
    """The store of a command. Only `launch` creates one (a mistyped path must not become an empty
    store); only write commands migrate an older schema, an SQLite file after copying it aside."""
    from parcae_scaling.db import Store

    st = Store.open(url, create=create, upgrade=write)
    if st.backup is not None:
        typer.echo(f"migrated store {url} to the current schema; its previous copy is {st.backup}", err=True)
    return st


@sweep_app.command("plan")
def plan_command(spec: str = _SPEC,
                 budget_hours: float = typer.Option(None, "--budget-hours",
                                                    help="Refuse plans over this many device-hours."),
                 all_rows: bool = typer.Option(False, "--all", help="Print every run (default: the first and last "
                                               "runs of a large plan, and the totals).")) -> None:
    """Validate a sweep spec and print its runs, costs and flagged problems (writes nothing)."""
    from rich.console import Console

    from parcae_scaling.sweeps import load_spec, plan
    from parcae_scaling.sweeps.render import PLAN_ROWS_SHOWN, plan_table

    p = plan(load_spec(spec or "default"))
    Console(width=200).print(plan_table(p, max_rows=None if all_rows else PLAN_ROWS_SHOWN, more_hint="--all"))
    if budget_hours is not None:
        p.check_budget(budget_hours)


def _interrupted(sweep: str, store: str) -> NoReturn:
    """Ctrl-C during launch/resume: one line on what happened and how to continue; exit 130."""
    typer.echo(f"interrupted: the runs of sweep {sweep} that were stopped or never started are preempted "
               f"(resumable); continue with: parcae-sweep resume {sweep} --store {store}", err=True)
    raise typer.Exit(code=130)


@sweep_app.command("launch")
def launch_command(spec: str = _SPEC,
                   default: bool = typer.Option(False, "--default", help="Launch the built-in default sweep."),
                   store: str = _STORE_URL, backend: str = _BACKEND, detach: bool = _DETACH,
                   allow_drift: bool = typer.Option(False, "--allow-drift",
                                                    help="Accept a changed spec for a recorded sweep."),
                   budget_hours: float = typer.Option(None, "--budget-hours",
                                                      help="Refuse plans over this many device-hours."),
                   max_concurrent: int = typer.Option(None, "--max-concurrent", min=1,
                                                      help="Override resources.max_concurrent."),
                   partition: str = typer.Option(None, "--partition", help="SLURM partition (submitit)."),
                   address: str = typer.Option(None, "--address", help="Ray cluster address (default: start one)."),
                   heartbeat: float = _HEARTBEAT, stale_after: float = _STALE) -> None:
    """Record a sweep in the store and dispatch every run not yet done (safe to repeat)."""
    import dataclasses

    from parcae_scaling.sweeps import launch, load_spec, plan

    p = plan(load_spec("default" if default or not spec else spec))
    if budget_hours is not None:
        p.check_budget(budget_hours)
    res = p.spec.resources if max_concurrent is None else dataclasses.replace(p.spec.resources,
                                                                              max_concurrent=max_concurrent)
    with _open_store(store, write=True, create=True) as st:
        try:
            rep = launch(p, st, _sweep_backend(backend, partition, address), store_url=store, detach=detach,
                         allow_drift=allow_drift, heartbeat_s=heartbeat, stale_after_s=stale_after, resources=res)
        except KeyboardInterrupt:
            _interrupted(p.sweep, store)
    typer.echo(f"sweep {rep.sweep}: {rep.planned} runs planned, {rep.newly_recorded} newly recorded, "
               f"{len(rep.dispatched)} dispatched on {backend}" + (" (detached)" if detach else ""))
    typer.echo("states: " + ", ".join(f"{k}={v}" for k, v in sorted(rep.final.items())))
    if rep.unfinished:  # only what this call dispatched: another launch's runs are not our failure
        typer.echo(f"{len(rep.unfinished)} dispatched run(s) did not succeed; "
                   f"see `parcae-sweep status {rep.sweep}`", err=True)
        raise typer.Exit(code=1)


@sweep_app.command("status")
def status_command(sweep: str = typer.Argument(None, help="Sweep name (default: all sweeps)."), store: str = _STORE_URL,
                   watch: float = typer.Option(0.0, "--watch", help="Refresh every N seconds (live view)."),
                   stale_after: float = _STALE) -> None:
    """Runs by state with progress, last loss and failure kind; stale heartbeats become node_lost."""
    import time

    from rich.console import Console
    from rich.live import Live

    from parcae_scaling.sweeps import mark_stale, status_table
    from parcae_scaling.sweeps.render import status_view

    with _open_store(store, write=False) as st:
        if sweep is not None:
            st.require_sweep(sweep)

        def view():  # noqa: ANN202
            mark_stale(st, sweep, stale_after_s=stale_after)
            return status_view(status_table(st, sweep), title=f"sweep {sweep or '(all)'}")
        if watch <= 0:
            Console(width=200).print(view())
            return
        with Live(view(), refresh_per_second=1) as live:
            while True:
                time.sleep(watch)
                live.update(view())


@sweep_app.command("resume")
def resume_command(sweep: str = typer.Argument("default", help="Sweep name in the store."), store: str = _STORE_URL,
                   backend: str = _BACKEND, detach: bool = _DETACH,
                   include_failed: bool = typer.Option(False, "--include-failed",
                                                       help="Also retry oom/error/cancelled runs."),
                   spec: str = typer.Option(None, "--spec", help="Check (and with --allow-drift, apply) this spec."),
                   allow_drift: bool = typer.Option(False, "--allow-drift", help="Accept a changed spec."),
                   partition: str = typer.Option(None, "--partition"), address: str = typer.Option(None, "--address"),
                   heartbeat: float = _HEARTBEAT, stale_after: float = _STALE) -> None:
    """Re-dispatch lost, preempted and retryable failed runs from their checkpoints."""
    from parcae_scaling.sweeps import load_spec, resume

    with _open_store(store, write=True) as st:
        try:
            rep = resume(st, sweep, _sweep_backend(backend, partition, address), store_url=store, detach=detach,
                         include_failed=include_failed, heartbeat_s=heartbeat, stale_after_s=stale_after,
                         spec=load_spec(spec) if spec else None, allow_drift=allow_drift)
        except KeyboardInterrupt:
            _interrupted(sweep, store)
    typer.echo(f"sweep {sweep}: {len(rep.lost)} lost, {len(rep.dispatched)} re-dispatched on {backend}")
    typer.echo("states: " + ", ".join(f"{k}={v}" for k, v in sorted(rep.final.items())))
    if rep.unfinished:
        raise typer.Exit(code=1)


@sweep_app.command("cancel")
def cancel_command(sweep: str = typer.Argument(None, help="Sweep name."), store: str = _STORE_URL,
                   run: list[str] = typer.Option(None, "--run", help="Only these run ids."),
                   all_sweeps: bool = typer.Option(False, "--all", help="Every live run of every sweep.")) -> None:
    """Cancel live runs (they stay resumable with `resume --include-failed`)."""
    from parcae_scaling.sweeps import cancel

    if sweep is None and not run and not all_sweeps:  # never cancel everything by omission
        raise typer.BadParameter("give a sweep name, --run RUN_ID, or --all to cancel every live run of every sweep",
                                 param_hint="'SWEEP'")
    with _open_store(store, write=True) as st:
        if sweep is not None:
            st.require_sweep(sweep)
        ids = cancel(st, sweep, run_ids=run or None)
    typer.echo(f"cancelled {len(ids)} run(s)" + (": " + ", ".join(ids) if ids else ""))


# ---- parcae-fit ---------------------------------------------------------------------------
from pathlib import Path as _Path  # noqa: E402
from typing import Annotated as _Ann, Optional as _Opt  # noqa: E402

_CSV = _Ann[_Opt[_Path], typer.Argument(help="results CSV (run table; see scaling/data.py)")]
_STORE = _Ann[_Opt[str], typer.Option("--store", help="store URL (instead of a CSV)")]
_SWEEP = _Ann[_Opt[str], typer.Option("--sweep", help="sweep name in the store")]
_OUT = _Ann[_Path, typer.Option("--out", help="output folder for JSON and figures")]
_MODEL = _Ann[_Opt[str], typer.Option("--model", help="model size to fit when the table holds several")]
_BOOT = _Ann[int, typer.Option("--bootstrap", min=0, help="bootstrap resamples (0 = none)")]
_EFF = _Ann[str, typer.Option("--effective-params", help="N(mu): 'unrolled' (non_core + core*mu) or 'column'")]
_NC = _Ann[_Opt[float], typer.Option("--non-core", help="non-core params (else column non_core_params)")]
_CORE = _Ann[_Opt[float], typer.Option("--core", help="core params (else column core_params)")]
_PCOL = _Ann[str, typer.Option("--params-column", help="column holding N(mu) for --effective-params column")]


@fit_app.command("isoflop")
def fit_isoflop_command(csv: _CSV = None, store: _STORE = None, sweep: _SWEEP = None, out: _OUT = _Path("fits"),
                        model: _MODEL = None, bootstrap: _BOOT = 200,
                        x: _Ann[str, typer.Option(help="parabola variable: "
                                                  "mu_rec, tokens or params")] = "mu_rec") -> None:
    """Per-budget parabolas and the mu*(C), D*(C), L*(C) power laws."""
    from parcae_scaling.scaling.report.cli_support import looped_runs, read_input
    from parcae_scaling.scaling.report.analyses import run_isoflop
    df, source = read_input(csv, store, sweep, model=model)
    typer.echo(run_isoflop(looped_runs(df), out, x=x, n_bootstrap=bootstrap, source=source).summary())


@fit_app.command("parametric")
def fit_parametric_command(csv: _CSV = None, store: _STORE = None, sweep: _SWEEP = None, out: _OUT = _Path("fits"),
                           model: _MODEL = None, bootstrap: _BOOT = 200,
                           law: _Ann[str, typer.Option(help="parcae or chinchilla")] = "parcae",
                           eff: _EFF = "unrolled", non_core: _NC = None, core: _CORE = None,
                           params_column: _PCOL = "params_effective") -> None:
    """Huber fit of a parametric law (grid of starts, bootstrap, held-out largest budget)."""
    from parcae_scaling.scaling.report.cli_support import effective_params, looped_runs, read_input
    from parcae_scaling.scaling.report.analyses import run_parametric
    df, source = read_input(csv, store, sweep, model=model)
    fit, extra = run_parametric(looped_runs(df), out, law_name=law, n_bootstrap=bootstrap, source=source,
                                effective_params=effective_params(eff, non_core, core, params_column))
    typer.echo(fit.summary())
    if "holdout" in extra:
        typer.echo("  " + extra["holdout"]["summary"])


@fit_app.command("test-time")
def fit_test_time_command(csv: _CSV = None, store: _STORE = None, sweep: _SWEEP = None, out: _OUT = _Path("fits"),
                          model: _MODEL = None) -> None:
    """Per-curve test-time fits (exp vs power forms) and the extrapolation check."""
    from parcae_scaling.scaling.report.cli_support import read_input
    from parcae_scaling.scaling.report.analyses import run_test_time
    df, _ = read_input(csv, store, sweep, kind="test_time", model=model)
    typer.echo(run_test_time(df, out).summary())


@fit_app.command("frontier")
def fit_frontier_command(csv: _CSV = None, store: _STORE = None, sweep: _SWEEP = None, out: _OUT = _Path("fits"),
                         model: _MODEL = None, bootstrap: _BOOT = 200, eff: _EFF = "unrolled",
                         non_core: _NC = None, core: _CORE = None, params_column: _PCOL = "params_effective") -> None:
    """Compute-optimal frontier (looped vs fixed depth) from the Parcae law, with intervals."""
    from parcae_scaling.scaling.report.cli_support import effective_params, looped_runs, read_input
    from parcae_scaling.scaling.report.analyses import run_frontier, run_parametric
    df, source = read_input(csv, store, sweep, model=model)
    e = effective_params(eff, non_core, core, params_column)
    fit, _ = run_parametric(looped_runs(df), out, n_bootstrap=bootstrap, source=source, effective_params=e)
    typer.echo(fit.summary())
    front = run_frontier(looped_runs(df), fit, out, effective_params=e)
    for p in front.points[:: max(1, len(front.points) // 6)]:
        tag = " (extrapolated)" if p.extrapolated else ""
        typer.echo(f"C={p.budget_flops:.3g}: mu*={p.mu_star:.3g} D*={p.tokens_star:.3g} "
                   f"L*={p.loss_star:.4f} vs fixed depth {p.baseline_loss:.4f}{tag}")


@fit_app.command("report")
def fit_report_command(csv: _CSV = None, store: _STORE = None,
                       sweep: _Ann[_Opt[str], typer.Option("--sweep",
                                                           help="sweep name(s) in the store, comma-separated "
                                                                "(several: each is fitted, stability is compared "
                                                                "across them)")] = None,
                       out: _OUT = _Path("fits"), model: _MODEL = None, bootstrap: _BOOT = 200,
                       test_time_csv: _Ann[_Opt[_Path], typer.Option("--test-time-csv", help="test-time CSV")] = None,
                       eff: _EFF = "unrolled", non_core: _NC = None, core: _CORE = None,
                       params_column: _PCOL = "params_effective",
                       html: _Ann[_Opt[_Path], typer.Option("--html", help="HTML report path (store input; "
                                                                               "default OUT/report.html)")] = None,
                       fits: _Ann[bool, typer.Option("--fits/--no-fits", help="fit laws (off: plan, status, "
                                                                              "stability only)")] = True) -> None:
    """Everything: isoFLOP, parametric fit with held-out check, frontier, test-time; JSON + figures.
    From a store also the plan, run statuses and training stability, in one self-contained HTML."""
    if store is None:  # a CSV holds fit inputs only: JSON and figures, no HTML
        fit_isoflop_command(csv, store, sweep, out, model, bootstrap)
        fit_frontier_command(csv, store, sweep, out, model, bootstrap, eff, non_core, core, params_column)
        if test_time_csv is not None:
            fit_test_time_command(test_time_csv, None, sweep, out, model)
        return
    from parcae_scaling.scaling.report.cli_support import effective_params
    from parcae_scaling.scaling.report.html import write_html
    from parcae_scaling.scaling.report.sweep_report import build_report
    if csv is not None or not sweep:
        raise ValueError("give either a CSV path, or --store URL with --sweep NAME[,NAME...]")
    rep = build_report(store, [s.strip() for s in sweep.split(",") if s.strip()], out, model=model,
                       n_bootstrap=bootstrap,
                       effective_params=effective_params(eff, non_core, core, params_column), fits=fits)
    for s in rep.sections:
        typer.echo(f"== {s.title}" + (f"\n  not available: {s.error}" if s.error else ""))
        if s.summary:
            typer.echo("  " + s.summary.replace("\n", "\n  "))
    path = write_html(rep, html or out / "report.html")
    typer.echo(f"report: {path} ({len(rep.figures)} figures; PNG and PDF under {out})")
