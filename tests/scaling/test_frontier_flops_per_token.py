"""The frontier's FLOPs per token comes from the runs' exact column when the table has it."""

import numpy as np
import pandas as pd
import pytest

from parcae_scaling.scaling.frontier import flops_per_token_from_runs


def _runs(with_exact: bool) -> pd.DataFrame:
    mu = np.array([1, 2, 4, 1, 2, 4], dtype=float)
    exact = 1e8 + 2e7 * mu  # affine in mu, as the planner computed it
    budget = np.array([1e12] * 3 + [2e12] * 3)
    tokens = np.floor(budget / exact / 64) * 64  # whole optimizer steps: budget / tokens overshoots exact
    df = pd.DataFrame({"run_id": [f"r{i}" for i in range(6)], "budget_flops": budget, "tokens": tokens,
                       "mu_rec": mu, "loss": 3.0})
    if with_exact:
        df["flops_per_token"] = exact
    return df


def test_exact_flops_per_token_column_is_used_as_is():
    fpt = flops_per_token_from_runs(_runs(with_exact=True))
    assert fpt.intercept == pytest.approx(1e8, rel=1e-9) and fpt.slope == pytest.approx(2e7, rel=1e-9)


def test_without_the_column_budget_over_tokens_is_the_fallback():
    fpt = flops_per_token_from_runs(_runs(with_exact=False))
    assert fpt(2.0) > 1e8 + 2e7 * 2  # rounding down to whole steps makes budget / tokens larger
    assert fpt(2.0) == pytest.approx(1e8 + 2e7 * 2, rel=0.05)
