"""Command-line entry point `parcae-sweep` (fit_cli.py holds `parcae-fit`), and the error boundary
both apps share.

Argument parsing and printing only; every command calls the library API. One declaration style:
every option and argument is `Annotated[type, typer.Option/Argument(help=...)] = default`. Choices
are `Literal`s taken from where the library defines them, so `--help` lists them and a wrong value
is a usage error (exit 2) naming them. Library errors go through one boundary (exit 1).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from typer.core import TyperGroup

from parcae_scaling.db.engine import DEFAULT_URL, STORE_ENV
from parcae_scaling.model.contracts import DEFAULT_HEARTBEAT_S, DEFAULT_STALE_AFTER_S
from parcae_scaling.model.flops import FlopConvention
from parcae_scaling.model.run_spec import DataSpec, OptimizerName, OptimizerSpec, RunSpec, TokenizerKind

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


# Choices defined in modules that import torch. The annotations below call this, and Typer
# evaluates a command's annotations only when it builds the app (this module has
# `from __future__ import annotations`), so importing cli.py (as fit_cli.py does) stays cheap.
def _backend_names() -> Any:
    from parcae_scaling.sweeps.backend import backend_names

    return Literal[tuple(backend_names())]


def _progress_modes() -> Any:
    from parcae_scaling.sweeps.render import ProgressMode

    return ProgressMode


_PROGRESS = typer.Option("--progress", help="Progress while it works: live (a view redrawn in place), plain (a "
                                            "line now and then, no control codes), none; auto: live on a "
                                            "terminal, else plain.")


def _default(spec_type: type, name: str) -> Any:
    """A spec field's default, defined once in model/run_spec.py (shown by --help)."""
    return next(f.default for f in dataclasses.fields(spec_type) if f.name == name)


def _print_version(value: bool) -> None:
    if value:
        from parcae_scaling import __version__

        typer.echo(f"parcae-scaling {__version__}")
        raise typer.Exit()


def make_app(name: str, about: str) -> typer.Typer:
    """An app with the shared error boundary that prints its help when called bare, `--version`,
    and shell completion (`--install-completion`)."""
    app = typer.Typer(name=name, help=about, no_args_is_help=True, cls=_ErrorBoundary)

    @app.callback()
    def options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                      help="Print the package version and exit.")] = False) -> None:
        pass

    options.__doc__ = about  # the app's help text
    return app


# ---- output formats: a table for people, JSON or CSV for scripts (every row, exact numbers) ---
OutputFormat = Literal["table", "json", "csv"]
_FORMAT = Annotated[OutputFormat, typer.Option("--format", help="table (for reading), or json / csv (every row, "
                                                                "exact numbers, for scripts and spreadsheets).")]


