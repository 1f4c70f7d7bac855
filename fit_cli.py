"""Command-line entry point `parcae-fit`: fits, frontiers and reports from a results CSV or a store.

Argument parsing and printing only; every command calls scaling/ (the fit library) or
scaling/report/ (analyses over the store). Declarations and the error boundary follow cli.py. The
options several commands share (where to read and write, the effective-parameter count N(mu)) are
declared once below and reach each command as one object (`_shared`).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from parcae_scaling.cli import OutputFormat, make_app, print_frame
from parcae_scaling.db.engine import DEFAULT_URL, STORE_ENV
from parcae_scaling.scaling.isoflop import Estimator, XName
from parcae_scaling.scaling.report.cli_support import EffectiveParamsMode, FitInputs, ParametricLaw, effective_params
from parcae_scaling.scaling.results import DEFAULT_BOOTSTRAP, FitResult

fit_app = make_app("parcae-fit", "Fit scaling laws to sweep results and draw publication figures.")

_KW = inspect.Parameter.KEYWORD_ONLY
INPUT_OPTIONS = (
    inspect.Parameter("csv", _KW, default=None, annotation=Annotated[
        Path | None, typer.Argument(help="results CSV, one row per run: run_id, budget_flops, mu_rec, tokens, "
                                         "params, loss (`parcae-sweep export` writes one; --columns maps other "
                                         "names)")]),
    inspect.Parameter("store", _KW, default=None, annotation=Annotated[
        str | None, typer.Option("--store", envvar=STORE_ENV, show_envvar=True,
                                 help=f"store URL: read when no CSV is given, and where every fit is saved "
                                      f"(default {DEFAULT_URL} here or in the nearest parent folder)")]),
    inspect.Parameter("sweep", _KW, default=None, annotation=Annotated[
        str | None, typer.Option("--sweep", help="sweep name in the store, default its only sweep (report: "
                                                 "several, comma-separated, default all; each fitted and their "
                                                 "stability compared)")]),
    inspect.Parameter("out", _KW, default=Path("fits"), annotation=Annotated[
        Path, typer.Option("--out", help="output folder for JSON and figures")]),
    inspect.Parameter("model", _KW, default=None, annotation=Annotated[
        str | None, typer.Option("--model", help="model size to fit when the table holds several")]),
    inspect.Parameter("columns", _KW, default=None, annotation=Annotated[
        str | None, typer.Option("--columns", help="a CSV from another tool: its column names, OURS=THEIRS, e.g. "
                                                   "params=N,tokens=D,loss=L; budget_flops = 6 N D where the file "
                                                   "has none")]),
    inspect.Parameter("assumed_sd", _KW, default=None, annotation=Annotated[
        float | None, typer.Option("--assumed-noise-sd",
                                   help="seed-to-seed SD of one run's loss (nats) to assume where the table has no "
                                        "replicates (default: the spec's noise.assumed_sd, else 0.01)")]),
)
EFFECTIVE_PARAMS_OPTIONS = (
    inspect.Parameter("kind", _KW, default="unrolled", annotation=Annotated[
        EffectiveParamsMode, typer.Option("--effective-params", help="N(mu): 'unrolled' (non_core + core*mu) or "
                                                                     "a column (--params-column)")]),
    inspect.Parameter("non_core", _KW, default=None, annotation=Annotated[
        float | None, typer.Option("--non-core", help="non-core params (else column non_core_params)")]),
    inspect.Parameter("core", _KW, default=None, annotation=Annotated[
        float | None, typer.Option("--core", help="core params (else column core_params)")]),
    inspect.Parameter("column", _KW, default="params_effective", annotation=Annotated[
        str, typer.Option("--params-column", help="column holding N(mu) for --effective-params column")]),
)
_BOOT = Annotated[int, typer.Option("--bootstrap", min=0, help="bootstrap resamples (0 = none)")]


def _shared(name: str, options: tuple[inspect.Parameter, ...], build: Callable[..., Any]) -> Callable:
    """Give a command the shared `options` and pass it `build(**their values)` as its parameter
    `name`: each shared option is declared once, and the command sees one typed object."""
    def decorate(fn: Callable) -> Callable:
        own = [p.replace(kind=_KW) for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != name]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in options}
            return fn(**kwargs, **{name: build(**values)})

        command.__signature__ = inspect.Signature([*options, *own])  # type: ignore[attr-defined]
        return command
    return decorate


with_inputs = _shared("inputs", INPUT_OPTIONS, FitInputs.resolve)
with_effective_params = _shared("effective", EFFECTIVE_PARAMS_OPTIONS, effective_params)


def _echo_frontier(fit: FitResult, front: Any) -> None:
    """The fitted law, then about six points of its compute-optimal frontier."""
    typer.echo(fit.summary())
    typer.echo(front.summary())
    for p in front.points[:: max(1, len(front.points) // 6)]:
        tag = " (extrapolated)" if p.extrapolated else ""
        typer.echo(f"C={p.budget_flops:.3g}: mu*={p.mu_star:.3g} D*={p.tokens_star:.3g} "
                   f"L*={p.loss_star:.4f} vs fixed depth {p.baseline_loss:.4f}{tag}")


@fit_app.command("isoflop")
@with_inputs
def fit_isoflop_command(
    inputs: FitInputs,
    bootstrap: _BOOT = DEFAULT_BOOTSTRAP,
    x: Annotated[XName, typer.Option(help="parabola variable")] = "mu_rec",
    estimator: Annotated[Estimator, typer.Option(help="per-budget curve: a parabola over all cells, a cubic, or "
                                                      "(local) a parabola over the best cell and its neighbours")
                         ] = "parabola",
) -> None:
    """Per-budget optima over cell means (replicates averaged) and the mu*(C), D*(C), L*(C) power laws,
    with intervals from the replicate noise."""
    from parcae_scaling.scaling.report.analyses import looped_runs, run_isoflop

    df, source = inputs.read()
    res = run_isoflop(looped_runs(df), inputs.out, x=x, n_bootstrap=bootstrap, source=source,
                      assumed_sd=inputs.assumed_sd, estimator=estimator)
    typer.echo(res.summary())
    typer.echo(inputs.save(res, kind="isoflop", table=df))


@fit_app.command("parametric")
@with_inputs
@with_effective_params
def fit_parametric_command(
    inputs: FitInputs,
    effective: Any,
    bootstrap: _BOOT = DEFAULT_BOOTSTRAP,
    law: Annotated[ParametricLaw, typer.Option(help="law to fit: parcae L(mu_rec, D) or chinchilla L(N, D)")
                   ] = "parcae",
) -> None:
    """Huber fit of a parametric law (grid of starts, bootstrap, held-out largest budget)."""
    from parcae_scaling.scaling.report.analyses import looped_runs, run_parametric

    df, source = inputs.read()
    fit, extra = run_parametric(looped_runs(df), inputs.out, law_name=law, n_bootstrap=bootstrap, source=source,
                                effective_params=effective, assumed_sd=inputs.assumed_sd)
    typer.echo(extra["noise"])
    typer.echo(fit.summary())
    if "holdout" in extra:
        typer.echo("  " + extra["holdout"]["summary"])
    typer.echo(inputs.save(fit, kind=fit.law, table=df))


@fit_app.command("test-time")
@with_inputs
def fit_test_time_command(inputs: FitInputs) -> None:
    """Per-curve test-time fits (exp vs power forms) and the extrapolation check."""
    from parcae_scaling.scaling.report.analyses import run_test_time

    df, _ = inputs.read(kind="test_time")
    res = run_test_time(df, inputs.out)
    typer.echo(res.summary())
    typer.echo(inputs.save(res, kind="test_time", table=df))


@fit_app.command("frontier")
@with_inputs
@with_effective_params
def fit_frontier_command(inputs: FitInputs, effective: Any, bootstrap: _BOOT = DEFAULT_BOOTSTRAP) -> None:
    """Compute-optimal frontier (looped vs fixed depth) from the Parcae law, with intervals."""
    from parcae_scaling.scaling.report.analyses import looped_runs, run_frontier, run_parametric

    df, source = inputs.read()
    runs = looped_runs(df)
    fit, _ = run_parametric(runs, inputs.out, n_bootstrap=bootstrap, source=source, effective_params=effective,
                            assumed_sd=inputs.assumed_sd)
    front = run_frontier(runs, fit, inputs.out, effective_params=effective)
    _echo_frontier(fit, front)
    typer.echo(inputs.save(fit, kind=fit.law, table=df))
    typer.echo(inputs.save(front, kind="frontier", table=df))


@fit_app.command("compare")
@with_inputs
def fit_compare_command(
    inputs: FitInputs,
    against: Annotated[str, typer.Option("--against", help="the other sweep in the same store (its matching "
                                                           "cells are compared)")],
) -> None:
    """Whether a change moved the results: each cell both sweeps share (e.g. the same cells in fp32
    and in bf16), the other sweep's mean loss minus this one's, against the seed-to-seed noise."""
    from parcae_scaling.scaling.replicates import compare_cells
    from parcae_scaling.scaling.report.store_tables import load_store

    if inputs.store is None:
        raise ValueError("compare reads two sweeps of one store, not a CSV: give --sweep NAME --against OTHER")
    sweep = inputs.one_sweep()
    a, b = (load_store(inputs.store, name) for name in (sweep, against))
    if inputs.model is not None:
        a, b = (t[t["model"].astype(str) == inputs.model] for t in (a, b))
    table, noise = compare_cells(a, b, assumed_sd=inputs.assumed_sd)
    typer.echo(f"{against} minus {sweep}, per shared cell (95% intervals); {noise.describe()}")
    for r in table.itertuples():
        where = ", ".join(f"{k}={getattr(r, k)}" for k in ("arch", "model", "budget_flops", "mu_rec")
                          if hasattr(r, k))
        typer.echo(f"  {where}: {r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}] (n {r.n_a} vs {r.n_b})"
                   + ("  resolved" if r.resolved else ""))
    biggest = float(table["difference"].abs().max())
    typer.echo(f"largest |difference| {biggest:.4f} nats vs noise SD {noise.sd:.4f}: "
               f"{int(table['resolved'].sum())}/{len(table)} cells differ beyond their interval")


@fit_app.command("report")
@with_inputs
@with_effective_params
def fit_report_command(
    inputs: FitInputs,
    effective: Any,
    bootstrap: _BOOT = DEFAULT_BOOTSTRAP,
    test_time_csv: Annotated[Path | None, typer.Option("--test-time-csv", help="test-time CSV")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="HTML report path (store input; default "
                                                             "OUT/report.html)")] = None,
    fits: Annotated[bool, typer.Option("--fits/--no-fits", help="fit laws (off: plan, status, stability only)")
                    ] = True,
) -> None:
    """Everything: isoFLOP, parametric fit with held-out check, frontier, test-time; JSON + figures.
    From a store also the plan, run statuses and training stability, in one self-contained HTML."""
    from parcae_scaling.scaling.report.cli_support import csv_report

    if inputs.store is None:  # a CSV holds fit inputs only: JSON and figures, no HTML
        rep = csv_report(inputs, n_bootstrap=bootstrap, effective_params=effective, test_time_csv=test_time_csv)
        typer.echo(rep.isoflop.summary())
        _echo_frontier(rep.fit, rep.frontier)
        if rep.test_time is not None:
            typer.echo(rep.test_time.summary())
        typer.echo("\n".join(rep.stored))
        return
    from parcae_scaling.scaling.report.html import write_html
    from parcae_scaling.scaling.report.sweep_report import build_report

    rep = build_report(inputs.store, inputs.sweeps(), inputs.out, model=inputs.model, n_bootstrap=bootstrap,
                       effective_params=effective, fits=fits, assumed_sd=inputs.assumed_sd)
    for s in rep.sections:
        typer.echo(f"== {s.title}" + (f"\n  not available: {s.error}" if s.error else ""))
        if s.summary:
            typer.echo("  " + s.summary.replace("\n", "\n  "))
    path = write_html(rep, html or inputs.out / "report.html")
    typer.echo(f"report: {path} ({len(rep.figures)} figures; PNG and PDF under {inputs.out})")


@fit_app.command("list")
def fit_list_command(
    store: Annotated[str | None, typer.Option("--store", envvar=STORE_ENV, show_envvar=True,
                                              help=f"store URL (default {DEFAULT_URL} here or in the nearest "
                                                   "parent folder)")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="only this sweep's fits")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="only fits of this kind (isoflop, parcae, chinchilla, "
                                                            "frontier, test_time, ...)")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table, json or csv")] = "table",
) -> None:
    """The fits saved in the store (every parcae-fit command saves its fits), newest first."""
    from rich.table import Table

    from parcae_scaling.db import Store, default_url

    with Store.open(store or default_url(), upgrade=False) as st:
        fits = st.fits(kind=kind, sweep=sweep)

    def table() -> Table:
        t = Table("fit id", "kind", "sweep / csv", "convention", "created", "parameters")
        for r in fits.itertuples():
            sel = r.selection or {}
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                               for k, v in list((r.parameters or {}).items())[:6])
            source = r.sweep if isinstance(r.sweep, str) else sel.get("csv") or "-"
            t.add_row(str(r.fit_id), r.kind, source, r.convention,
                      f"{r.created:%Y-%m-%d %H:%M}", params)
        return t
    print_frame(fits, fmt, table)
