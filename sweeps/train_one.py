"""One tiny run end to end: the library side of `parcae-sweep train-one`.

Defaults train parcae-tiny-64 (mu_rec 2) on the embedded byte-level stdlib corpus for a 2e11
FLOP budget (~128k tokens, 64 steps of 16 x 128), which takes well under a minute on 2 CPU
cores, writing metrics as JSON lines, checkpoints and a summary to the output directory. Only
the quick-run choices (model, mu_rec, context, budget, logging cadence) are set here; the recipe
(batch, optimizer, lr, seed, tokenizer, eval tokens, ...) is RunSpec's unless given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from parcae_scaling.db.files import RunDirSink
from parcae_scaling.model.config import get_config
from parcae_scaling.model.train.data import load_data
from parcae_scaling.model.run_spec import DataSpec, OptimizerSpec, RunSpec
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.model.contracts import RunResult


@dataclass(frozen=True, kw_only=True)
class TrainOneResult:
    """A finished run plus the corpus baseline it should beat."""

    result: RunResult
    unigram_entropy_nats: float | None  # per token of the training split
    data_description: str


def train_one_spec(
    *,
    model: str = "parcae-tiny-64",
    mu_rec: int | None = 2,
    budget_flops: float | None = 2e11,
    seq_len: int = 128,
    metrics_every_steps: int = 8,
    checkpoint_every_steps: int = 0,
    tokens: int | None = None,
    batch_size: int | None = None,
    grad_accum_steps: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    seed: int | None = None,
    tokenizer: str | None = None,
    eval_tokens: int | None = None,
    nproc_per_node: int | None = None,
    output_dir: str | None = None,
    cache_dir: str | None = None,
) -> RunSpec:
    """A RunSpec for one run on the embedded corpus; output_dir defaults to runs/train-one-<run id>.

    A quick run differs from RunSpec's defaults on purpose, here and only here: a tiny model
    (parcae-tiny-64 at mean recurrence 2, not its config's 4; None keeps the config's), context
    128, a 2e11 FLOP budget (overridden by `tokens`), metrics every 8 steps and no periodic
    checkpoints. Every other argument left None takes RunSpec's default (or OptimizerSpec's for
    optimizer and lr, DataSpec's for tokenizer and cache_dir): model/run_spec.py defines each once.

    nproc_per_node > 1: data-parallel on this node with batch_size (and grad_accum_steps) per
    process, so the global batch, and with it the run id, grows with the processes."""
    overrides: dict[str, object] = {"seq_len": seq_len}
    if mu_rec is not None and get_config(model).is_looped:  # a transformer has fixed depth
        overrides["mu_rec"] = mu_rec
    data = DataSpec(**_given(tokenizer=tokenizer, cache_dir=cache_dir))
    if data.tokenizer == "bpe":
        overrides["vocab_size"] = data.bpe_vocab_size
    spec = RunSpec(
        model=get_config(model, **overrides), output_dir=output_dir or "pending",
        budget_flops=None if tokens is not None else budget_flops, tokens=tokens,
        optimizer=OptimizerSpec(**_given(name=optimizer, lr=lr)), data=data,
        metrics_every_steps=metrics_every_steps, checkpoint_every_steps=checkpoint_every_steps,
        **_given(batch_size=batch_size, grad_accum_steps=grad_accum_steps, seed=seed, eval_tokens=eval_tokens,
                 nproc_per_node=nproc_per_node),
    )
    if output_dir is None:
        spec = spec.replace(output_dir=str(Path("runs") / f"train-one-{spec.run_id}"))
    return spec


def _given(**values: Any) -> dict[str, Any]:
    """The arguments that were given (None: the spec type's own default)."""
    return {k: v for k, v in values.items() if v is not None}


# Called with (step, values) for each metrics row the run logs (the CLI's step progress).
OnMetrics = Callable[[int, Mapping[str, float]], None]


class _ObservedRunDirSink(RunDirSink):
    """A run-directory sink that also hands each metrics row to `on_metrics`."""

    def __init__(self, run_dir: str, on_metrics: OnMetrics) -> None:
        super().__init__(run_dir)
        self._on_metrics = on_metrics

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        super().log_metrics(run_id, step, values)
        self._on_metrics(step, values)


def train_one(spec: RunSpec, *, on_metrics: OnMetrics | None = None) -> TrainOneResult:
    """Train `spec` with a run-directory (JSON lines) sink in its output directory; `on_metrics`
    sees every metrics row as it is logged (every `metrics_every_steps` steps and the last)."""
    data = load_data(spec.data)  # cached; also gives the unigram baseline
    sink = RunDirSink(spec.output_dir) if on_metrics is None else _ObservedRunDirSink(spec.output_dir, on_metrics)
    with sink:
        result = train_run(spec, sink)
    return TrainOneResult(result=result, unigram_entropy_nats=data.unigram_entropy_nats,
                          data_description=data.description)
