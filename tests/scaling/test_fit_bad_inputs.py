"""parcae-fit inputs that are answered with a warning and exit 0, or that the CSV corpus
(tests/bad_inputs/csv/) cannot express: a warning must name the rows, a fit the data cannot
determine must say so instead of printing numbers, and a store read must name an absent sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from parcae_scaling.fit_cli import fit_app
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.isoflop import isoflop
from parcae_scaling.scaling.laws import get_law
from parcae_scaling.scaling.results import FitResult
from parcae_scaling.scaling.synthetic import synthetic_parcae_sweep
from typer.testing import CliRunner, Result


def _fit(args: list[str]) -> Result:
    return CliRunner().invoke(fit_app, args)


def test_isoflop_nan_tokens_warns_naming_the_row(tmp_path: Path) -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 4e12), mu_values=(1, 2, 4, 8))
    df.loc[3, "tokens"] = np.nan
    csv = tmp_path / "nan_tokens.csv"
    df.to_csv(csv, index=False)
    result = _fit(["isoflop", str(csv), "--out", str(tmp_path / "fits"), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "column 'tokens'" in line]
    assert len(warning) == 1 and df.loc[3, "run_id"] in warning[0] and "tokens* law is omitted" in warning[0]
    assert "tokens* ∝" not in result.output and "mu_rec* ∝" in result.output


def test_exact_duplicate_rows_count_once() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 4e12, 16e12))
    doubled = pd.concat([df, df], ignore_index=True)
    law = get_law("parcae")
    once, twice = (fit_law(law, d, n_bootstrap=10, key=("run_id",)) for d in (df, doubled))
    assert twice.params == once.params and twice.intervals == once.intervals
    assert twice.n_points == len(df) and twice.selection.n_rows_in == len(doubled)
    assert any(f"dropped {len(df)} exact duplicate row(s)" in w for w in twice.warnings)
    r_once, r_twice = isoflop(df, n_bootstrap=20), isoflop(doubled, n_bootstrap=20)
    assert r_twice.optima == r_once.optima
    assert any("exact duplicate" in w for w in r_twice.warnings)


def test_barely_determined_fit_says_not_identified(tmp_path: Path) -> None:
    """6 points (one budget) for 5 parameters: warned, exit 0, and no zero-width 'intervals'."""
    df = synthetic_parcae_sweep(budgets_flops=(1e12,))
    csv = tmp_path / "one_budget.csv"
    df.to_csv(csv, index=False)
    result = _fit(["parametric", str(csv), "--out", str(tmp_path / "fits"), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert "under-determined: 6 points for 5 free parameters" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("  ") and " = " in line]
    assert len(rows) == 7 and all(line.endswith("[not identified]") for line in rows), result.output
    fit = FitResult.from_json((tmp_path / "fits" / "fit_parcae_full.json").read_text())
    assert not fit.intervals and set(fit.unidentified) == {"A", "B", "E", "a", "b", "a_opt_exponent", "b_opt_exponent"}


def test_well_determined_fit_keeps_its_intervals() -> None:
    r = fit_law(get_law("parcae"), synthetic_parcae_sweep(), n_bootstrap=20)
    assert not r.unidentified and all(ci.high > ci.low for ci in r.intervals.values())


def test_allocation_exponents_undefined_not_a_crash() -> None:
    derived = get_law("parcae").derived
    assert np.isnan(derived["a_opt_exponent"]({"a": 0.5, "b": -0.5}))


def test_absent_sweep_in_store_lists_recorded_ones(tmp_path: Path) -> None:
    from parcae_scaling.db import RunRecord, Store

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with Store.open(url) as store:
        store.record_sweep("probe-base", {})
        store.record_run(RunRecord(run_id="r0", sweep="probe-base", spec={"id": "r0"}, arch="parcae",
                                   model="small", params=1000, params_non_embedding=900, mu_rec=2,
                                   mu_bwd=1, budget_flops=1e12, flop_convention="reference",
                                   flops_per_token=1e6, tokens=1_000_000))
    for command in ("isoflop", "parametric", "test-time"):
        result = _fit([command, "--store", url, "--sweep", "no-such-sweep", "--out", str(tmp_path / "fits")])
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "['no-such-sweep'] have no runs" in errors[0], result.output
        assert "recorded sweeps: ['probe-base']" in errors[0]


@pytest.mark.parametrize("bootstrap", ["-5", "-1"])
def test_negative_bootstrap_is_a_usage_error(tmp_path: Path, bootstrap: str) -> None:
    csv = tmp_path / "runs.csv"
    synthetic_parcae_sweep().to_csv(csv, index=False)
    result = _fit(["isoflop", str(csv), "--bootstrap", bootstrap, "--out", str(tmp_path / "fits")])
    assert result.exit_code == 2 and "--bootstrap" in result.output
    with pytest.raises(ValueError, match="n_bootstrap=-5 must be >= 0"):
        isoflop(synthetic_parcae_sweep(), n_bootstrap=-5)
