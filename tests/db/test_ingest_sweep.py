"""From a planned run to store columns, and ingesting every run directory of a sweep."""

from __future__ import annotations

import pytest

from parcae_scaling.db import EvalRow, RunDirSink, RunStatus
from parcae_scaling.model.flops import flops_per_token
from parcae_scaling.model.params import parameter_breakdown
from parcae_scaling.model.run_spec import plan_tokens
from parcae_scaling.sweeps import PlannedRun, plan, spec_from_dict


def _planned(tmp_path) -> list[PlannedRun]:
    spec = spec_from_dict({"name": "sw", "models": ["parcae-tiny-48"], "budgets_flops": [1e12], "mu_rec": [1, 2, 4],
                           "output_root": str(tmp_path)}, source="test")
    return list(plan(spec).runs)


def test_a_planned_runs_record_matches_the_model(tmp_path):
    planned = _planned(tmp_path)[2]
    run = planned.run
    rec = planned.record("sw")
    params = parameter_breakdown(run.model)
    assert rec.run_id == run.run_id and rec.spec == run.to_dict()
    assert (rec.mu_rec, rec.mu_bwd) == (4, 2)
    assert rec.params == params.total and rec.core_params == params.core
    assert rec.flops_per_token == flops_per_token(run.model, convention="reference")
    assert rec.tokens == plan_tokens(run).tokens and rec.budget_flops == 1e12
    assert rec.output_dir == run.output_dir and rec.backend is None


def test_ingest_sweep_reads_every_recorded_run_dir(store, tmp_path):
    planned = _planned(tmp_path)
    runs = [p.run for p in planned]
    store.record_sweep("sw", {"budgets": [1e12]})
    store.record_runs([p.record("sw") for p in planned])
    for r in runs[:2]:  # the third run has not started: no files yet
        with RunDirSink(r.output_dir) as sink:
            sink.update_status(r.run_id, RunStatus.RUNNING)
            sink.log_metrics(r.run_id, 0, {"loss": 5.0})
            sink.log_evals(r.run_id, [EvalRow(recurrence=r.mu_rec, split="val", loss=2.0 + r.mu_rec, tokens=128)])
            sink.update_status(r.run_id, RunStatus.SUCCEEDED)
    reports = store.ingest_sweep("sw")
    assert sorted(rep.run_id for rep in reports) == sorted(r.run_id for r in runs[:2])
    assert store.ingest_sweep("sw") == reports  # idempotent
    table = store.isoflop_table("sw")
    assert table.mu_rec.tolist() == [1, 2] and table.loss.tolist() == pytest.approx([3.0, 4.0])
    assert store.count_rows("metrics") == 2
    status = store.runs("sw").set_index("mu_rec").status.to_dict()
    assert status == {1: "succeeded", 2: "succeeded", 4: "planned"}
