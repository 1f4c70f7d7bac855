"""A run that stays finite but learns nothing (its loss blew up and it ends no better than the
unigram entropy of its training data) is recorded DIVERGED, so fits never see it; healthy runs,
short or long, stay SUCCEEDED (probe case 5.3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from parcae_scaling.model.contracts import EvalRow, RunStatus
from parcae_scaling.model.train.checkpoint import TrainProgress
from parcae_scaling.model.train.data import load_data
from parcae_scaling.model.run_spec import OptimizerSpec
from parcae_scaling.model.train.loop import SUMMARY_FILE, learned_nothing, train_run, unigram_baseline_nats
from parcae_testing import ListSink, tiny_run, write_bin_shards


def test_lr_1_learns_nothing_and_is_recorded_diverged(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "d")
    run = tiny_run(tmp_path / "r", data, tokens=4 * 32 * 30, optimizer=OptimizerSpec(lr=1.0))
    sink = ListSink()
    result = train_run(run, sink)
    baseline = unigram_baseline_nats(load_data(data), 256)
    # Measured: the loss climbs from 5.66 to ~81 nats and the final val loss is 6.27 vs 3.08.
    assert math.isfinite(result.final_val_loss) and result.final_val_loss >= baseline
    assert result.status == RunStatus.DIVERGED
    assert result.message == sink.statuses[-1][2]
    assert f"final val loss {result.final_val_loss:.4f} nats/token" in result.message
    assert f"unigram entropy {baseline:.4f} of the training data" in result.message
    assert result.message.endswith("the run learned nothing; lower the learning rate")
    assert [s for s, _, _ in sink.statuses] == [RunStatus.RUNNING, RunStatus.DIVERGED]
    assert json.loads((tmp_path / "r" / SUMMARY_FILE).read_text())["status"] == "diverged"
    assert sink.evals  # the evals stay recorded; the status keeps them out of fits


def test_healthy_runs_stay_succeeded_on_both_sides_of_the_baseline(tmp_path: Path) -> None:
    data = write_bin_shards(tmp_path / "d")
    baseline = unigram_baseline_nats(load_data(data), 256)
    learned = train_run(tiny_run(tmp_path / "long", data, tokens=4 * 32 * 60,
                                   optimizer=OptimizerSpec(lr=1e-2)), ListSink())
    assert learned.status == RunStatus.SUCCEEDED and learned.final_val_loss < 0.5 * baseline  # measured 0.13 vs 3.08
    # Six steps: not yet below the baseline, but its loss only fell: undertrained, not diverged.
    short = train_run(tiny_run(tmp_path / "short", data), ListSink())
    assert short.status == RunStatus.SUCCEEDED and short.final_val_loss > baseline and short.message is None


def _decide(val: float, first: float | None, peak: float | None, tmp_path: Path) -> str | None:
    data = write_bin_shards(tmp_path / "d")
    run = tiny_run(tmp_path / "r", data)
    evals = [EvalRow(recurrence=run.mu_rec, split="val", loss=val, tokens=512)]
    progress = TrainProgress(step=6, first_loss=first, peak_loss=peak)
    return learned_nothing(run, load_data(data), progress, evals)


@pytest.mark.parametrize(("val", "first", "peak", "flagged"), [
    (6.0, 5.6, 80.0, True),  # blew up, ended above the baseline (3.08)
    (2.0, 5.6, 80.0, False),  # blew up but recovered below the baseline: a result
    (6.0, 5.6, 6.0, False),  # above the baseline, never rose 1 nat above step 1: undertrained
    (float("nan"), 5.6, 5.6, True),  # a non-finite val loss always counts
    (6.0, None, None, False),  # a checkpoint from before the loss extremes were recorded
])
def test_decision(tmp_path: Path, val: float, first: float | None, peak: float | None, flagged: bool) -> None:
    assert (_decide(val, first, peak, tmp_path) is not None) is flagged


def test_unigram_baseline_is_the_one_implementation(tmp_path: Path) -> None:
    from parcae_scaling.model.train.corpus import unigram_entropy_nats

    data = load_data(write_bin_shards(tmp_path / "d"))
    assert data.unigram_entropy_nats is None  # .bin shards: computed from the tokens
    everything = data.train.window(0, len(data.train))
    assert unigram_baseline_nats(data, 256) == unigram_entropy_nats(everything, 256)
