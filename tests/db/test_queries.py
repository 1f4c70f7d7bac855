"""DataFrame queries: expected rows, columns and dtypes (also for empty results)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from parcae_scaling.db import EvalRow, RunStatus
from parcae_scaling.db.queries import (
    FINAL_LOSS_COLUMNS, FITS_COLUMNS, HISTORY_COLUMNS, ISOFLOP_COLUMNS, RUNS_COLUMNS, TEST_TIME_COLUMNS,
)

BUDGETS = (1e12, 4e12)
MUS = (1, 2, 4)


@pytest.fixture
def filled(store, make_run):
    """2 budgets x 3 mu_rec, all succeeded except (4e12, mu 4) which diverged; evals at T = 1..2 mu."""
    store.record_sweep("sw", {})
    store.record_sweep("other", {})
    store.record_run(make_run("x0", sweep="other"))
    for b in BUDGETS:
        for mu in MUS:
            rid = f"b{b:.0e}-mu{mu}"
            store.record_run(make_run(rid, budget_flops=b, mu_rec=mu, mu_bwd=max(1, mu // 2),
                                      tokens=int(b / (1e6 * mu)), core_params=None if mu == 1 else 1000))
            store.log_metric_rows((rid, s, "loss", 4.0 - s / 10) for s in range(5))
            store.log_metric_rows((rid, s, "lr", 0.01) for s in range(5))
            if b == 4e12 and mu == 4:
                store.update_run(rid, status=RunStatus.DIVERGED, step=3, message="NaN")
                continue
            store.log_evals(rid, [EvalRow(recurrence=t, split="val", loss=3.0 - 0.1 * t + mu / 100, tokens=64)
                                  for t in range(1, 2 * mu + 1)])
            store.update_run(rid, status=RunStatus.SUCCEEDED)
    return store


def _assert_dtypes(df: pd.DataFrame, columns: dict[str, str]) -> None:
    assert list(df.columns) == list(columns)
    assert {c: str(df[c].dtype) for c in df.columns} == columns


def test_final_losses(filled):
    df = filled.final_losses("sw")
    _assert_dtypes(df, FINAL_LOSS_COLUMNS)
    assert len(df) == 6
    np.testing.assert_allclose(df.train_loss, 3.6)
    assert (df.final_step == 4).all()
    diverged = df[df.status == "diverged"]
    assert len(diverged) == 1 and math.isnan(diverged.eval_loss.iloc[0])
    ok = df[df.status == "succeeded"]
    np.testing.assert_allclose(ok.eval_loss, 3.0 - 0.1 * ok.mu_rec + ok.mu_rec / 100)
    assert df.core_params.isna().sum() == 2  # nullable ints stay Int64 with <NA>


def test_isoflop_table(filled):
    df = filled.isoflop_table("sw")
    _assert_dtypes(df, ISOFLOP_COLUMNS)
    assert len(df) == 5  # the diverged run has no loss to fit
    assert df.groupby("budget_flops").mu_rec.apply(list).to_dict() == {1e12: [1, 2, 4], 4e12: [1, 2]}
    assert len(filled.isoflop_table("sw", model="nope")) == 0
    assert len(filled.isoflop_table("sw", split="train")) == 0


def test_test_time_curves(filled):
    df = filled.test_time_curves("sw")
    _assert_dtypes(df, TEST_TIME_COLUMNS)
    assert len(df) == 2 * (2 + 4 + 8) - 8  # every T of every succeeded run
    one = df[df.run_id == "b1e+12-mu4"]
    assert one.recurrence.tolist() == list(range(1, 9))
    assert one.loss.is_monotonic_decreasing


def test_metric_history_and_runs(filled):
    hist = filled.metric_history(sweep="sw", names=["loss"])
    _assert_dtypes(hist, HISTORY_COLUMNS)
    assert len(hist) == 30 and set(hist.name) == {"loss"}
    assert len(filled.metric_history(run_ids=["b1e+12-mu1"])) == 10
    with pytest.raises(ValueError, match="needs run_ids"):
        filled.metric_history()
    runs = filled.runs()
    _assert_dtypes(runs, RUNS_COLUMNS)
    assert len(runs) == 7 and len(filled.runs("sw", status="succeeded")) == 5
    with pytest.raises(ValueError):
        filled.runs(status="exploded")


def test_empty_results_keep_columns_and_dtypes(store):
    for df, cols in [
        (store.final_losses("none"), FINAL_LOSS_COLUMNS), (store.isoflop_table("none"), ISOFLOP_COLUMNS),
        (store.test_time_curves("none"), TEST_TIME_COLUMNS), (store.metric_history(sweep="none"), HISTORY_COLUMNS),
        (store.runs("none"), RUNS_COLUMNS), (store.fits(), FITS_COLUMNS),
    ]:
        assert len(df) == 0
        _assert_dtypes(df, cols)


def test_fits_frame(store):
    a = store.save_fit({"params": {"E": 1.0}}, kind="isoflop", selection={"sweep": "sw"}, convention="reference")
    b = store.save_fit({"params": {"E": 2.0}}, kind="parametric", selection={}, convention="exact", sweep="sw")
    df = store.fits()
    _assert_dtypes(df, FITS_COLUMNS)
    assert set(df.fit_id) == {a, b}
    assert store.fits(sweep="sw").fit_id.tolist() == [b]
    assert store.fits(kind="isoflop").parameters.iloc[0] == {"E": 1.0}
