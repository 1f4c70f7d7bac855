"""Run-directory sink: round trip, torn final lines, resume after a kill."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from parcae_scaling.db.files import METRICS_FILE, STATUS_FILE, RunDirSink, read_run_dir
from parcae_scaling.model.contracts import EvalRow, MetricsSink, RunStatus


def test_run_dir_sink_round_trip(tmp_path):
    sink = RunDirSink(tmp_path / "run")
    assert isinstance(sink, MetricsSink)
    sink.update_status("r1", RunStatus.RUNNING)
    sink.log_metrics("r1", 0, {"loss": 3.5, "lr": 0.008})
    sink.log_metrics("r1", 1, {"loss": float("nan")})
    sink.log_evals("r1", [EvalRow(recurrence=2, split="val", loss=2.5, tokens=1024)])
    sink.update_status("r1", RunStatus.DIVERGED, step=1, message="loss is NaN")
    sink.close()

    got = read_run_dir(tmp_path / "run")
    assert got.metrics[:2] == [("r1", 0, "loss", 3.5), ("r1", 0, "lr", 0.008)]
    assert got.metrics[2][:3] == ("r1", 1, "loss") and math.isnan(got.metrics[2][3])
    assert got.evals == [("r1", EvalRow(recurrence=2, split="val", loss=2.5, tokens=1024))]
    assert [s.status for s in got.statuses] == [RunStatus.RUNNING, RunStatus.DIVERGED]
    assert got.statuses[1].step == 1 and got.statuses[1].message == "loss is NaN"


def test_torn_last_line_is_ignored_and_repaired_on_reopen(tmp_path):
    run = tmp_path / "run"
    with RunDirSink(run) as sink:
        sink.log_metrics("r1", 0, {"loss": 3.0})
    with open(run / METRICS_FILE, "a") as f:
        f.write('{"run":"r1","step":1,"val')  # what a SIGKILL mid-write leaves
    assert read_run_dir(run).metrics == [("r1", 0, "loss", 3.0)]

    with RunDirSink(run) as sink:  # resuming worker appends after the repaired tail
        sink.log_metrics("r1", 1, {"loss": 2.0})
    assert read_run_dir(run).metrics == [("r1", 0, "loss", 3.0), ("r1", 1, "loss", 2.0)]
    assert (run / METRICS_FILE).read_text().count("\n") == 2


def test_corrupt_complete_line_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    RunDirSink(run).close()
    (run / STATUS_FILE).write_text("not json\n")
    with pytest.raises(ValueError, match="status.jsonl:1 is not valid JSON"):
        read_run_dir(run)


def test_missing_run_dir_and_closed_sink_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_run_dir(tmp_path / "nope")
    sink = RunDirSink(tmp_path / "run")
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.log_metrics("r1", 0, {"loss": 1.0})
    with pytest.raises(ValueError, match="step must be >= 0"):
        RunDirSink(tmp_path / "run2").log_metrics("r1", -1, {"loss": 1.0})


def test_sigkill_writer_leaves_readable_prefix(tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        from parcae_scaling.db.files import RunDirSink
        sink = RunDirSink({str(run)!r})
        step = 0
        while True:
            sink.log_metrics("r1", step, {{"loss": 1.0 / (step + 1), "lr": 0.1}})
            step += 1
            if step % 100 == 0:
                sink.flush()
            if step == 1000:
                open({str(tmp_path / "ready")!r}, "w").close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never got going"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    got = read_run_dir(run)
    steps = sorted({s for _, s, _, _ in got.metrics})
    assert len(steps) >= 900  # at least the fsynced prefix survived
    assert steps == list(range(len(steps)))  # a contiguous prefix, no holes
