"""Store round trips on SQLite and PostgreSQL: every table, idempotent replay, failure paths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from parcae_scaling.db import (
    EvalRow, MetricsSink, RunDirSink, RunStatus, StoreError, StoreSink, UnknownRunError,
)


def test_sweep_and_run_round_trip(store, make_run):
    assert store.record_sweep("sw", {"budgets": [1e18, 2e18], "sizes": ["small-140m"]})
    assert not store.record_sweep("sw", {"sizes": ["small-140m"], "budgets": [1e18, 2e18]})
    rec = make_run("r1", core_params=14_155_776, backend="local", job_id="123", spec={"a": [1, 2], "b": {"c": "x"}})
    assert store.record_run(rec)
    assert not store.record_run(rec)  # identical re-record is a no-op
    runs = store.runs("sw")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row.run_id == "r1" and row.core_params == 14_155_776 and row.mu_rec == 4
    assert row.budget_flops == 1e18 and row.status == "planned" and row.backend == "local"
    assert store.run_spec("r1") == {"a": [1, 2], "b": {"c": "x"}}


def test_sweep_spec_conflict_and_replace(store):
    store.record_sweep("sw", {"v": 1})
    with pytest.raises(ValueError, match="different spec"):
        store.record_sweep("sw", {"v": 2})
    assert store.record_sweep("sw", {"v": 2}, replace=True)


def test_run_errors(store, make_run):
    with pytest.raises(StoreError, match="record_sweep first"):
        store.record_run(make_run("r1"))
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    with pytest.raises(ValueError, match="different spec"):
        store.record_run(make_run("r1", spec={"other": 1}))
    with pytest.raises(UnknownRunError, match="record_run"):
        store.update_run("nope", status=RunStatus.RUNNING)
    with pytest.raises(UnknownRunError, match="not recorded"):
        store.log_metric_rows([("nope", 0, "loss", 1.0)])
    with pytest.raises(UnknownRunError, match="not recorded"):
        store.log_evals("nope", [EvalRow(recurrence=1, split="val", loss=1.0, tokens=1)])
    # the store still works after the failed writes (no aborted transaction left behind)
    store.log_metric_rows([("r1", 0, "loss", 1.0)])
    assert store.count_rows("metrics") == 1


@pytest.mark.parametrize(
    "field,value,match",
    [("mu_rec", 0, "mu_rec must be >= 1"), ("mu_bwd", 9, r"mu_bwd must be in \[1, mu_rec=4\]"),
     ("tokens", 0, "tokens must be a positive"), ("budget_flops", float("nan"), "budget_flops"),
     ("spec", {"x": float("inf")}, "finite numbers"), ("run_id", "", "run_id must be a non-empty")],
)
def test_run_record_validation(make_run, field, value, match):
    with pytest.raises(ValueError, match=match):
        make_run(**{field: value})


def test_metric_replay_is_idempotent(store, make_run):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    batch = [("r1", s, n, float(s)) for s in range(100) for n in ("loss", "lr")]
    store.log_metric_rows(batch)
    store.log_metric_rows(batch)  # replay
    store.log_metric_rows(batch[:50] + [("r1", 100, "loss", 0.5)])  # partial replay + new row
    assert store.count_rows("metrics") == 201
    hist = store.metric_history(run_ids=["r1"], names=["loss"])
    assert list(hist.step) == list(range(101))
    assert hist.value.iloc[-1] == 0.5


def test_nan_metric_round_trips_as_nan(store, make_run):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    store.log_metrics("r1", 3, {"loss": float("nan"), "grad_norm": float("inf")})
    hist = store.metric_history(run_ids=["r1"]).set_index("name")
    assert math.isnan(hist.loc["loss", "value"]) and hist.loc["grad_norm", "value"] == float("inf")


def test_status_updates_are_monotone_in_time(store, make_run):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    t0 = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=1)
    assert store.update_run("r1", status=RunStatus.RUNNING, at=t0, job_id="42", attempt=1)
    assert store.update_run("r1", status=RunStatus.DIVERGED, step=77, message="NaN loss", at=t0 + timedelta(hours=1))
    assert not store.update_run("r1", status=RunStatus.RUNNING, at=t0)  # stale replay ignored
    row = store.runs("sw").iloc[0]
    assert row.status == "diverged" and row.status_step == 77 and row.failure_kind == "diverged"
    assert row.failure_message == "NaN loss" and row.job_id == "42" and row.attempt == 1
    assert row.started == t0 and row.ended == t0 + timedelta(hours=1)
    assert len(store.runs("sw", status="diverged")) == 1 and len(store.runs(status=RunStatus.RUNNING)) == 0


def test_evals_round_trip_and_reeval_replaces(store, make_run):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    store.log_evals("r1", [EvalRow(recurrence=t, split="val", loss=3.0 - 0.1 * t, tokens=4096) for t in (1, 2, 4)])
    store.log_evals("r1", [EvalRow(recurrence=4, split="val", loss=2.5, tokens=8192)])
    store.update_run("r1", status=RunStatus.SUCCEEDED)
    curves = store.test_time_curves("sw")
    assert list(curves.recurrence) == [1, 2, 4]
    assert curves.loss.tolist() == pytest.approx([2.9, 2.8, 2.5])
    assert store.count_rows("evals") == 3


@dataclass(frozen=True, kw_only=True)
class _FakeFit:
    law: str
    params: dict
    intervals: dict
    objective: float


def test_fit_round_trip(store):
    fit = _FakeFit(law="parametric", params={"E": 2.662, "a": 0.771}, intervals={"E": [2.6, float("nan")]},
                   objective=float("inf"))
    fid = store.save_fit(fit, kind="parametric", selection={"sweep": "sw", "size": "small-140m"},
                         convention="reference", sweep="sw")
    back = store.load_fit(fid)
    assert back["params"] == {"E": 2.662, "a": 0.771} and back["objective"] == float("inf")
    assert math.isnan(back["intervals"]["E"][1])
    fits = store.fits(kind="parametric")
    assert list(fits.fit_id) == [fid]
    assert fits.parameters.iloc[0] == {"E": 2.662, "a": 0.771}
    assert fits.uncertainties.iloc[0] == {"E": [2.6, None]}
    assert fits.selection.iloc[0]["size"] == "small-140m"
    with pytest.raises(KeyError, match="no fit"):
        store.load_fit(fid + 1000)
    with pytest.raises(ValueError, match="dataclass, a mapping"):
        store.save_fit(3.0, kind="x", selection={}, convention="reference")


def test_store_sink_batches_and_flushes(store, make_run):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    sink = StoreSink(store, batch_rows=10, flush_interval_s=3600)
    assert isinstance(sink, MetricsSink)
    sink.update_status("r1", RunStatus.RUNNING)
    for step in range(4):
        sink.log_metrics("r1", step, {"loss": 1.0 / (step + 1), "lr": 0.01})
    assert store.count_rows("metrics") == 0  # 8 rows buffered, below batch_rows
    sink.log_metrics("r1", 4, {"loss": 0.2, "lr": 0.01})
    assert store.count_rows("metrics") == 10  # batch threshold reached
    sink.log_metrics("r1", 5, {"loss": 0.1})
    sink.log_evals("r1", [EvalRow(recurrence=4, split="val", loss=0.15, tokens=10)])
    sink.update_status("r1", RunStatus.SUCCEEDED)
    sink.close()
    assert store.count_rows("metrics") == 11
    final = store.final_losses("sw").iloc[0]
    assert final.train_loss == 0.1 and final.final_step == 5 and final.eval_loss == 0.15
    assert store.runs("sw").iloc[0].heartbeat is not None
    with pytest.raises(ValueError, match="closed"):
        sink.log_metrics("r1", 6, {"loss": 0.1})


def test_store_sink_keeps_rows_when_a_write_fails(store):
    sink = StoreSink(store, batch_rows=100)
    sink.log_metrics("unknown", 0, {"loss": 1.0})
    with pytest.raises(UnknownRunError):
        sink.flush()
    assert len(sink._buffer) == 1  # not dropped: a retry after record_run can still write it


def test_ingest_run_dir_is_idempotent(store, make_run, tmp_path):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    with RunDirSink(tmp_path / "r1") as sink:
        sink.update_status("r1", RunStatus.RUNNING)
        for step in range(50):
            sink.log_metrics("r1", step, {"loss": 3.0 - step / 100})
        sink.log_evals("r1", [EvalRow(recurrence=4, split="val", loss=2.6, tokens=100)])
        sink.update_status("r1", RunStatus.SUCCEEDED)
    with open(tmp_path / "r1" / "metrics.jsonl", "a") as f:
        f.write('{"run":"r1","step":50,"va')  # torn tail from a killed writer
    first = store.ingest_run_dir("r1", tmp_path / "r1")
    second = store.ingest_run_dir("r1", tmp_path / "r1")
    assert first == second and first.metric_rows == 50 and first.final_status is RunStatus.SUCCEEDED
    assert store.count_rows("metrics") == 50 and store.count_rows("evals") == 1
    assert store.isoflop_table("sw").loss.tolist() == [2.6]
    RunDirSink(tmp_path / "other").close()
    with pytest.raises(UnknownRunError):
        store.ingest_run_dir("other", tmp_path / "other")


def test_ingest_refuses_rows_of_another_run(store, make_run, tmp_path):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    with RunDirSink(tmp_path / "d") as sink:
        sink.log_metrics("r2", 0, {"loss": 1.0})
    with pytest.raises(ValueError, match="holds rows of runs"):
        store.ingest_run_dir("r1", tmp_path / "d")
    assert store.count_rows("metrics") == 0


def test_scaling_fit_result_round_trips(store):
    from parcae_scaling.scaling.results import ConfidenceInterval, DataSelection, FitResult

    fit = FitResult(
        law="parametric", formula="E + A N^-a + B D^-b", params={"E": 2.662, "a": 0.771}, objective=0.5,
        intervals={"E": ConfidenceInterval(low=2.6, high=2.7, n_resamples=100)},
        selection=DataSelection(source="store:sw", n_rows_in=30, n_used=28, filters=("status == succeeded",)),
        convention="effective-params", flop_convention="reference", warnings=("few points",),
    )
    fid = store.save_fit(fit, sweep="sw")  # kind, selection and convention taken from the result
    row = store.fits().iloc[0]
    assert (row.kind, row.convention, row.sweep) == ("parametric", "effective-params", "sw")
    assert row.selection["n_used"] == 28 and row.uncertainties["E"]["low"] == 2.6
    assert FitResult.from_dict(store.load_fit(fid)) == fit
    with pytest.raises(ValueError, match="needs a kind"):
        store.save_fit({"params": {"E": 1.0}}, selection={})
    with pytest.raises(ValueError, match="needs selection"):
        store.save_fit({"params": {"E": 1.0}}, kind="k", convention="c")


def test_store_sink_time_based_flush_and_bad_inputs(store, make_run):
    store.record_sweep("sw", {})
    store.record_run(make_run("r1"))
    sink = StoreSink(store, batch_rows=10_000, flush_interval_s=0.0)  # every call is due
    sink.log_metrics("r1", 0, {"loss": 1.0})
    assert store.count_rows("metrics") == 1
    with pytest.raises(ValueError, match="step must be >= 0"):
        sink.log_metrics("r1", -1, {"loss": 1.0})
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        StoreSink(store, batch_rows=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.update_run("r1", status=RunStatus.RUNNING, at=datetime(2030, 1, 1))
