"""Resume after a hard kill (SIGKILL mid-run) reproduces the uninterrupted run bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from parcae_scaling.db.files import read_run_dir
from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model.train.checkpoint import CHECKPOINT_FILE
from parcae_scaling.model.run_spec import RunSpec
from parcae_scaling.model.train.loop import train_run
from parcae_testing import ListSink, tiny_run, write_bin_shards


# The child trains with a file sink and SIGKILLs itself right after logging step KILL_AT:
# no handler, no flush, no cleanup runs, exactly like an OOM kill or a preempted node.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from parcae_scaling.db.files import RunDirSink
    from parcae_scaling.model.run_spec import RunSpec
    from parcae_scaling.model.train.loop import train_run

    run = RunSpec.from_json(open(sys.argv[1]).read())
    kill_at = int(sys.argv[2])

    class KillingSink(RunDirSink):
        def log_metrics(self, run_id, step, values):
            super().log_metrics(run_id, step, values)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    train_run(run, KillingSink(run.output_dir))
    """
)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path, optimizer: str) -> None:
    from parcae_scaling.model.run_spec import OptimizerSpec

    data = write_bin_shards(tmp_path / "data")
    common = dict(tokens=4 * 32 * 10, checkpoint_every_steps=3, optimizer=OptimizerSpec(name=optimizer, lr=5e-3))
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    run = tiny_run(killed_dir, data, **common)

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(run.to_json())
    child = subprocess.run([sys.executable, "-c", _CHILD, str(spec_file), "7"], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (killed_dir / CHECKPOINT_FILE).exists()
    assert not (killed_dir / "summary.json").exists()

    resumed_sink = ListSink()
    resumed = train_run(RunSpec.from_json(spec_file.read_text()), resumed_sink)
    assert resumed.status == RunStatus.SUCCEEDED
    assert resumed_sink.statuses[0] == (RunStatus.RUNNING, 6, "resumed from step 6")
    assert sorted(resumed_sink.losses()) == [7, 8, 9, 10]  # continued from the step-6 checkpoint

    clean_sink = ListSink()
    clean = train_run(tiny_run(clean_dir, data, **common), clean_sink)
    clean_losses = clean_sink.losses()

    killed_losses = {step: v for _, step, name, v in read_run_dir(killed_dir).metrics if name == "loss"}
    assert set(range(1, 7)) <= set(killed_losses)  # flushed before the checkpoint: nothing lost
    stitched = {**killed_losses, **resumed_sink.losses()}
    assert stitched == clean_losses  # bit-exact float equality, every step
    assert resumed.tokens_trained == clean.tokens_trained and resumed.flops_spent == clean.flops_spent
    assert resumed.flops_realized == clean.flops_realized
    assert [e.loss for e in resumed.evals] == [e.loss for e in clean.evals]
    w_resumed, w_clean = _weights(killed_dir), _weights(clean_dir)
    assert w_resumed.keys() == w_clean.keys()
    assert all(torch.equal(w_resumed[k], w_clean[k]) for k in w_clean)


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    from parcae_scaling.model import build_model
    from parcae_scaling.model.train.checkpoint import TrainProgress, load_latest_checkpoint, save_checkpoint
    from parcae_scaling.model.train.optim import build_optimizer

    run = tiny_run(tmp_path / "r", write_bin_shards(tmp_path / "d"))
    model = build_model(run.model)
    opt = build_optimizer(model, run.optimizer)
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    save_checkpoint(ckpt_dir, run_id="aaaa", model=model, optimizer=opt, progress=TrainProgress(step=3))
    restored = load_latest_checkpoint(ckpt_dir, run_id="aaaa", model=model, optimizer=opt)
    assert restored is not None and restored.progress.step == 3
    with pytest.raises(ValueError, match="belongs to run"):
        load_latest_checkpoint(ckpt_dir, run_id="bbbb", model=model, optimizer=opt)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [CHECKPOINT_FILE]  # no temp files left
