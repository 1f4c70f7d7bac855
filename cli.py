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
) -> None:
    """Train one run end to end (default: a tiny Parcae on the embedded corpus) and print its summary."""
    import json
    from pathlib import Path

    import torch

    from parcae_scaling.model.run_spec import RunSpec
    from parcae_scaling.model.train_one import train_one, train_one_spec

    torch.set_num_threads(threads)
    try:
        if spec:
            run = RunSpec.from_json(Path(spec).read_text())
        else:
            run = train_one_spec(model=model, mu_rec=mu_rec, budget_flops=budget_flops,
                                 tokens=tokens, batch_size=batch_size, seq_len=seq_len, optimizer=optimizer,
                                 lr=lr, seed=seed, tokenizer=tokenizer, eval_tokens=eval_tokens,
                                 output_dir=output_dir)
        out = train_one(run)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1)
    r = out.result
    typer.echo(json.dumps(r.to_dict(), indent=2))
    typer.echo(f"data: {out.data_description}")
    if out.unigram_entropy_nats is not None and r.final_val_loss is not None:
        typer.echo(f"val loss {r.final_val_loss:.4f} nats/token vs unigram entropy "
                   f"{out.unigram_entropy_nats:.4f} nats/token")
    if r.status.value != "succeeded":
        raise typer.Exit(code=1)
