"""train_run end to end on tiny models: planned tokens, FLOPs, evals, divergence, sources."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model import build_model
from parcae_scaling.model.config import get_config
from parcae_scaling.model.train.optim import build_optimizer
from parcae_scaling.model.run_spec import DataSpec, OptimizerSpec, plan_tokens
from parcae_scaling.model.train.loop import SUMMARY_FILE, train_run
from parcae_scaling.model.contracts import RunResult
from parcae_testing import ListSink, tiny_run, write_bin_shards



def test_trains_exactly_the_planned_tokens_and_flops(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "data")
    run = tiny_run(tmp_path / "run", data, tokens=4 * 32 * 5 + 100, eval_recurrences=(1, 3))
    plan = plan_tokens(run)
    assert (plan.steps, plan.tokens) == (5, 4 * 32 * 5)  # floored to whole steps
    sink = ListSink()
    result = train_run(run, sink)
    assert result.status == RunStatus.SUCCEEDED
    assert result.tokens_trained == plan.tokens and result.steps_done == 5
    assert result.flops_spent == plan.planned_flops == plan.flops_per_token * plan.tokens
    assert result.flops_realized > 0 and math.isclose(result.flops_realized, result.flops_spent, rel_tol=0.5)
    assert sorted(sink.losses()) == [1, 2, 3, 4, 5]
    last = sink.metrics[-1][2]
    assert last["tokens"] == plan.tokens and last["flops"] == plan.planned_flops
    assert {"lr", "grad_norm", "tokens_per_s", "mfu", "rho_a", "state_norm"} <= set(last)
    assert 0 < last["rho_a"] < 1  # diagonal injection is stable by construction
    # One eval row per T: the explicit list plus the training depth mu_rec = 2.
    assert [r.recurrence for _, r in sink.evals] == [1, 2, 3]
    assert all(r.tokens == 512 and r.split == "val" and math.isfinite(r.loss) for _, r in sink.evals)
    assert result.final_val_loss == [r.loss for _, r in sink.evals if r.recurrence == 2][0]
    assert [s for s, _, _ in sink.statuses] == [RunStatus.RUNNING, RunStatus.SUCCEEDED]
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert summary["summary_version"] == 1 and RunResult.from_dict(summary) == result
    # A finished run is not trained again.
    again = ListSink()
    assert train_run(run, again) == result and again.metrics == []


def test_budget_below_one_step_is_rejected(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "d"), tokens=None, budget_flops=1e3)
    with pytest.raises(ValueError, match="less than one optimizer step"):
        plan_tokens(run)
    big = run.replace(budget_flops=1e10)
    plan = plan_tokens(big)
    assert plan.tokens % big.tokens_per_step == 0 and plan.tokens <= plan.requested_tokens
    assert plan.requested_tokens - plan.tokens < big.tokens_per_step


def test_absurd_learning_rate_diverges_and_keeps_metrics(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "data")
    run = tiny_run(tmp_path / "run", data, tokens=4 * 32 * 20,
                     optimizer=OptimizerSpec(lr=1e30, grad_clip_norm=0.0))
    sink = ListSink()
    result = train_run(run, sink)
    assert result.status == RunStatus.DIVERGED
    assert result.diverged_step is not None and 1 <= result.diverged_step <= 20
    assert sink.statuses[-1][0] == RunStatus.DIVERGED and sink.statuses[-1][1] == result.diverged_step
    steps = sorted(sink.losses())
    assert steps == list(range(1, result.diverged_step + 1))  # every step up to the bad one kept
    bad = sink.metrics[-1][2]
    assert not (math.isfinite(bad["loss"]) and math.isfinite(bad["grad_norm"]))
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["status"] == "diverged"


def test_muon_optimizer_trains_and_groups_are_right(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "data")
    run = tiny_run(tmp_path / "run", data, optimizer=OptimizerSpec(name="muon", lr=1e-2, weight_decay=0.1))
    torch.manual_seed(0)
    model = build_model(run.model)
    bundle = build_optimizer(model, run.optimizer)
    assert set(bundle.optimizers) == {"muon", "adamw"}
    groups = {g["group_name"]: g for g in bundle.param_groups()}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["matrix"]["weight_decay"] == 0.1
    no_decay_ids = {id(p) for p in groups["no_decay"]["params"]}
    injection = [p for n, p in model.named_parameters() if n.startswith("injection.")]
    assert injection and all(id(p) in no_decay_ids for p in injection)
    sink = ListSink()
    result = train_run(run, sink)
    assert result.status == RunStatus.SUCCEEDED
    losses = sink.losses()
    assert all(math.isfinite(v) for v in losses.values())


def test_loss_decreases_on_learnable_data(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "data")
    run = tiny_run(tmp_path / "run", data, tokens=4 * 32 * 30, optimizer=OptimizerSpec(lr=1e-2))
    sink = ListSink()
    train_run(run, sink)
    losses = sink.losses()
    assert losses[30] < losses[1] - 1.0  # repeating text: a tiny model learns it fast


def test_parquet_and_embedded_sources_train(tmp_path: Path) -> None:
    texts = [f"def f_{i}(x):\n    return x + {i}\n" * 5 for i in range(60)]
    pq.write_table(pa.table({"text": texts[:50]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": texts[50:]}), tmp_path / "val.parquet")
    parquet = DataSpec(source="parquet", train_paths=(str(tmp_path / "train.parquet"),),
                       val_paths=(str(tmp_path / "val.parquet"),), cache_dir=str(tmp_path / "cache"))
    r1 = train_run(tiny_run(tmp_path / "p", parquet, tokens=4 * 32 * 2), ListSink())
    assert r1.status == RunStatus.SUCCEEDED and r1.tokens_trained == 256
    embedded = DataSpec(cache_dir=str(tmp_path / "cache"))
    r2 = train_run(tiny_run(tmp_path / "e", embedded, tokens=4 * 32 * 2), ListSink())
    assert r2.status == RunStatus.SUCCEEDED and r2.final_val_loss is not None


def test_transformer_baseline_trains(tmp_path: Path) -> None:
    model = get_config("transformer-tiny-64", d_model=32, d_ff=64, n_heads=2, seq_len=32)
    sink = ListSink()
    result = train_run(tiny_run(tmp_path / "t", write_bin_shards(tmp_path / "d"), model=model, tokens=256), sink)
    assert result.status == RunStatus.SUCCEEDED
    assert [r.recurrence for _, r in sink.evals] == [1]
    assert "rho_a" not in sink.metrics[-1][2]  # not applicable to a fixed-depth model


def test_failures_are_reported_with_status(tmp_path: Path) -> None:
    wide = (tmp_path / "d")
    wide.mkdir()
    import numpy as np

    np.full(5000, 300, dtype=np.uint16).tofile(wide / "train.bin")
    np.full(500, 300, dtype=np.uint16).tofile(wide / "val.bin")
    data = DataSpec(source="bin", train_paths=(str(wide / "train.bin"),), val_paths=(str(wide / "val.bin"),))
    sink = ListSink()
    with pytest.raises(ValueError, match="vocab_size"):
        train_run(tiny_run(tmp_path / "run", data), sink)
    assert sink.statuses[-1][0] == RunStatus.FAILED and "vocab_size" in sink.statuses[-1][2]
    # An output directory belongs to one run spec.
    other = tiny_run(tmp_path / "run", data, seed=99)
    with pytest.raises(ValueError, match="fresh output_dir"):
        train_run(other, ListSink())


def test_evaluation_gives_one_row_per_recurrence_independent_of_rng_history(tmp_path: Path) -> None:
    from parcae_scaling.model.train.data import load_data
    from parcae_scaling.model.train.loop import evaluate_recurrences

    run = tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "d"), eval_recurrences=(1, 3, 6))
    torch.manual_seed(0)
    model = build_model(run.model)
    data = load_data(run.data)
    torch.manual_seed(123)
    first = evaluate_recurrences(model, data, run, torch.device("cpu"))
    torch.manual_seed(456)
    second = evaluate_recurrences(model, data, run, torch.device("cpu"))
    assert [r.recurrence for r in first] == [1, 2, 3, 6] and first == second
    assert len({r.loss for r in first}) == 4  # depth really changes the prediction
    assert model.training  # evaluation restores training mode


def test_gradient_accumulation_reaches_the_global_batch(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "data")
    run = tiny_run(tmp_path / "run", data, batch_size=2, grad_accum_steps=3, tokens=2 * 3 * 32 * 4)
    assert run.tokens_per_step == 192
    sink = ListSink()
    result = train_run(run, sink)
    assert result.steps_done == 4 and result.tokens_trained == 768
    assert [v["tokens"] for _, _, v in sink.metrics] == [192.0, 384.0, 576.0, 768.0]


def test_compiled_blocks_train_like_eager_on_cpu(tmp_path: Path) -> None:
    """run.compile compiles each block (inductor's C++ backend on CPU): same losses as eager."""
    data = write_bin_shards(tmp_path / "data")
    losses = {}
    for compiled in (False, True):
        run = tiny_run(tmp_path / f"run-{compiled}", data, tokens=4 * 32 * 4, compile=compiled)
        sink = ListSink()
        assert train_run(run, sink).status == RunStatus.SUCCEEDED
        losses[compiled] = sink.losses()
    assert losses[True].keys() == losses[False].keys()
    for step, loss in losses[False].items():
        assert losses[True][step] == pytest.approx(loss, rel=1e-4)