def _json_value(value: Any) -> Any:
    """What json cannot write itself: numpy scalars as numbers, times in ISO 8601."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def print_frame(frame: Any, fmt: OutputFormat, table: Any) -> None:
    """Print a command's rows: `table()` (a rich renderable) as is, or the DataFrame as JSON
    records (NaN as null, times in ISO 8601) or CSV."""
    if fmt == "json":
        import json

        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        typer.echo(json.dumps(records, indent=2, default=_json_value))
    elif fmt == "csv":
        import json

        nested = frame.map(lambda v: json.dumps(v, default=_json_value) if isinstance(v, (dict, list)) else v)
        typer.echo(nested.to_csv(index=False), nl=False)
    else:
        from rich.console import Console

        Console(width=200).print(table())  # wide: exact counts must never be truncated


sweep_app = make_app("parcae-sweep", "Plan, launch and track FLOP-matched sweeps of looped (Parcae) language models.")


# ---- parcae-sweep train-one | configs | flops (library: model/, sweeps/train_one.py) ----------
_QUICK = "default: the quick run's (a tiny Parcae on the embedded corpus)"


@sweep_app.command("train-one")
def train_one_command(
    model: Annotated[str | None, typer.Option(help=f"Model config name (`parcae-sweep configs` lists them); "
                                                   f"{_QUICK}.")] = None,
    mu_rec: Annotated[int | None, typer.Option(help="Mean recurrence (ignored for transformer-* configs); "
                                                    f"{_QUICK}.")] = None,
    budget_flops: Annotated[float | None, typer.Option(help="FLOP budget; tokens = budget / FLOPs-per-token; "
                                                            f"{_QUICK}.")] = None,
    tokens: Annotated[int | None, typer.Option(help="Train this many tokens instead of a FLOP budget.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per micro-batch.")] = _default(RunSpec, "batch_size"),
    seq_len: Annotated[int | None, typer.Option(help=f"Context length; {_QUICK}.")] = None,
    optimizer: Annotated[OptimizerName, typer.Option(help="AdamW, or Muon on matrices + AdamW.")
                         ] = _default(OptimizerSpec, "name"),
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = _default(OptimizerSpec, "lr"),
    seed: Annotated[int, typer.Option(help="Seed for init, batches and depths.")] = _default(RunSpec, "seed"),
    tokenizer: Annotated[TokenizerKind, typer.Option(help="Bytes, or BPE trained locally on the corpus.")
                         ] = _default(DataSpec, "tokenizer"),
    eval_tokens: Annotated[int, typer.Option(help="Validation tokens per evaluated recurrence.")
                           ] = _default(RunSpec, "eval_tokens"),
    output_dir: Annotated[str | None, typer.Option("--out", "--output-dir",
                                                   help="Run directory (default runs/train-one-<run id>).")] = None,
    spec: Annotated[str | None, typer.Option(help="Train a RunSpec JSON file instead (other options ignored).")
                    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads; 1 is fastest for tiny models on a busy box.")] = 1,
    nproc: Annotated[int | None, typer.Option(help="Data-parallel processes on this node (torchrun); batch size is "
                                                   "per process. Default: the spec's nproc_per_node, else 1.")
                     ] = None,
    progress: Annotated[_progress_modes(), _PROGRESS] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object and nothing else "
                                                         "on stdout (for scripts).")] = False,
) -> None:
    """Train one run end to end (default: a tiny Parcae on the embedded corpus) and print its summary."""
    import json

    import torch

    from parcae_scaling.sweeps.train_one import train_one, train_one_spec

    torch.set_num_threads(threads)
    if spec:
        run = RunSpec.from_file(spec)
        if nproc is not None:
            run = run.replace(nproc_per_node=nproc)
    else:
        given = {"model": model, "mu_rec": mu_rec, "budget_flops": budget_flops, "seq_len": seq_len}
        run = train_one_spec(**{k: v for k, v in given.items() if v is not None}, tokens=tokens,
                             batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed, tokenizer=tokenizer,
                             eval_tokens=eval_tokens, output_dir=output_dir, nproc_per_node=nproc)
    if run.world_size > 1:
        from parcae_scaling.sweeps.ranks import launch_local

        result = launch_local(run, threads=threads)
        typer.echo(json.dumps(result.to_dict(), indent=2))
        if result.status.value != "succeeded":
            raise typer.Exit(code=1)
        return
    from rich.console import Console

    from parcae_scaling.model.run_spec import plan_tokens
    from parcae_scaling.sweeps.render import StepWatch

    # on stderr: stdout carries the summary alone
    with StepWatch(Console(stderr=True), progress, total_steps=plan_tokens(run).steps,
                   title=f"run {run.run_id}") as watch:
        out = train_one(run, on_metrics=watch)
    r = out.result
    if as_json:
        typer.echo(json.dumps({**r.to_dict(), "data": out.data_description,
                               "unigram_entropy_nats": out.unigram_entropy_nats}, indent=2))
        raise typer.Exit(code=0 if r.status.value == "succeeded" else 1)
    typer.echo(json.dumps(r.to_dict(), indent=2))
    typer.echo(f"data: {out.data_description}")
    if out.unigram_entropy_nats is not None and r.final_val_loss is not None:
        typer.echo(f"val loss {r.final_val_loss:.4f} nats/token vs unigram entropy "
                   f"{out.unigram_entropy_nats:.4f} nats/token")
    if r.status.value != "succeeded":
        raise typer.Exit(code=1)


@sweep_app.command("configs")
def configs_command(
    convention: Annotated[FlopConvention, typer.Option(help="FLOP convention: reference (the public code's "
                                                            "formula) or exact (every matmul FLOP the model "
                                                            "performs).")
                          ] = _default(RunSpec, "flop_convention"),
    contains: Annotated[str, typer.Option(help="Only configs whose name contains this text.")] = "",
    fmt: _FORMAT = "table",
) -> None:
    """List the named model configs with parameter counts and FLOPs per token."""
    import pandas as pd
    from rich.table import Table

    from parcae_scaling.model import get_config, list_configs
    from parcae_scaling.model.flops import config_summary

    rows = [config_summary(get_config(n), convention) for n in list_configs() if contains in n]

    def table() -> Table:
        t = Table("name", "layers", "d", "params", "non-emb", "core", "mu_rec/mu_bwd", f"FLOPs/token ({convention})")
        for r in rows:
            t.add_row(r["name"], r["layers"], str(r["d_model"]), f"{r['params']:,}", f"{r['non_embedding']:,}",
                      f"{r['core']:,}", f"{r['mu_rec']}/{r['mu_bwd']}", f"{r['flops_per_token']:,}")
        return t
    print_frame(pd.DataFrame(rows).assign(flop_convention=convention), fmt, table)


@sweep_app.command("flops")
def flops_command(
    name: Annotated[str, typer.Argument(help="Model config name, e.g. parcae-small-140m.")],
    mu_rec: Annotated[int | None, typer.Option(help="Mean recurrence (default: the config's).")] = None,
    mu_bwd: Annotated[int | None, typer.Option(help="Backprop depth (default: ceil(mu_rec / 2)).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Context length for attention FLOPs (default: the config's).")
                       ] = None,
    budget: Annotated[float | None, typer.Option("--budget-flops", "--budget",
                                                 help="Also print the tokens this FLOP budget buys.")] = None,
    fmt: _FORMAT = "table",
) -> None:
    """FLOPs per token of one config under every convention (and tokens for a budget)."""
    import pandas as pd
    from rich.text import Text

    from parcae_scaling.model import get_config
    from parcae_scaling.model.flops import FLOP_CONVENTIONS, flops_per_token, tokens_for_budget

    overrides = {k: v for k, v in {"mu_rec": mu_rec, "mu_bwd": mu_bwd, "seq_len": seq_len}.items() if v is not None}
    config = get_config(name, **overrides)
    rows = []
    for convention in FLOP_CONVENTIONS:
        fpt = flops_per_token(config, convention=convention)
        rows.append({"model": name, "flop_convention": convention, "flops_per_token": fpt, "mu_rec": config.mu_rec,
                     "mu_bwd": config.mu_bwd, "seq_len": config.seq_len, "budget_flops": budget,
                     "tokens": tokens_for_budget(budget, fpt) if budget else None})

    def table() -> Text:
        return Text("\n".join(
            f"{r['flop_convention']:>9}: {r['flops_per_token']:,} FLOPs/token (mu_rec={r['mu_rec']}, "
            f"mu_bwd={r['mu_bwd']})" + (f"  tokens for {budget:.3g} FLOPs: {r['tokens']:,}" if budget else "")
            for r in rows))
    print_frame(pd.DataFrame(rows), fmt, table)


# ---- parcae-sweep plan | launch | status | resume | cancel (library: sweeps/) ------------------
DEFAULT_STORE: Any = None  # resolved by _resolve_store: $PARCAE_STORE, else ./parcae.sqlite or a parent's


def _resolve_store(url: str | None) -> str:
    """--store as typed, else the one default of every command (db/engine.py default_url)."""
    from parcae_scaling.db.engine import default_url

    return url or default_url()


_SPEC = Annotated[str | None, typer.Argument(help="Sweep spec (.yaml/.toml) or a built-in name; default: the "
                                                 "built-in 'default'.")]
_STORE_URL = Annotated[str, typer.Option("--store", envvar=STORE_ENV, show_envvar=True, callback=_resolve_store,
                                          show_default=f"{DEFAULT_URL} here or in the nearest parent folder",
                                          help="Store URL (SQLite file or PostgreSQL); the same default for every "
                                               "command and notebook.")]
# choices: _backend_names()
_BACKEND = typer.Option("--backend", help="Where the runs go: local processes, SLURM (submitit) or Ray.")
_DETACH = Annotated[bool, typer.Option("--detach", help="Return after submission (local, submitit).")]
_HEARTBEAT = Annotated[float, typer.Option("--heartbeat", help="Worker heartbeat interval (s).")]
_STALE = Annotated[float, typer.Option("--stale-after", help="A running run with no heartbeat for this long is "
                                                             "lost (s).")]
_BUDGET_HOURS = Annotated[float | None, typer.Option("--budget-hours", help="Refuse plans over this many "
                                                                            "device-hours.")]
_ALLOW_DRIFT = Annotated[bool, typer.Option("--allow-drift", help="Accept a changed spec for a recorded sweep.")]
_PARTITION = Annotated[str | None, typer.Option("--partition", help="SLURM partition (submitit).")]
_ADDRESS = Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: start one).")]


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
def plan_command(
    spec: _SPEC = None,
    budget_hours: _BUDGET_HOURS = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Print every run (default: the first and last runs of a "
                                                         "large plan, and the totals).")] = False,
    fmt: _FORMAT = "table",
) -> None:
    """Validate a sweep spec and print its runs, costs and flagged problems (writes nothing)."""
    import pandas as pd

    from parcae_scaling.sweeps import load_spec, plan
    from parcae_scaling.sweeps.render import PLAN_ROWS_SHOWN, plan_table

    p = plan(load_spec(spec or "default"))
    print_frame(pd.DataFrame([r.row() for r in p.runs]).assign(sweep=p.sweep), fmt,
                lambda: plan_table(p, max_rows=None if all_rows else PLAN_ROWS_SHOWN, more_hint="--all"))
    if budget_hours is not None:
        p.check_budget(budget_hours)


def _sweep_watch(sweep: str, progress: Any):  # noqa: ANN202
    """The live view (or plain lines) of a blocking launch/resume, on stdout beside its summary."""
    from rich.console import Console

    from parcae_scaling.sweeps.render import SweepWatch

    return SweepWatch(Console(), progress, title=f"sweep {sweep}")


def _interrupted(sweep: str, store: str) -> NoReturn:
    """Ctrl-C during launch/resume: one line on what happened and how to continue; exit 130."""
    typer.echo(f"interrupted: the runs of sweep {sweep} that were stopped or never started are preempted "
               f"(resumable); continue with: parcae-sweep resume {sweep} --store {store}", err=True)
    raise typer.Exit(code=130)


@sweep_app.command("launch")
def launch_command(
    spec: _SPEC = None,
    default: Annotated[bool, typer.Option("--default", help="Launch the built-in default sweep.")] = False,
    store: _STORE_URL = DEFAULT_STORE,
    backend: Annotated[_backend_names(), _BACKEND] = "local",
    detach: _DETACH = False,
    allow_drift: _ALLOW_DRIFT = False,
    budget_hours: _BUDGET_HOURS = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", min=1,
                                                       help="Override resources.max_concurrent.")] = None,
    partition: _PARTITION = None,
    address: _ADDRESS = None,
    heartbeat: _HEARTBEAT = DEFAULT_HEARTBEAT_S,
    stale_after: _STALE = DEFAULT_STALE_AFTER_S,
    progress: Annotated[_progress_modes(), _PROGRESS] = "auto",
) -> None:
    """Record a sweep in the store and dispatch every run not yet done (safe to repeat).

    Runs also report to the trackers in the spec's `tracking:` (files in <output_root>/<sweep>/tracking).

    W&B always runs offline, whatever WANDB_MODE says (no network); upload later with `wandb sync`."""
    import dataclasses

    from parcae_scaling.sweeps import launch, load_spec, plan

    p = plan(load_spec("default" if default or not spec else spec))
    if budget_hours is not None:
        p.check_budget(budget_hours)
    res = p.spec.resources if max_concurrent is None else dataclasses.replace(p.spec.resources,
                                                                              max_concurrent=max_concurrent)
    with _open_store(store, write=True, create=True) as st:
        try:
            with _sweep_watch(p.sweep, "none" if detach else progress) as watch:
                rep = launch(p, st, _sweep_backend(backend, partition, address), store_url=store, detach=detach,
                             allow_drift=allow_drift, heartbeat_s=heartbeat, stale_after_s=stale_after, resources=res,
                             on_poll=watch)
        except KeyboardInterrupt:
            _interrupted(p.sweep, store)
    typer.echo(f"sweep {rep.sweep}: {rep.planned} runs planned, {rep.newly_recorded} newly recorded, "
               f"{len(rep.dispatched)} dispatched on {backend}" + (" (detached)" if detach else ""))
    typer.echo("states: " + ", ".join(f"{k}={v}" for k, v in sorted(rep.final.items())))
    if rep.unfinished:  # only what this call dispatched: another launch's runs are not our failure
        typer.echo(f"{len(rep.unfinished)} dispatched run(s) did not succeed; "
                   f"see `parcae-sweep status {rep.sweep}`", err=True)
        raise typer.Exit(code=1)


def _print_run(details: dict[str, Any], fmt: OutputFormat) -> None:
    """`status --run`: one run's fields and provenance as a two-column table, JSON or CSV."""
    import json

    import pandas as pd
    from rich.table import Table

    if fmt == "json":
        typer.echo(json.dumps(details, indent=2, default=_json_value))
        return
    provenance = details.get("provenance") or {}
    rows = [(k, v) for k, v in details.items() if k != "provenance"]
    rows += [(f"provenance.{k}", v) for k, v in provenance.items()] or [("provenance", "none (never started)")]
    frame = pd.DataFrame(rows, columns=["field", "value"])

    def table() -> Table:
        t = Table(title=f"run {details['run_id']}", show_header=False)
        t.add_column("field")
        t.add_column("value")
        other = details["other_version"]
        for k, v in rows:
            mark = "  * another parcae-scaling than this one" if k == "package_version" and other else ""
            t.add_row(k, ("-" if v is None else str(v)) + mark)
        return t
    print_frame(frame, fmt, table)


