"""Validation on real published data: Epoch AI's replication of Chinchilla Approach 3."""

from pathlib import Path

import pytest

from parcae_scaling.scaling.data import epoch_chinchilla_table
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.laws import get_law

DATA = Path("/work/shared/data/scaling-laws/epoch_chinchilla_svg_extracted_data.csv")
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} not available")


@pytest.fixture(scope="module")
def epoch_fit():
    df = epoch_chinchilla_table(DATA)
    assert len(df) == 240  # Epoch drop the 5 highest losses
    return fit_law(get_law("chinchilla"), df, n_bootstrap=1000, seed=0)


def test_reaches_epoch_global_optimum(epoch_fit):
    r = epoch_fit
    assert abs(r.objective - 0.0010183) <= 1e-7
    p = r.params
    assert p["A"] == pytest.approx(477.8, rel=2e-3)
    assert p["B"] == pytest.approx(2143.4, rel=2e-3)
    assert p["E"] == pytest.approx(1.8172, abs=5e-4)
    assert p["alpha"] == pytest.approx(0.3473, abs=3e-4)
    assert p["beta"] == pytest.approx(0.3672, abs=3e-4)
    assert r.n_starts == 4500
    assert 1 < r.n_starts_agree < r.n_starts
    assert r.derived["alpha_opt_exponent"] == pytest.approx(0.3672 / (0.3473 + 0.3672), abs=1e-3)


def test_bootstrap_intervals_close_to_epoch(epoch_fit):
    ci = epoch_fit.intervals
    # Epoch: E about 1.77-1.87, alpha about 0.32-0.37, beta about 0.33-0.42
    assert ci["E"].low == pytest.approx(1.77, abs=0.015) and ci["E"].high == pytest.approx(1.87, abs=0.015)
    assert ci["alpha"].low == pytest.approx(0.32, abs=0.01) and ci["alpha"].high == pytest.approx(0.37, abs=0.01)
    assert ci["beta"].low == pytest.approx(0.33, abs=0.01) and ci["beta"].high == pytest.approx(0.42, abs=0.015)
    assert ci["A"].contains(epoch_fit.params["A"]) and ci["A"].n_resamples == 1000
    assert len(epoch_fit.bootstrap_params) == 1000
