"""Two gloo processes on CPU train exactly what one process accumulating the same global batch
trains; a SIGKILLed rank fails the launch (no hang) and a relaunch resumes from the checkpoint,
also under another world size and with ZeRO optimizer sharding."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from parcae_scaling.db.files import read_run_dir
from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model.train.checkpoint import CHECKPOINT_FILE
from parcae_scaling.sweeps.ranks import launch_local, start_local, wait_local
from parcae_scaling.model.train.loop import SUMMARY_FILE, train_run
from parcae_testing import ListSink, tiny_run, write_bin_shards


STEPS = 16
RTOL = 1e-5  # the only difference is the order of float sums in the gradient all-reduce
LAUNCH_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """One process, 2 accumulated micro-batches of 4: global batch 8 sequences."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dist")
    data = write_bin_shards(root / "data")
    run = tiny_run(root / "ref", data, grad_accum_steps=2, tokens=8 * 32 * STEPS, checkpoint_every_steps=2)
    sink = ListSink()
    result = train_run(run, sink)
    assert result.status == RunStatus.SUCCEEDED and result.steps_done == STEPS
    return root, run, result, sink.losses()


def _losses(run_dir: Path) -> dict[int, float]:
    return {step: v for _, step, name, v in read_run_dir(run_dir).metrics if name == "loss"}


def _assert_same_trajectory(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=RTOL), f"step {step}"


@pytest.mark.timeout(300)
def test_two_processes_match_one_process(reference) -> None:
    root, ref, ref_result, ref_losses = reference
    two = ref.with_world_size(2).replace(output_dir=str(root / "two"))
    result = launch_local(two, timeout_s=LAUNCH_TIMEOUT_S)
    assert result.status == RunStatus.SUCCEEDED and result.run_id == ref.run_id
    assert (result.tokens_trained, result.flops_spent) == (ref_result.tokens_trained, ref_result.flops_spent)
    # per_rank depths come from each micro-batch's global index: the same draws as one process.
    assert result.flops_realized == pytest.approx(ref_result.flops_realized, rel=1e-12)
    _assert_same_trajectory(_losses(root / "two"), ref_losses)
    assert result.final_val_loss == pytest.approx(ref_result.final_val_loss, rel=RTOL)
    # rank 0 alone wrote: one metrics row per step, one summary
    assert len(_losses(root / "two")) == STEPS


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.timeout(420)
def test_sigkill_of_one_rank_fails_cleanly_and_relaunch_resumes(reference) -> None:
    root, ref, ref_result, ref_losses = reference
    run = ref.with_world_size(2).replace(output_dir=str(root / "killed"), checkpoint_every_steps=2)
    out = Path(run.output_dir)
    proc = start_local(run)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not (out / CHECKPOINT_FILE).exists():  # wait until there is something to resume from
        assert proc.poll() is None, "the launch ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None, "rank 1 not found among torchrun's children"
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="exited with code"):
        wait_local(proc, run, timeout_s=120)  # the survivor must not hang on a dead peer
    assert not (out / SUMMARY_FILE).exists()
    killed_at = max(_losses(out))
    assert killed_at < STEPS, "the run finished before rank 1 was killed"

    result = launch_local(run, timeout_s=LAUNCH_TIMEOUT_S)
    assert result.status == RunStatus.SUCCEEDED and result.steps_done == STEPS
    assert result.tokens_trained == ref_result.tokens_trained
    _assert_same_trajectory(_losses(out), ref_losses)  # steps re-run after the checkpoint log again
    assert result.final_val_loss == pytest.approx(ref_result.final_val_loss, rel=RTOL)


class _StopAfter(ListSink):
    """Fails the run while logging step `at`, before that step's checkpoint."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def log_metrics(self, run_id, step, values):
        super().log_metrics(run_id, step, values)
        if step == self.at:
            raise RuntimeError("stop here")


@pytest.mark.timeout(300)
def test_one_process_checkpoint_resumes_on_two_zero_sharded_processes(reference) -> None:
    root, ref, ref_result, ref_losses = reference
    one = ref.replace(output_dir=str(root / "regrid"))
    with pytest.raises(RuntimeError, match="stop here"):
        train_run(one, _StopAfter(at=7))  # checkpoints every 2 steps: 6 is on disk
    two = one.with_world_size(2).replace(sharding="zero")
    result = launch_local(two, timeout_s=LAUNCH_TIMEOUT_S)
    assert result.status == RunStatus.SUCCEEDED and result.steps_done == STEPS
    resumed = _losses(Path(two.output_dir))
    assert min(resumed) == 7  # the 2-process launch started from the 1-process checkpoint
    _assert_same_trajectory(resumed, {s: v for s, v in ref_losses.items() if s >= 7})
    assert result.final_val_loss == pytest.approx(ref_result.final_val_loss, rel=RTOL)