@sweep_app.command("status")
def status_command(
    sweep: Annotated[str | None, typer.Argument(help="Sweep name (default: all sweeps).")] = None,
    store: _STORE_URL = DEFAULT_STORE,
    watch: Annotated[float, typer.Option("--watch", help="Refresh every N seconds (live view).")] = 0.0,
    stale_after: _STALE = DEFAULT_STALE_AFTER_S,
    fmt: _FORMAT = "table",
    run: Annotated[str | None, typer.Option("--run", help="Only this run (its id, or its legacy id from before "
                                                          "schema 0004), with the provenance of its latest "
                                                          "(re)start.")] = None,
) -> None:
    """Runs by state with progress, last loss and failure kind; stale heartbeats become node_lost.
    An `other code` column marks runs last trained by another parcae-scaling version."""
    import time

    from rich.live import Live

    from parcae_scaling.sweeps import mark_stale, status_table
    from parcae_scaling.sweeps.render import status_view

    if watch > 0 and fmt != "table":
        raise typer.BadParameter("--watch redraws a table; drop --watch for --format json/csv", param_hint="--watch")
    if watch > 0 and run is not None:
        raise typer.BadParameter("--watch redraws the sweep's table; drop --watch to show one --run",
                                 param_hint="--watch")
    with _open_store(store, write=False) as st:
        if sweep is not None:
            st.require_sweep(sweep)
        if run is not None:
            from parcae_scaling.sweeps.launch import run_details

            mark_stale(st, sweep, stale_after_s=stale_after)
            _print_run(run_details(st, run, sweep), fmt)
            return

        def view():  # noqa: ANN202
            mark_stale(st, sweep, stale_after_s=stale_after)
            return status_view(status_table(st, sweep), title=f"sweep {sweep or '(all)'}")
        if watch <= 0:
            mark_stale(st, sweep, stale_after_s=stale_after)
            frame = status_table(st, sweep)
            print_frame(frame, fmt, lambda: status_view(frame, title=f"sweep {sweep or '(all)'}"))
            return
        with Live(view(), refresh_per_second=1) as live:
            while True:
                time.sleep(watch)
                live.update(view())


