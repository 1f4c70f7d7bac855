"""Command-line entry points: `parcae-sweep` and `parcae-fit`.

Argument parsing and printing only; every command calls the library API.
"""

from __future__ import annotations

import typer

sweep_app = typer.Typer(
    name="parcae-sweep",
    help="Plan, launch and track FLOP-matched sweeps of looped (Parcae) language models.",
    no_args_is_help=True,
    add_completion=False,
)
fit_app = typer.Typer(
    name="parcae-fit",
    help="Fit scaling laws to sweep results and draw publication figures.",
    no_args_is_help=True,
    add_completion=False,
)
