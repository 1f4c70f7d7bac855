"""`parcae-sweep export-model`: a finished run of the session's tiny sweep (`sweep_store`,
tests/conftest.py) exports and loads back with its checkpoint's logits; an unknown id, an
unfinished run, a lost checkpoint, a non-empty target and a missing store each fail in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.db import RunRecord, RunStatus, Store
from parcae_scaling.model import build_model
from parcae_scaling.model.config import get_config
from parcae_scaling.model.run_spec import DataSpec, RunSpec
from parcae_scaling.model.train.checkpoint import CHECKPOINT_FILE
from parcae_scaling.model.train.export import CONFIG_FILE, WEIGHTS_FILE, load_exported
from parcae_testing import tiny_run

runner = CliRunner()


def _export(*args: str):  # noqa: ANN202
    return runner.invoke(sweep_app, ["export-model", *args])


def _one_line_error(result, *fragments: str) -> None:  # noqa: ANN001
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


def test_a_finished_run_exports_and_loads_back_with_its_checkpoints_logits(sweep_store, tmp_path: Path) -> None:
    with Store.open(sweep_store["url"], create=False) as store:
        runs = store.runs(sweep_store["sweep"], status="succeeded")
        row = runs[(runs["arch"] == "parcae") & (runs["mu_rec"] == 2)].iloc[0]
        losses = store.final_losses(sweep_store["sweep"]).set_index("run_id")
        spec = RunSpec.from_dict(store.run_spec(row["run_id"]))
    out = tmp_path / "export"
    result = _export(row["run_id"], "--to", str(out), "--store", sweep_store["url"])
    assert result.exit_code == 0, result.output
    assert f"exported run {row['run_id']} of sweep {sweep_store['sweep']}" in result.output
    assert "load_exported(" in result.output

    model, config = load_exported(out)
    reference = build_model(spec.model)
    reference.load_state_dict(torch.load(Path(spec.output_dir) / CHECKPOINT_FILE, weights_only=True)["model"])
    idx = torch.arange(64).reshape(2, 32) % 256
    with torch.no_grad():
        got = model(idx, generator=torch.Generator().manual_seed(0)).logits
        want = reference.eval()(idx, generator=torch.Generator().manual_seed(0)).logits
    assert torch.equal(got, want)
    assert (config.run_id, config.sweep, config.mu_rec, config.seq_len) == (row["run_id"], sweep_store["sweep"], 2, 32)
    assert config.tokens_trained == row["tokens"] and config.tokenizer.kind == "byte"
    assert config.final_val_loss == pytest.approx(losses.loc[row["run_id"], "eval_loss"], rel=1e-12)

    again = _export(row["run_id"], "--to", str(out), "--store", sweep_store["url"])
    _one_line_error(again, "is not empty", "--force")
    forced = _export(row["run_id"], "--to", str(out), "--store", sweep_store["url"], "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_an_unknown_run_id_names_where_ids_are_listed(sweep_store, tmp_path: Path) -> None:
    result = _export("nosuchrun", "--to", str(tmp_path / "x"), "--store", sweep_store["url"])
    _one_line_error(result, "run 'nosuchrun' is not recorded", "parcae-sweep status")
    assert not (tmp_path / "x").exists()


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    result = _export("abc", "--to", str(tmp_path / "x"), "--store", f"sqlite:///{path}")
    _one_line_error(result)
    assert not path.exists()


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, RunSpec]:
    """A store with one recorded, never trained run (its output directory holds no checkpoint)."""
    spec = tiny_run(tmp_path / "runs" / "r", DataSpec(), model=get_config("parcae-tiny-48", seq_len=32))
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with Store.open(url) as store:
        store.record_sweep("s", {"name": "s"})
        store.record_run(RunRecord(run_id=spec.run_id, sweep="s", spec=spec.to_dict(), arch="parcae",
                                   model="parcae-tiny-48", params=1, params_non_embedding=1, mu_rec=4, mu_bwd=2,
                                   budget_flops=1e9, flop_convention="reference", flops_per_token=1e6,
                                   tokens=spec.tokens))
    return url, spec


@pytest.mark.parametrize(("status", "fix"), [
    (RunStatus.PENDING, "wait until it succeeds"),
    (RunStatus.RUNNING, "wait until it succeeds"),
    (RunStatus.FAILED, "parcae-sweep resume s --include-failed"),
    (RunStatus.PREEMPTED, "parcae-sweep resume s"),
    (RunStatus.DIVERGED, "pick a succeeded run"),
])
def test_an_unfinished_run_is_refused_with_the_way_to_finish_it(recorded, tmp_path: Path, status, fix) -> None:
    url, spec = recorded
    with Store.open(url) as store:
        store.update_run(spec.run_id, status=status)
    result = _export(spec.run_id, "--to", str(tmp_path / "x"), "--store", url)
    _one_line_error(result, f"is {status.value}, not succeeded", fix)


def test_a_succeeded_run_whose_checkpoint_is_gone_names_its_directory(recorded, tmp_path: Path) -> None:
    url, spec = recorded
    with Store.open(url) as store:
        store.update_run(spec.run_id, status=RunStatus.SUCCEEDED)
    result = _export(spec.run_id, "--to", str(tmp_path / "x"), "--store", url)
    _one_line_error(result, "final checkpoint", "is missing", f"restore the run directory {spec.output_dir}")


def test_without_the_safetensors_extra_the_error_names_the_install(recorded, tmp_path: Path, monkeypatch) -> None:
    url, spec = recorded
    with Store.open(url) as store:
        store.update_run(spec.run_id, status=RunStatus.SUCCEEDED)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / CHECKPOINT_FILE).write_bytes(b"never read: the missing package is found first")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # what an environment without it imports
    result = _export(spec.run_id, "--to", str(tmp_path / "x"), "--store", url)
    _one_line_error(result, "needs the safetensors package", "pip install 'parcae-scaling[export]'")
