"""Progress through the CLI: a blocking `launch`/`resume` and `train-one` print plain progress
lines to a non-terminal (CliRunner's output is one), never ANSI control codes, and nothing with
`--progress none`. Sweep runs are no-ops (PARCAE_NOOP_RUNS=1: recorded as succeeded at once)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db import Store
from parcae_scaling.sweeps import load_spec, plan, record_plan
from parcae_scaling.sweeps.worker import NOOP_ENV

SWEEP_LINE = re.compile(r"^\[\d\d:\d\d\] \d+/2 succeeded.*% of planned FLOPs; ETA ", re.MULTILINE)
STEP_LINE = re.compile(r"^\[\d\d:\d\d\] step \d+/16 \(\d+%\); loss ", re.MULTILINE)


@pytest.fixture
def two_run_spec(write_spec, tiny_spec, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: ANN001
    monkeypatch.setenv(NOOP_ENV, "1")
    return write_spec(tiny_spec(baselines=[]))


@pytest.mark.parametrize("progress", [None, "none"])
def test_blocking_launch_prints_plain_progress_lines(two_run_spec: Path, store_url: str,
                                                     progress: str | None) -> None:
    args = ["launch", str(two_run_spec), "--store", store_url] + (["--progress", progress] if progress else [])
    res = CliRunner().invoke(sweep_app, args)
    assert res.exit_code == 0, res.output
    assert "2 dispatched on local" in res.output
    lines = SWEEP_LINE.findall(res.stdout)
    if progress == "none":
        assert lines == [], res.output
    else:  # auto is plain here: CliRunner's stdout is no terminal
        assert lines, res.output
        assert "2/2 succeeded; 100% of planned FLOPs; ETA 00:00" in res.stdout  # the final states
    assert "\x1b" not in res.output


def test_blocking_resume_prints_progress(two_run_spec: Path, store_url: str) -> None:
    with Store.open(store_url) as store:
        assert record_plan(store, plan(load_spec(two_run_spec))) == 2  # recorded, never dispatched
    res = CliRunner().invoke(sweep_app, ["resume", "tiny", "--store", store_url])
    assert res.exit_code == 0, res.output
    assert "2 re-dispatched" in res.output and SWEEP_LINE.search(res.stdout) and "\x1b" not in res.output


def test_bad_progress_choice_is_a_usage_error(two_run_spec: Path, store_url: str) -> None:
    res = CliRunner().invoke(sweep_app, ["launch", str(two_run_spec), "--store", store_url, "--progress", "fancy"])
    assert res.exit_code == 2 and "auto" in res.output and "plain" in res.output


def test_train_one_prints_step_progress_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("PARCAE_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    base = ["train-one", "--tokens", "4096", "--batch-size", "4", "--seq-len", "64", "--eval-tokens", "1024"]
    try:
        shown = CliRunner().invoke(sweep_app, [*base, "--output-dir", str(tmp_path / "a")])
        quiet = CliRunner().invoke(sweep_app, [*base, "--output-dir", str(tmp_path / "b"), "--progress", "none"])
    finally:
        torch.set_num_threads(threads)
    assert shown.exit_code == 0 and quiet.exit_code == 0, shown.output + quiet.output
    # 16 steps, metrics every 8: the first row at once, the last at exit (within 30 s of it)
    assert STEP_LINE.findall(shown.stderr) and "step 16/16 (100%)" in shown.stderr, shown.stderr
    assert not STEP_LINE.search(shown.stdout) and '"final_val_loss"' in shown.stdout  # the summary, as before
    assert "\x1b" not in shown.output
    assert not STEP_LINE.search(quiet.output) and '"final_val_loss"' in quiet.stdout
