"""One tiny run end to end: the library side of `parcae-sweep train-one`.

Defaults train parcae-tiny-64 (mu_rec 2) on the embedded byte-level stdlib corpus for a 2e11
FLOP budget (~128k tokens, 64 steps of 16 x 128), which takes well under a minute on 2 CPU
cores, writing metrics as JSON lines, checkpoints and a summary to the output directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    tokens: int | None = None,
    seq_len: int = 128,
    batch_size: int = 16,
    grad_accum_steps: int = 1,
    optimizer: str = "adamw",
    lr: float = 3e-3,
    seed: int = 0,
    tokenizer: str = "byte",
    eval_tokens: int = 16_384,
    metrics_every_steps: int = 8,
    checkpoint_every_steps: int = 0,
    output_dir: str | None = None,
    cache_dir: str | None = None,
    nproc_per_node: int = 1,
) -> RunSpec:
    """A RunSpec for one run on the embedded corpus; output_dir defaults to runs/train-one-<run id>.

    nproc_per_node > 1: data-parallel on this node with batch_size (and grad_accum_steps) per
    process, so the global batch, and with it the run id, grows with the processes."""
    overrides: dict[str, object] = {"seq_len": seq_len}
    if mu_rec is not None and get_config(model).is_looped:  # a transformer has fixed depth
        overrides["mu_rec"] = mu_rec
    data = DataSpec(tokenizer=tokenizer, cache_dir=cache_dir)  # type: ignore[arg-type]
    if tokenizer == "bpe":
        overrides["vocab_size"] = data.bpe_vocab_size
    if tokens is not None:
        budget_flops = None
    spec = RunSpec(
        model=get_config(model, **overrides), output_dir=output_dir or "pending",
        budget_flops=budget_flops, tokens=tokens, batch_size=batch_size, grad_accum_steps=grad_accum_steps,
        optimizer=OptimizerSpec(name=optimizer, lr=lr), data=data, seed=seed,  # type: ignore[arg-type]
        eval_tokens=eval_tokens, metrics_every_steps=metrics_every_steps,
        checkpoint_every_steps=checkpoint_every_steps, nproc_per_node=nproc_per_node,
    )
    if output_dir is None:
        spec = spec.replace(output_dir=str(Path("runs") / f"train-one-{spec.run_id}"))
    return spec


def train_one(spec: RunSpec) -> TrainOneResult:
    """Train `spec` with a run-directory (JSON lines) sink in its output directory."""
    data = load_data(spec.data)  # cached; also gives the unigram baseline
    with RunDirSink(spec.output_dir) as sink:
        result = train_run(spec, sink)
    return TrainOneResult(result=result, unigram_entropy_nats=data.unigram_entropy_nats,
                          data_description=data.description)
