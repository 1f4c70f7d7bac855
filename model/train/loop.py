"""Train one run from its RunSpec: the unit every sweep dispatches.

`train_run(run, sink)` trains exactly `plan_tokens(run).tokens` tokens, logging metrics through
the sink, checkpointing atomically, resuming from the newest readable checkpoint in its output
directory, and ending with validation at several recurrences and a versioned `summary.json`. A
run that stays finite but ends no better than the unigram baseline after its loss blew up is
recorded DIVERGED.

Determinism: the batch of step s, micro-batch m is a pure function of (seed, s, m), and so is
the torch.Generator that draws the per-sequence depths; a resumed run therefore repeats the
uninterrupted trajectory bit for bit on CPU. The divergence guard checks loss and gradient
norm every step (one scalar sync per step) before the optimizer is allowed to move.

Data parallelism (RunSpec.nproc_per_node x nodes processes, model/train/distributed.py): rank r's
local micro-batch m is global micro-batch g = r * grad_accum_steps + m of the step, so the ranks
read disjoint slices and together read exactly the batches a single process accumulating all
g would. Depths: "per_rank" draws them from (seed, step, g), so a run is the same for every
world size (and a 2-process run equals the 1-process run up to float summation order);
"shared" draws them from (seed, step, m), the same on all ranks. DDP averages gradients; loss
and depth sums are all-reduced; rank 0 alone writes metrics, checkpoints and the summary.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from parcae_scaling.model.contracts import EvalRow, MetricsSink, NullSink, RunResult, RunStatus
from parcae_scaling.faults import fault_point
from parcae_scaling.model import build_model
from parcae_scaling.model.blocks import compile_blocks
from parcae_scaling.model.train import distributed as pdist
from parcae_scaling.model.train.checkpoint import TrainProgress, load_latest_checkpoint, save_checkpoint
from parcae_scaling.model.train.corpus import unigram_entropy_nats
from parcae_scaling.model.train.data import (
    TokenData, global_micro_index, load_data, train_batch, val_batches, val_windows,
)
from parcae_scaling.model.flops import flops_per_token
from parcae_scaling.model.mfu import device_peak_flops, model_flops_utilisation
from parcae_scaling.model.train.optim import OptimizerBundle, build_optimizer
from parcae_scaling.model.train.precision import PrecisionChoice, configure_matmuls, resolve_precision
from parcae_scaling.model.train.provenance import collect_provenance
from parcae_scaling.model.run_spec import RunSpec, TokenPlan, plan_tokens
from parcae_scaling.model.train.schedule import lr_multiplier_at_step

SUMMARY_FILE = "summary.json"
SPEC_FILE = "run_spec.json"
_RECENT_LOSSES = 10  # final train loss = mean of the last steps' losses
_DEPTH_STREAM = 0xDE97
_EVAL_STREAM = 1 << 40  # step numbers at and above this seed evaluation, never training
# A train loss this far above the untrained model's (step 1) means the optimizer blew the model up:
# a factor e in perplexity. Healthy runs never rise above step 1's loss; lr 1.0 peaks ~75 nats above.
_BLOWUP_NATS = 1.0
_UNIGRAM_SAMPLE_TOKENS = 1 << 22  # tokens read to estimate the unigram entropy of .bin shards


def resolve_device(run: RunSpec) -> torch.device:
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("RunSpec.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(run.device)


def depth_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The CPU generator that draws per-sequence depths of (step, micro): pure in its inputs."""
    state = np.random.SeedSequence([_DEPTH_STREAM, seed, step, micro]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def _realized_flops_per_token(run: RunSpec, mean_depth: float, mean_grad_depth: float) -> float:
    """The convention evaluated at the sampled mean depths (it is linear in mu_rec and mu_bwd)."""
    if not run.model.is_looped:
        return float(flops_per_token(run.model, convention=run.flop_convention))
    f = lambda r, b: flops_per_token(run.model, mu_rec=r, mu_bwd=b, convention=run.flop_convention)  # noqa: E731
    base, per_rec, per_bwd = f(1, 1), f(2, 1) - f(1, 1), f(2, 2) - f(2, 1)
    return base + per_rec * (mean_depth - 1.0) + per_bwd * (mean_grad_depth - 1.0)


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prepare_output_dir(run: RunSpec, *, write: bool = True) -> Path:
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / SPEC_FILE
    if spec_path.exists():
        existing = RunSpec.from_json(spec_path.read_text())
        if existing.run_id != run.run_id:
            raise ValueError(f"{out} holds run {existing.run_id}, not {run.run_id}; use a fresh output_dir")
    if write:
        _write_json_atomic(spec_path, run.to_dict())
    return out


@torch.no_grad()
def evaluate_recurrences(
    model: nn.Module, data: TokenData, run: RunSpec, device: torch.device, precision: PrecisionChoice | None = None,
) -> list[EvalRow]:
    """Validation loss (nats/token, token-weighted) at each recurrence T: one row per T, in the
    run's training precision (default: `run.precision` resolved for `device`)."""
    precision = precision or resolve_precision(run.precision, device, width=run.model.d_model)
    model.eval()
    rows: list[EvalRow] = []
    for t in run.recurrences_to_evaluate():
        total, count = 0.0, 0
        batches = val_batches(data.val, seq_len=run.seq_len, batch_size=run.batch_size, max_tokens=run.eval_tokens)
        for i, (x, y) in enumerate(batches):
            x, y = x.to(device), y.to(device)
            # Seeded per (T, batch): the random initial state h_0 never depends on RNG history.
            gen = depth_generator(run.seed, _EVAL_STREAM + t, i)
            with precision.autocast(device):
                out = model(x, y, recurrence=t if run.model.is_looped else None, generator=gen)
            total += float(out.loss) * y.numel()
            count += y.numel()
        rows.append(EvalRow(recurrence=t, split="val", loss=total / count, tokens=count))
    model.train()
    return rows


def _check_vocab(x: torch.Tensor, vocab_size: int, data: TokenData) -> None:
    top = int(x.max())
    if top >= vocab_size:
        raise ValueError(
            f"token id {top} from {data.description} exceeds the model's vocab_size {vocab_size}; "
            "raise ModelConfig.vocab_size to the tokenizer's vocabulary"
        )


def unigram_baseline_nats(data: TokenData, vocab_size: int) -> float:
    """The unigram entropy of the training data in nats per token (model/train/corpus.py's one
    implementation): the loss of predicting every token from the global token frequencies.

    Embedded and parquet data carry it; for .bin shards it is computed here from up to
    _UNIGRAM_SAMPLE_TOKENS tokens in evenly spaced windows (the plug-in estimate's bias, about
    vocab / (2 * tokens) nats, is below 0.01 for vocabularies up to 80k)."""
    if data.unigram_entropy_nats is not None:
        return data.unigram_entropy_nats
    n = len(data.train)
    windows = 64
    if n <= _UNIGRAM_SAMPLE_TOKENS:
        tokens = data.train.window(0, n)
    else:
        size = _UNIGRAM_SAMPLE_TOKENS // windows
        starts = np.linspace(0, n - size, windows).astype(np.int64)
        tokens = np.concatenate([data.train.window(int(s), size) for s in starts])
    return unigram_entropy_nats(tokens, vocab_size)


def learned_nothing(run: RunSpec, data: TokenData, progress: TrainProgress, evals: list[EvalRow]) -> str | None:
    """Why a run that stayed finite must not count as a result, or None if it may.

    A run whose training loss rose more than _BLOWUP_NATS above its untrained loss (step 1) and
    whose final validation loss is still no better than the unigram entropy of its training data
    diverged without producing a NaN: a learning rate too high (lr 1.0 on parcae-tiny-48 peaks at
    ~80 nats and ends at 3.6-5.0 vs 3.25). A short healthy run may also end above the unigram
    entropy, but its loss never rises above where it started: that is undertrained, not diverged.
    A non-finite validation loss always counts."""
    at_mu = [e.loss for e in evals if e.recurrence == (run.mu_rec if run.model.is_looped else 1)]
    if not at_mu:
        return None
    val = at_mu[0]
    blew_up = (progress.first_loss is not None and progress.peak_loss is not None
               and progress.peak_loss > progress.first_loss + _BLOWUP_NATS)
    if math.isfinite(val) and not blew_up:
        return None  # the unigram baseline is only computed for a suspect run
    baseline = unigram_baseline_nats(data, run.model.vocab_size)
    if val < baseline:
        return None
    peak = (f" (train loss peaked at {progress.peak_loss:.4g}, from {progress.first_loss:.4g} at step 1)"
            if blew_up else "")
    return (f"final val loss {val:.4f} nats/token is no better than the unigram entropy {baseline:.4f} of the "
            f"training data{peak}: the run learned nothing; lower the learning rate")


def _result(run: RunSpec, plan: TokenPlan, progress: TrainProgress, *, status: RunStatus, params: int,
            evals: list[EvalRow], wall: float, diverged_step: int | None = None,
            message: str | None = None) -> RunResult:
    seqs = max(progress.sequences, 1)
    realized = _realized_flops_per_token(run, progress.depth_sum / seqs, progress.grad_depth_sum / seqs)
    at_mu = [e for e in evals if e.recurrence == (run.mu_rec if run.model.is_looped else 1)]
    recent = progress.recent_losses
    return RunResult(
        run_id=run.run_id, status=status, output_dir=str(run.output_dir),
        steps_planned=plan.steps, steps_done=progress.step,
        tokens_planned=plan.tokens, tokens_trained=progress.tokens,
        flops_per_token=plan.flops_per_token, flop_convention=run.flop_convention,
        flops_planned=plan.planned_flops, flops_spent=plan.flops_per_token * progress.tokens,
        flops_realized=realized * progress.tokens, params_total=params,
        final_train_loss=sum(recent) / len(recent) if recent else None,
        final_val_loss=at_mu[0].loss if at_mu else None,
        val_tokens=at_mu[0].tokens if at_mu else 0, evals=tuple(evals), wall_time_s=wall,
        train_seconds=progress.train_seconds, precision=progress.precision,
        diverged_step=diverged_step, message=message,
    )


def train_run(run: RunSpec, sink: MetricsSink) -> RunResult:
    """Train (or resume) one run to its planned tokens, evaluate it and write its summary.

    Under a multi-process launcher every rank calls this with the same spec; all of them return
    rank 0's result, and only rank 0 uses `sink` (the others may pass a NullSink)."""
    with pdist.distributed_context(run, resolve_device(run)) as ctx:
        if not ctx.is_main:
            sink = NullSink()
        return _train_run(run, sink, ctx)


def _train_run(run: RunSpec, sink: MetricsSink, ctx: pdist.DistContext) -> RunResult:
    wall0 = time.perf_counter()
    out = _prepare_output_dir(run, write=ctx.is_main)
    run_id = run.run_id
    summary_path = out / SUMMARY_FILE
    if summary_path.exists():
        done = RunResult.from_dict(json.loads(summary_path.read_text()))
        if done.status == RunStatus.SUCCEEDED and run.has_id(done.run_id):
            # Idempotent: a finished run is not trained twice, but its sink still hears how it ended
            # (a new store beside an old run directory would otherwise never learn it).
            sink.log_evals(run_id, list(done.evals))
            sink.update_status(run_id, RunStatus.SUCCEEDED, step=done.steps_done,
                               message=f"already finished: {summary_path}")
            sink.flush()
            return done
    progress = TrainProgress()
    try:
        plan = plan_tokens(run)
        data = load_data(run.data)
        if data.vocab_size is not None and data.vocab_size > run.model.vocab_size:
            raise ValueError(f"the data's tokenizer has {data.vocab_size} ids but ModelConfig.vocab_size is "
                             f"{run.model.vocab_size}; set vocab_size >= {data.vocab_size}")
        val_windows(data.val, seq_len=run.seq_len, max_tokens=run.eval_tokens)  # fail early, not after training
        device = ctx.device
        torch.manual_seed(run.seed)
        model = build_model(run.model).to(device)
        params = sum(p.numel() for p in model.parameters())
        optimizer = build_optimizer(model, run.optimizer)
        if run.sharding == "zero":
            optimizer = pdist.shard_optimizer(optimizer)
        # Every rank restores rank 0's checkpoint (a shared file system).
        restored = load_latest_checkpoint(out, run_id=run_id, model=model, optimizer=optimizer,
                                          aliases=run.legacy_run_ids)
        fallback = restored.fallback_note() if restored is not None else None
        if restored is not None:
            progress = restored.progress
        precision = resolve_precision(run.precision, device, width=run.model.d_model, pinned=progress.precision)
        progress.precision = precision.precision
        configure_matmuls(run.precision, device)
        sink.log_provenance(run_id, collect_provenance(device, precision, world_size=ctx.world_size))
        if fallback and ctx.is_main:
            print(f"parcae train: run {run_id}: {fallback}", file=sys.stderr, flush=True)
        resumed = f"resumed from step {progress.step}" if progress.step else None
        sink.update_status(run_id, RunStatus.RUNNING, step=progress.step,
                           message="; ".join(m for m in (resumed, fallback) if m) or None)
        if run.compile:
            compile_blocks(model)  # per block: the loop's data-dependent depth stays in Python
        forward = pdist.wrap_ddp(model, ctx)
        diverged = _train_steps(run, plan, data, model, forward, optimizer, progress, sink, ctx, out, precision)
        if not ctx.is_main:
            return RunResult.from_dict(pdist.broadcast_object(None))
        if diverged is not None:
            step, why = diverged
            sink.update_status(run_id, RunStatus.DIVERGED, step=step, message=why)
            sink.flush()
            result = _result(run, plan, progress, status=RunStatus.DIVERGED, params=params, evals=[],
                             wall=time.perf_counter() - wall0, diverged_step=step, message=why)
            _write_json_atomic(summary_path, result.to_dict())
            pdist.broadcast_object(result.to_dict())
            return result
        evals = evaluate_recurrences(model, data, run, device, precision)
        sink.log_evals(run_id, evals)
        why = learned_nothing(run, data, progress, evals)
        status = RunStatus.SUCCEEDED if why is None else RunStatus.DIVERGED  # fits read succeeded runs only
        result = _result(run, plan, progress, status=status, params=params, evals=evals,
                         wall=time.perf_counter() - wall0, message=why)
        _write_json_atomic(summary_path, result.to_dict())
        fault_point("summary_written")
        sink.update_status(run_id, status, step=progress.step, message=why)
        fault_point("final_flush")
        sink.flush()
        pdist.broadcast_object(result.to_dict())  # the other ranks wait for rank 0's evaluation
        return result
    except Exception as exc:
        sink.update_status(run_id, RunStatus.FAILED, step=progress.step, message=f"{type(exc).__name__}: {exc}")
        sink.flush()
        raise


def _train_steps(run: RunSpec, plan: TokenPlan, data: TokenData, model: nn.Module, forward: nn.Module,
                 optimizer: OptimizerBundle, progress: TrainProgress, sink: MetricsSink,
                 ctx: pdist.DistContext, ckpt_dir: Path, precision: PrecisionChoice) -> tuple[int, str] | None:
    """The optimizer-step loop; returns (step, reason) if the run diverged, else None (on every
    rank alike: the decision uses all-reduced loss and the all-reduced gradients)."""
    run_id = run.run_id
    device = ctx.device
    accum = run.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    clip = run.optimizer.grad_clip_norm if run.optimizer.grad_clip_norm > 0 else float("inf")
    peak, _ = device_peak_flops(device)
    recent: deque[float] = deque(progress.recent_losses, maxlen=_RECENT_LOSSES)
    window_t0, window_tokens = time.perf_counter(), 0
    model.train()
    while progress.step < plan.steps:
        step = progress.step
        t_step = time.perf_counter()
        mult = lr_multiplier_at_step(step, plan.steps, run.schedule)
        optimizer.set_lr_multiplier(mult)
        optimizer.zero_grad()
        loss_sum = torch.zeros((), device=device)
        depth_sum = grad_depth_sum = 0.0
        for micro in range(accum):
            g = global_micro_index(rank=ctx.rank, micro=micro, grad_accum_steps=accum)
            x, y = train_batch(data.train, seed=run.seed, step=step, micro=g,
                               batch_size=run.batch_size, seq_len=run.seq_len)
            _check_vocab(x, run.model.vocab_size, data)
            if device.type == "cuda":  # a copy from pinned memory is asynchronous; from pageable it is not
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            depth_key = g if run.depth_sampling == "per_rank" else micro
            # DDP all-reduces gradients on the last micro-batch only.
            sync = forward.no_sync() if micro < accum - 1 and hasattr(forward, "no_sync") else contextlib.nullcontext()
            with sync:
                with precision.autocast(device):
                    out = forward(x, y, generator=depth_generator(run.seed, step, depth_key))
                (out.loss / accum).backward()
            loss_sum += out.loss.detach().float()
            if out.depths is not None:
                d = out.depths.detach().to("cpu", torch.float64)
                depth_sum += float(d.sum())
                grad_depth_sum += float(d.clamp(max=run.mu_bwd).sum())
            else:
                depth_sum += x.shape[0]
                grad_depth_sum += x.shape[0]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        loss_sum_all, depth_sum, grad_depth_sum = pdist.all_reduce_sum(
            [float(loss_sum), depth_sum, grad_depth_sum], device)
        loss = loss_sum_all / run.global_micro_batches
        number = step + 1  # metrics and statuses use 1-based optimizer step numbers
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            sink.log_metrics(run_id, number, {"loss": loss, "grad_norm": grad_norm, "lr": run.optimizer.lr * mult})
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            return number, f"non-finite {what} at step {number} (loss={loss}, grad_norm={grad_norm})"
        optimizer.step()
        fault_point("step")  # PARCAE_FAULT=step:n kills after this process's n-th optimizer step
        n_tokens = run.tokens_per_step  # global: every rank counts the whole step
        progress.step = number
        progress.tokens += n_tokens
        progress.sequences += run.global_batch_size
        progress.depth_sum += depth_sum
        progress.grad_depth_sum += grad_depth_sum
        progress.train_seconds += time.perf_counter() - t_step
        recent.append(loss)
        progress.recent_losses = list(recent)
        if progress.first_loss is None:
            progress.first_loss = loss  # the untrained model's loss: step 1 is measured before any update
        progress.peak_loss = max(loss, progress.peak_loss if progress.peak_loss is not None else loss)
        window_tokens += n_tokens
        if number % run.metrics_every_steps == 0 or number == plan.steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = max(time.perf_counter() - window_t0, 1e-9)
            tps = window_tokens / elapsed
            values = {
                "loss": loss, "lr": run.optimizer.lr * mult, "lr_multiplier": mult, "grad_norm": grad_norm,
                "tokens": float(progress.tokens), "flops": float(plan.flops_per_token * progress.tokens),
                "tokens_per_s": tps, "mfu": model_flops_utilisation(plan.flops_per_token, tps, peak * ctx.world_size),
                "mean_depth": depth_sum / run.global_batch_size,
            }
            for name, value in out.diagnostics.as_floats().items():
                if math.isfinite(value):  # NaN means "not applicable" (transformer)
                    values[name] = value
            sink.log_metrics(run_id, number, values)
            window_t0, window_tokens = time.perf_counter(), 0
        every = run.checkpoint_every_steps
        if number == plan.steps or (every and number % every == 0):
            sink.flush()  # metrics up to the checkpoint are durable before it is
            pdist.consolidate_optimizer(optimizer)  # ZeRO: gather the shards on rank 0 (collective)
            if ctx.is_main:
                save_checkpoint(ckpt_dir, run_id=run_id, model=model, optimizer=optimizer, progress=progress)
    return None