@sweep_app.command("export")
def export_command(
    sweep: Annotated[str, typer.Argument(help="Sweep name in the store.")],
    to: Annotated[Path, typer.Option("--to", help="runs.csv or runs.parquet: the runs file; its per-depth evals "
                                                  "go beside it (runs.evals.csv), and with --metrics the metric "
                                                  "histories (runs.metrics.csv).")],
    store: _STORE_URL = DEFAULT_STORE,
    metrics: Annotated[bool, typer.Option("--metrics", help="Also write every run's training metric history.")
                       ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Write a sweep's runs (state, final losses, provenance), evals and optionally metric histories
    as CSV or Parquet; `parcae-fit isoflop runs.csv` reads the runs file back."""
    from parcae_scaling.db.export import export_sweep

    with _open_store(store, write=False) as st:
        typer.echo(export_sweep(st, sweep, to, metrics=metrics, overwrite=force).summary())


@sweep_app.command("resume")
def resume_command(
    sweep: Annotated[str, typer.Argument(help="Sweep name in the store.")] = "default",
    store: _STORE_URL = DEFAULT_STORE,
    backend: Annotated[_backend_names(), _BACKEND] = "local",
    detach: _DETACH = False,
    include_failed: Annotated[bool, typer.Option("--include-failed",
                                                 help="Also retry oom/error/cancelled runs.")] = False,
    spec: Annotated[str | None, typer.Option("--spec", help="Check (and with --allow-drift, apply) this spec.")
                    ] = None,
    allow_drift: _ALLOW_DRIFT = False,
    partition: _PARTITION = None,
    address: _ADDRESS = None,
    heartbeat: _HEARTBEAT = DEFAULT_HEARTBEAT_S,
    stale_after: _STALE = DEFAULT_STALE_AFTER_S,
    progress: Annotated[_progress_modes(), _PROGRESS] = "auto",
) -> None:
    """Re-dispatch lost, preempted and retryable failed runs from their checkpoints."""
    from parcae_scaling.sweeps import load_spec, resume

    with _open_store(store, write=True) as st:
        try:
            with _sweep_watch(sweep, "none" if detach else progress) as watch:
                rep = resume(st, sweep, _sweep_backend(backend, partition, address), store_url=store, detach=detach,
                             include_failed=include_failed, heartbeat_s=heartbeat, stale_after_s=stale_after,
                             spec=load_spec(spec) if spec else None, allow_drift=allow_drift, on_poll=watch)
        except KeyboardInterrupt:
            _interrupted(sweep, store)
    typer.echo(f"sweep {sweep}: {len(rep.lost)} lost, {len(rep.dispatched)} re-dispatched on {backend}")
    typer.echo("states: " + ", ".join(f"{k}={v}" for k, v in sorted(rep.final.items())))
    if rep.unfinished:
        raise typer.Exit(code=1)


@sweep_app.command("cancel")
def cancel_command(
    sweep: Annotated[str | None, typer.Argument(help="Sweep name.")] = None,
    store: _STORE_URL = DEFAULT_STORE,
    run: Annotated[list[str] | None, typer.Option("--run", help="Only these run ids.")] = None,
    all_sweeps: Annotated[bool, typer.Option("--all", help="Every live run of every sweep (asks first).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before cancelling every sweep's runs.")
               ] = False,
) -> None:
    """Cancel live runs (they stay resumable with `resume --include-failed`)."""
    from parcae_scaling.sweeps import cancel

    if sweep is None and not run and not all_sweeps:  # never cancel everything by omission
        raise typer.BadParameter("give a sweep name, --run RUN_ID, or --all to cancel every live run of every sweep",
                                 param_hint="'SWEEP'")
    with _open_store(store, write=True) as st:
        if sweep is not None:
            st.require_sweep(sweep)
        if sweep is None and not run and not yes:  # unscoped: say what it would stop, and ask
            from parcae_scaling.db import RunStatus

            live = st.runs()
            live = live[~live["status"].isin([s.value for s in RunStatus if s.is_final])]  # what cancel() stops
            if live.empty:
                typer.echo("no live runs to cancel")
                return
            counts = ", ".join(f"{n} in {name}" for name, n in live["sweep"].value_counts().sort_index().items())
            if not typer.confirm(f"cancel {len(live)} live run(s) ({counts}) in {store}?", default=False):
                typer.echo("nothing cancelled", err=True)
                raise typer.Exit(code=1)
        ids = cancel(st, sweep, run_ids=run or None)
    typer.echo(f"cancelled {len(ids)} run(s)" + (": " + ", ".join(ids) if ids else ""))


# ---- parcae-sweep prepare-data (library: model/train/data.py prepare_data, model/train/prepare.py) ----
def _shown_paths(paths: tuple[str, ...], most: int = 3) -> str:
    shown = [os.path.abspath(p) for p in paths[:most]]
    return ", ".join(shown) + (f" and {len(paths) - most} more" if len(paths) > most else "")


@sweep_app.command("prepare-data")
def prepare_data_command(
    spec: _SPEC = None,
    progress: Annotated[_progress_modes(), _PROGRESS] = "auto",
) -> None:
    """Tokenize the data a sweep's runs need, once, ahead of launch (cached; safe to repeat)."""
    from rich.console import Console

    from parcae_scaling.model.train.data import prepare_data
    from parcae_scaling.sweeps import load_spec, plan
    from parcae_scaling.sweeps.render import PrepWatch

    datasets = plan(load_spec(spec or "default")).data_specs()
    built = 0
    for i, data in enumerate(datasets, 1):
        with PrepWatch(Console(stderr=True), progress) as watch:
            prepared = prepare_data(data, on_progress=watch)
        typer.echo(f"dataset {i}/{len(datasets)}: {prepared.description}")
        for name, split in (("train", prepared.train), ("val", prepared.val)):
            state = ("pre-tokenized, nothing to prepare" if data.source == "bin"
                     else "prepared now" if split.built else "already prepared")
            typer.echo(f"  {name}: {split.tokens:,} tokens in {_shown_paths(split.paths)} ({state})")
        built += prepared.built
    typer.echo(f"{len(datasets)} dataset(s) ready: {built} prepared now, {len(datasets) - built} already prepared")


# ---- parcae-sweep export-model (library: sweeps/model_export.py, model/train/export.py) -----------
@sweep_app.command("export-model")
def export_model_command(
    run_id: Annotated[str, typer.Argument(help="Run id (the run_id column of `parcae-sweep status SWEEP`).")],
    to: Annotated[str, typer.Option("--to", help="Directory for model.safetensors and config.json (created).")],
    store: _STORE_URL = DEFAULT_STORE,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the export files in a non-empty --to "
                                                        "directory.")] = False,
) -> None:
    """Export a succeeded run's final weights as safetensors plus a config.json that rebuilds the model."""
    from parcae_scaling.sweeps.model_export import export_run

    with _open_store(store, write=False) as st:
        config = export_run(st, run_id, to, force=force)
    loss = f"{config.final_val_loss:.4f}" if config.final_val_loss is not None else "unknown"
    typer.echo(f"exported run {config.run_id} of sweep {config.sweep} ({config.model.name}, mu_rec {config.mu_rec}, "
               f"{config.tokens_trained:,} tokens, final val loss {loss}) to {to}")
    typer.echo(f"load it with: from parcae_scaling.model.train.export import load_exported; "
               f"model, config = load_exported({to!r})")
