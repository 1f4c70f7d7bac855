"""Checkpoint rotation and recovery: a torn or corrupt newest checkpoint falls back to the
previous one; none readable fails once, naming the files and the fix; another run's is refused."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from parcae_scaling.model.contracts import RunStatus
from parcae_scaling.model import build_model
from parcae_scaling.model.train.checkpoint import (
    CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CheckpointNoSpace, CheckpointUnreadable, TrainProgress,
    checkpoint_step, load_latest_checkpoint, save_checkpoint,
)
from parcae_scaling.model.train.optim import build_optimizer
from parcae_scaling.model.train.loop import SUMMARY_FILE, train_run
from parcae_scaling.sweeps.writer import classify
from parcae_testing import ListSink, tiny_run, write_bin_shards


@pytest.fixture
def parts(tmp_path: Path):
    run = tiny_run(tmp_path / "r", write_bin_shards(tmp_path / "d"))
    model = build_model(run.model)
    return model, build_optimizer(model, run.optimizer), tmp_path / "ckpt"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the probe's case 3.1: a half-written file


def _save(directory: Path, model, opt, step: int, run_id: str = "aaaa") -> None:
    directory.mkdir(exist_ok=True)
    save_checkpoint(directory, run_id=run_id, model=model, optimizer=opt, progress=TrainProgress(step=step))


def test_save_keeps_the_previous_checkpoint_and_no_temp_files(parts) -> None:
    model, opt, d = parts
    _save(d, model, opt, 1)
    (d / f".{CHECKPOINT_FILE}.stale").write_bytes(b"left by a save killed mid-write")
    _save(d, model, opt, 2)
    _save(d, model, opt, 3)
    assert sorted(p.name for p in d.iterdir()) == sorted([CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE])
    assert torch.load(d / CHECKPOINT_FILE, weights_only=True)["schedule"]["step"] == 3
    assert torch.load(d / PREVIOUS_CHECKPOINT_FILE, weights_only=True)["schedule"]["step"] == 2
    assert checkpoint_step(d) == 3


def test_progress_round_trips_including_the_loss_extremes(parts) -> None:
    model, opt, d = parts
    d.mkdir()
    progress = TrainProgress(step=4, tokens=512, recent_losses=[5.0, 4.0], first_loss=5.6, peak_loss=81.0)
    save_checkpoint(d, run_id="aaaa", model=model, optimizer=opt, progress=progress)
    restored = load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt)
    assert restored is not None and restored.progress == progress and restored.skipped == ()
    assert restored.fallback_note() is None


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "malicious_pickle", "not_a_dict"])
def test_unreadable_newest_falls_back_to_previous(parts, tmp_path: Path, damage: str) -> None:
    model, opt, d = parts
    _save(d, model, opt, 2)
    _save(d, model, opt, 4)
    newest = d / CHECKPOINT_FILE
    marker = tmp_path / "PWNED"
    if damage == "truncate":
        _truncate(newest)
    elif damage == "garbage":
        newest.write_bytes(os.urandom(4096))
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "malicious_pickle":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        newest.write_bytes(pickle.dumps(Evil()))
    else:
        torch.save([1, 2, 3], newest)
    assert checkpoint_step(d) == 2
    restored = load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt)
    assert restored is not None and restored.progress.step == 2 and restored.path == d / PREVIOUS_CHECKPOINT_FILE
    note = restored.fallback_note()
    assert note is not None and "\n" not in note
    assert str(newest) in note and "step 2" in note and str(d / PREVIOUS_CHECKPOINT_FILE) in note
    assert not marker.exists()  # weights_only: the pickle's code never ran


def test_kill_between_the_two_renames_leaves_the_previous_file_usable(parts) -> None:
    model, opt, d = parts
    _save(d, model, opt, 2)
    os.replace(d / CHECKPOINT_FILE, d / PREVIOUS_CHECKPOINT_FILE)  # the state between the renames
    restored = load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt)
    assert restored is not None and restored.progress.step == 2 and restored.skipped == ()
    assert checkpoint_step(d) == 2


def test_no_readable_checkpoint_fails_once_naming_the_files_and_the_fix(parts) -> None:
    model, opt, d = parts
    _save(d, model, opt, 2)
    _save(d, model, opt, 4)
    _truncate(d / CHECKPOINT_FILE)
    _truncate(d / PREVIOUS_CHECKPOINT_FILE)
    assert checkpoint_step(d) is None
    with pytest.raises(CheckpointUnreadable) as err:
        load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"delete {d / CHECKPOINT_FILE} and {d / PREVIOUS_CHECKPOINT_FILE} to restart the run from step 0" in msg
    assert "parcae-sweep resume SWEEP --include-failed" in msg
    # Not retried by plain `resume` (it would read the same bytes), and no traceback is attached.
    assert classify(err.value) == "error" and hasattr(err.value, "failure_kind")
    assert isinstance(err.value, ValueError)  # the CLI's one-line error boundary catches it


def test_fresh_directory_has_no_checkpoint(parts) -> None:
    model, opt, d = parts
    d.mkdir()
    assert load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt) is None
    assert checkpoint_step(d) is None


def test_another_runs_checkpoint_is_refused_not_skipped(parts) -> None:
    model, opt, d = parts
    _save(d, model, opt, 2)
    _save(d, model, opt, 4, run_id="bbbb")  # newest from another run, previous is ours
    with pytest.raises(ValueError, match="belongs to run bbbb, not aaaa"):
        load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt)
    shutil.copy(d / CHECKPOINT_FILE, d / PREVIOUS_CHECKPOINT_FILE)
    _truncate(d / CHECKPOINT_FILE)  # newest torn, previous from another run: never loaded either
    with pytest.raises(ValueError, match="belongs to run bbbb"):
        load_latest_checkpoint(d, run_id="aaaa", model=model, optimizer=opt)


def test_disk_full_kind_is_classified() -> None:
    assert classify(CheckpointNoSpace("no space left")) == "disk_full"


def test_train_run_resumes_from_previous_when_newest_is_torn(tmp_path: Path) -> None:
    """End to end: the fallback resume ends exactly like the uninterrupted run and says so."""
    data = write_bin_shards(tmp_path / "d")
    clean = tiny_run(tmp_path / "clean", data, checkpoint_every_steps=2)
    clean_sink = ListSink()
    reference = train_run(clean, clean_sink)
    run = tiny_run(tmp_path / "torn", data, checkpoint_every_steps=2)
    first = train_run(run, ListSink())
    assert first.status == RunStatus.SUCCEEDED and checkpoint_step(run.output_dir) == 6
    # Pretend the run died while step 6's checkpoint was torn (the summary was never written).
    (Path(run.output_dir) / SUMMARY_FILE).unlink()
    _truncate(Path(run.output_dir) / CHECKPOINT_FILE)
    sink = ListSink()
    again = train_run(run, sink)
    assert again.status == RunStatus.SUCCEEDED
    running = [m for s, _, m in sink.statuses if s == RunStatus.RUNNING]
    assert running and running[0].startswith("resumed from step 4;") and "unreadable" in running[0]
    assert sorted(sink.losses()) == [5, 6]
    assert {k: clean_sink.losses()[k] for k in (5, 6)} == sink.losses()
    assert [e.loss for e in again.evals] == [e.loss for e in reference.evals]


def test_train_run_without_a_readable_checkpoint_fails_with_the_fix(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "r", write_bin_shards(tmp_path / "d"), checkpoint_every_steps=2)
    train_run(run, ListSink())
    out = Path(run.output_dir)
    (out / SUMMARY_FILE).unlink()
    _truncate(out / CHECKPOINT_FILE)
    _truncate(out / PREVIOUS_CHECKPOINT_FILE)
    sink = ListSink()
    with pytest.raises(CheckpointUnreadable, match="to restart the run from step 0"):
        train_run(run, sink)
    assert [s for s, _, _ in sink.statuses] == [RunStatus.FAILED]
    (out / CHECKPOINT_FILE).unlink()  # the advised fix
    (out / PREVIOUS_CHECKPOINT_FILE).unlink()
    assert train_run(run, ListSink()).status == RunStatus.SUCCEEDED
