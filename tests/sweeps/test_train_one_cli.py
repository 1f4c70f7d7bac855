"""`parcae-sweep train-one`: a tiny run end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db.files import read_run_dir
from parcae_scaling.sweeps.train_one import train_one_spec


def _invoke(args: list[str]):
    # With a single registered command Typer runs it as the root; with several, by name.
    prefix = ["train-one"] if hasattr(get_command(sweep_app), "commands") else []
    before = torch.get_num_threads()
    try:
        return CliRunner().invoke(sweep_app, prefix + args)
    finally:
        torch.set_num_threads(before)


def test_train_one_prints_summary_and_writes_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARCAE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = _invoke(["--tokens", "4096", "--batch-size", "4", "--seq-len", "64", "--eval-tokens", "1024",
                   "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["tokens_trained"] == 4096
    assert '"final_val_loss"' in res.output and "unigram entropy" in res.output
    contents = read_run_dir(out)
    assert {name for _, _, name, _ in contents.metrics} >= {"loss", "lr", "tokens", "flops", "mfu"}
    assert sorted(e.recurrence for _, e in contents.evals) == [1, 2, 3, 4]  # T = 1 ... 2 mu_rec
    assert [s.status.value for s in contents.statuses] == ["running", "succeeded"]


def test_train_one_json_prints_one_json_object_on_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARCAE_CACHE_DIR", str(tmp_path / "cache"))
    res = _invoke(["--tokens", "2048", "--batch-size", "4", "--seq-len", "64", "--eval-tokens", "512",
                   "--out", str(tmp_path / "run"), "--json", "--progress", "plain"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # the step lines went to stderr: stdout parses whole
    assert summary["status"] == "succeeded" and summary["tokens_trained"] == 2048
    assert summary["data"] and summary["unigram_entropy_nats"] > 0 and (tmp_path / "run" / "summary.json").exists()


def test_train_one_reports_bad_input(tmp_path: Path) -> None:
    res = _invoke(["--model", "parcae-huge", "--output-dir", str(tmp_path / "x")])
    assert res.exit_code == 1 and "unknown model config" in res.output


def test_train_one_spec_defaults_to_a_run_dir_named_by_id() -> None:
    spec = train_one_spec()
    assert spec.output_dir == str(Path("runs") / f"train-one-{spec.run_id}")
    assert spec.mu_rec == 2 and spec.budget_flops == 2e11 and spec.data.source == "embedded"
    assert train_one_spec(model="transformer-tiny-64").mu_rec == 1  # mu_rec ignored for fixed depth


def test_train_one_runs_a_run_spec_file(tmp_path: Path) -> None:

    from parcae_testing import tiny_run, write_bin_shards

    run = tiny_run(tmp_path / "run", write_bin_shards(tmp_path / "d"), tokens=256)
    (tmp_path / "run.json").write_text(run.to_json())
    res = _invoke(["--spec", str(tmp_path / "run.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["run_id"] == run.run_id
    (tmp_path / "bad.json").write_text(json.dumps({**run.to_dict(), "batch_size": 0}))
    bad = _invoke(["--spec", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1 and "RunSpec.batch_size" in bad.output


def test_train_one_spec_names_its_dir_after_the_data_parallel_run() -> None:
    one, two = train_one_spec(), train_one_spec(nproc_per_node=2)
    assert two.nproc_per_node == 2 and two.run_id != one.run_id  # batch size is per process
    assert two.output_dir == str(Path("runs") / f"train-one-{two.run_id}")


@pytest.mark.timeout(300)
def test_train_one_nproc_writes_into_the_dir_of_the_run_it_trains(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARCAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    res = _invoke(["--tokens", "2048", "--batch-size", "4", "--seq-len", "64", "--eval-tokens", "1024", "--nproc", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    run_dirs = [p.name for p in (tmp_path / "runs").iterdir()]
    assert run_dirs == [f"train-one-{summary['run_id']}"]
    assert summary["status"] == "succeeded" and summary["tokens_trained"] == 2048
    assert Path(summary["output_dir"]) == Path("runs") / run_dirs[0]
    bad = _invoke(["--nproc", "0", "--output-dir", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "RunSpec.nproc_per_node" in bad.output
