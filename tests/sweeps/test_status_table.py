"""`status` with a run that diverged before its first full metrics row (no `tokens` row) beside a
run that logged one (probe 5.4: `cannot convert float NaN to integer`)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import parcae_scaling
from parcae_scaling.cli import sweep_app
from parcae_scaling.db import RunRecord, RunStatus, Store
from parcae_scaling.sweeps import status_table


def _run(run_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, sweep="lr", spec={"id": run_id}, arch="parcae", model="tiny",
                     params=10, params_non_embedding=5, mu_rec=2, mu_bwd=1, budget_flops=1e12,
                     flop_convention="reference", flops_per_token=1e6, tokens=1000)


def test_status_with_an_early_diverged_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with Store.open(url) as store:
        store.record_sweep("lr", {"name": "lr"})
        store.record_runs([_run("ok"), _run("early")])
        store.log_metrics("ok", 10, {"loss": 4.0, "tokens": 640.0})
        store.update_run("ok", status=RunStatus.RUNNING)
        # What the divergence guard writes at step 2: the non-finite row only, no `tokens`.
        store.log_metrics("early", 2, {"loss": float("nan"), "grad_norm": float("nan"), "lr": 1000.0})
        store.update_run("early", status=RunStatus.DIVERGED, step=2, message="non-finite loss at step 2")
        table = status_table(store).set_index("run_id")
    assert table.loc["ok", "tokens_done"] == 640 and table.loc["early", "tokens_done"] == 0
    assert table.loc["early", "progress"] == 0.0
    for args in (["status"], ["status", "lr"]):
        result = CliRunner().invoke(sweep_app, [*args, "--store", url])
        assert result.exit_code == 0, result.output
        assert "diverged" in result.output and "Traceback" not in result.output


def test_runs_that_never_started_are_not_flagged_as_another_code_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with Store.open(url) as store:
        store.record_sweep("lr", {"name": "lr"})
        store.record_runs([_run("a"), _run("b")])
        # "a" started under this code; "b" is still queued: no provenance (a column of a string and a
        # missing value, which pandas holds as NaN, not None)
        store.set_provenance("a", {"package_version": parcae_scaling.__version__})
        table = status_table(store, "lr")
    assert table["other_version"].tolist() == [False, False]
    result = CliRunner().invoke(sweep_app, ["status", "lr", "--store", url], terminal_width=200)
    assert result.exit_code == 0 and "other code" not in result.output and "nan" not in result.output
