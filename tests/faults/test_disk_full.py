"""Disk full while writing a checkpoint, on a real tiny filesystem (a tmpfs sized so the first
checkpoint fits and the second does not): the earlier checkpoint stays usable, the run fails
with the resumable kind "disk_full", and once space is freed the next attempt continues from the
earlier checkpoint and ends exactly like an uninterrupted run. Needs root (mount); skips if not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model.train.checkpoint import (
    CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CheckpointNoSpace, checkpoint_step,
)
from parcae_scaling.model.train.loop import train_run
from parcae_scaling.sweeps.claims import RETRYABLE_KINDS
from parcae_scaling.sweeps.writer import classify
from parcae_testing import ListSink, tiny_run, write_bin_shards


pytestmark = pytest.mark.usefixtures("one_torch_thread")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """mount(size_bytes) -> a tmpfs of that size (remounted in place when called again)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    mounted = False

    def mount(size: int) -> Path:
        nonlocal mounted
        opts = f"remount,size={size}" if mounted else f"size={size}"
        cmd = (["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)] if not mounted
               else ["mount", "-o", opts, str(mnt)])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
        mounted = True
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_keeps_the_previous_checkpoint_and_resumes_from_it(tmp_path: Path, tiny_fs) -> None:
    data = write_bin_shards(tmp_path / "d")
    # The uninterrupted reference (on the ordinary disk) also gives the checkpoint's size.
    clean_sink = ListSink()
    clean = train_run(tiny_run(tmp_path / "clean", data, checkpoint_every_steps=2), clean_sink)
    ckpt_bytes = (tmp_path / "clean" / CHECKPOINT_FILE).stat().st_size
    # Room for one checkpoint and the run spec, not for the second checkpoint beside the first.
    size = (ckpt_bytes * 3 // 2 // _PAGE + 4) * _PAGE
    out = tiny_fs(size) / "run"
    run = tiny_run(out, data, checkpoint_every_steps=2)

    sink = ListSink()
    with pytest.raises(CheckpointNoSpace) as err:
        train_run(run, sink)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "checkpoint of step 4" in msg
    assert str(out / CHECKPOINT_FILE) in msg and "free disk space" in msg
    assert classify(err.value) == "disk_full"
    assert sink.statuses[-1][0] == RunStatus.FAILED and "no space left" in sink.statuses[-1][2]
    # The step-2 checkpoint is intact and alone: no torn file, no temp file eating the space.
    assert sorted(p.name for p in out.iterdir()) == sorted([CHECKPOINT_FILE, "run_spec.json"])
    assert checkpoint_step(out) == 2
    assert PREVIOUS_CHECKPOINT_FILE not in os.listdir(out)

    tiny_fs(16 * ckpt_bytes)  # space freed: the same attempt again, as `resume` would start it
    again_sink = ListSink()
    again = train_run(run, again_sink)
    assert again.status == RunStatus.SUCCEEDED
    assert again_sink.statuses[0] == (RunStatus.RUNNING, 2, "resumed from step 2")
    assert again_sink.losses() == {k: v for k, v in clean_sink.losses().items() if k > 2}
    assert [e.loss for e in again.evals] == [e.loss for e in clean.evals]
    assert checkpoint_step(out) == 6


def test_disk_full_is_retried_by_plain_resume() -> None:
    """Nothing is lost on a full disk, so `resume` (without --include-failed) must retry it."""
    assert classify(CheckpointNoSpace("no space left")) in RETRYABLE_KINDS
