"""Tables from other tools: a column mapping, and what can be derived where a column is missing."""

import pandas as pd
import pytest

from parcae_scaling.scaling.data import adapt_external, parse_column_map


def test_column_map_reads_ours_equals_theirs() -> None:
    assert parse_column_map("params=N, tokens=D,loss=L") == {"N": "params", "D": "tokens", "L": "loss"}
    assert parse_column_map(None) == {} and parse_column_map("") == {}


@pytest.mark.parametrize("text", ["loss", "=L", "loss=", "params=N,tokens=N"])
def test_a_malformed_column_map_is_one_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="--columns"):
        parse_column_map(text)


def test_budget_is_6nd_and_ids_and_depth_are_filled_with_notes() -> None:
    raw = pd.DataFrame({"N": [1e8, 2e8], "D": [1e9, 3e9], "L": [3.1, 2.9]})
    df, notes = adapt_external(raw, parse_column_map("params=N,tokens=D,loss=L"))
    assert df["budget_flops"].tolist() == [6 * 1e8 * 1e9, 6 * 2e8 * 3e9]
    assert set(df["flop_convention"]) == {"6ND"} and df["run_id"].tolist() == ["row-1", "row-2"]
    assert df["mu_rec"].tolist() == [1, 1] and len(notes) == 3


def test_a_given_budget_is_kept_and_a_shadowed_column_is_replaced() -> None:
    raw = pd.DataFrame({"params": [1.0], "tokens": [2.0], "C": [99.0], "model": ["arch"], "dataset": ["c4"],
                        "run_id": ["a"], "mu_rec": [2], "loss": [1.0]})
    df, notes = adapt_external(raw, parse_column_map("budget_flops=C,model=dataset"))
    assert df["budget_flops"].tolist() == [99.0] and df["model"].tolist() == ["c4"]
    assert list(df.columns).count("model") == 1 and notes == ["the file's own column(s) ['model'] replaced by the "
                                                               "mapped ones"]


def test_mapping_a_column_the_file_lacks_lists_its_columns() -> None:
    with pytest.raises(ValueError, match=r"\['nosuch'\], which the file does not have; its columns: \['N'\]"):
        adapt_external(pd.DataFrame({"N": [1.0]}), {"nosuch": "loss"})


def test_without_a_mapping_a_missing_depth_is_not_assumed() -> None:
    df, notes = adapt_external(pd.DataFrame({"params": [1.0], "tokens": [2.0], "loss": [1.0]}), {})
    assert "mu_rec" not in df.columns and df["budget_flops"].tolist() == [12.0]
