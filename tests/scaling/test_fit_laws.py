"""Synthetic recovery for each law, FitResult serialisation, warnings and bad inputs."""

import numpy as np
import pandas as pd
import pytest

from parcae_scaling.scaling.effective_params import (
    CallableParams, ColumnParams, TableParams, UnrolledParams, get_effective_params,
)
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.laws import get_law
from parcae_scaling.scaling.results import FitResult
from parcae_scaling.scaling.synthetic import DEFAULT_PARCAE, synthetic_parcae_sweep


def _chinchilla_df(noise=0.001, seed=0):
    rng = np.random.default_rng(seed)
    n, d = np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e9, 1e12, 8))
    df = pd.DataFrame({"params": n.ravel(), "tokens": d.ravel()})
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    truth = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
    df["loss"] = get_law("chinchilla").predict(truth, df) * np.exp(noise * rng.standard_normal(len(df)))
    return df, truth


def test_chinchilla_recovers_synthetic_parameters():
    df, truth = _chinchilla_df()
    r = fit_law(get_law("chinchilla"), df)
    for k in ("E", "alpha", "beta"):
        assert r.params[k] == pytest.approx(truth[k], rel=0.05), k
    assert r.n_starts_agree >= 2


def test_parcae_law_recovers_with_explicit_effective_params():
    df = synthetic_parcae_sweep(noise=0.0005, seed=1)
    law = get_law("parcae", effective_params=UnrolledParams())  # reads non_core/core columns
    r = fit_law(law, df, n_bootstrap=100)
    for k in ("E", "a", "b"):
        assert r.params[k] == pytest.approx(DEFAULT_PARCAE[k], rel=0.08), k
    assert "unrolled" in r.convention and r.flop_convention == "synthetic"
    ci = r.intervals["b"]
    width = ci.high - ci.low
    assert width > 0 and ci.contains(r.params["b"])
    assert ci.low - width < DEFAULT_PARCAE["b"] < ci.high + width  # truth near a 95% interval
    # The same N(mu) given as a table must give the same fit.
    table = {float(m): 2e5 + 1e5 * m for m in df["mu_rec"].unique()}
    r2 = fit_law(get_law("parcae", effective_params=TableParams(table=table)), df)
    assert r2.objective == pytest.approx(r.objective, rel=1e-6)


def test_unified_law_recovers_test_time_term():
    rng = np.random.default_rng(3)
    rows = []
    for c in (1e12, 4e12, 16e12):
        for mu in (2, 4, 8):
            for t in range(1, 2 * mu + 1):
                rows.append({"run_id": f"{c}-{mu}", "mu_rec": mu, "tokens": c / (1.5e6 + 0.6e6 * mu), "recurrence": t})
    df = pd.DataFrame(rows)
    truth = {"X": 2e3, "x": 0.6, "Y": 60.0, "y": 0.3, "Z": 0.3, "z": 3.0, "E": 1.3}
    law = get_law("unified", effective_params=UnrolledParams(non_core=2e5, core=1e5))
    df["loss"] = law.predict(truth, df) * np.exp(0.0005 * rng.standard_normal(len(df)))
    r = fit_law(law, df)
    assert r.params["z"] == pytest.approx(3.0, rel=0.1)
    assert r.params["Z"] == pytest.approx(0.3, rel=0.1)
    assert r.params["y"] == pytest.approx(0.3, rel=0.15)


@pytest.mark.parametrize("form,truth", [
    ("tt_exp", {"L_inf": 2.0, "Z": 0.8, "z": 0.4}),
    ("tt_shifted_power", {"L_inf": 2.0, "Z": 0.8, "z": 1.2}),
    ("tt_power", {"L_inf": 2.0, "Z": 0.8, "z": 0.9}),
    ("tt_pure_power", {"Z": 3.0, "z": 0.2}),
])
def test_test_time_forms_recover(form, truth):
    df = pd.DataFrame({"recurrence": np.arange(1.0, 17.0)})
    law = get_law(form)
    df["loss"] = law.predict(truth, df)
    r = fit_law(law, df, loss="squares", group=None)
    for k, v in truth.items():
        assert r.params[k] == pytest.approx(v, rel=1e-3), (form, k)


def test_saturating_and_plain_power_laws_recover():
    df = pd.DataFrame({"x": np.geomspace(1e3, 1e9, 20)})
    sat = get_law("saturating_power")
    df["loss"] = sat.predict({"E": 1.5, "A": 30.0, "alpha": 0.3}, df)
    r = fit_law(sat, df, group=None)
    assert r.params["alpha"] == pytest.approx(0.3, rel=1e-3)
    pw = get_law("power")
    df["loss"] = pw.predict({"k": 2.0, "gamma": 0.4}, df)
    r = fit_law(pw, df, loss="squares", group=None)
    assert r.params["gamma"] == pytest.approx(0.4, rel=1e-6)


def test_fit_result_json_round_trip():
    df, _ = _chinchilla_df()
    r = fit_law(get_law("chinchilla"), df, n_bootstrap=20)
    back = FitResult.from_json(r.to_json())
    assert back == r


def test_under_determined_and_nan_warnings():
    df, _ = _chinchilla_df()
    small = df.iloc[:12].copy()
    small.loc[small.index[0], "loss"] = np.nan
    r = fit_law(get_law("chinchilla"), small)
    assert any("under-determined" in w for w in r.warnings)
    assert any("NaN loss" in w for w in r.warnings)
    assert r.selection.n_excluded_nan == 1 and r.n_points == 11


def test_bad_inputs_give_clear_errors():
    df, _ = _chinchilla_df()
    with pytest.raises(ValueError, match="missing column.*tokens"):
        fit_law(get_law("chinchilla"), df.drop(columns="tokens"))
    bad = df.copy()
    bad.loc[0, "params"] = -5
    with pytest.raises(ValueError, match="'params'.*> 0"):
        fit_law(get_law("chinchilla"), bad)
    with pytest.raises(ValueError, match="unknown law"):
        get_law("kaplan2020")
    with pytest.raises(ValueError, match="unknown effective-params"):
        get_effective_params("embedding-free")
    with pytest.raises(ValueError, match="non_core_params"):
        fit_law(get_law("parcae"), pd.DataFrame({"mu_rec": [1.0, 2.0], "tokens": [1e6, 2e6], "loss": [3.0, 2.9]}))
    with pytest.raises(ValueError, match="UnrolledParams.core"):
        UnrolledParams(non_core=1.0, core=0.0)
    with pytest.raises(ValueError, match="no entry for mu_rec"):
        TableParams(table={1.0: 5.0}).params(pd.DataFrame({"mu_rec": [2.0]}))
    with pytest.raises(ValueError, match="params_effective"):
        ColumnParams().params(pd.DataFrame({"mu_rec": [2.0]}))
    assert CallableParams(fn=lambda m: 10 * m).params(pd.DataFrame({"mu_rec": [2.0]}))[0] == 20.0
