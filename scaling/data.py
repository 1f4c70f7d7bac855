"""Input tables for the fits: expected columns, validation, loading.

Training-run table (one row per finished run, evaluated at T = mu_rec):
    run_id, budget_flops, mu_rec, tokens, params, loss
    optional: non_core_params, core_params, params_effective, flop_convention, model
Test-time table (one row per run and evaluation depth T):
    run_id, mu_rec, tokens, recurrence, loss   (optional: budget_flops, params, model)

`loss` is validation loss in nats per token; NaN marks a diverged run and is excluded with a
notice. Every other listed column must be finite and > 0, and `mu_rec` (a mean recurrence
depth) >= 1. A table's key (`run_id` for run tables; `run_id, recurrence` for test-time
tables) names one row: a row repeated exactly (every column equal, e.g. an export appended
twice) is dropped with a notice, so a run never counts twice; rows that share a key but differ
are refused, because which one is right cannot be told.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


RUN_COLUMNS = ("run_id", "budget_flops", "mu_rec", "tokens", "params", "loss")
TEST_TIME_COLUMNS = ("run_id", "mu_rec", "tokens", "recurrence", "loss")
_NOT_NUMERIC = {"run_id", "model", "flop_convention", "sweep"}


@dataclass(frozen=True, kw_only=True)
class Table:
    """A validated table plus the notices raised while cleaning it."""

    df: pd.DataFrame
    n_rows_in: int
    n_excluded_nan: int
    warnings: tuple[str, ...]


def validate_table(df: pd.DataFrame, required: tuple[str, ...], *, what: str = "table",
                   key: tuple[str, ...] = (), positive: tuple[str, ...] | None = None) -> Table:
    """Check columns and values; drop exact duplicate rows and NaN-loss rows (diverged runs)
    with a notice.

    Raises ValueError naming the column and the fix for missing columns, non-numeric or
    non-positive values, non-loss NaNs, mu_rec < 1, and rows sharing `key` with different values.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; expected columns {list(required)} "
            f"(have {list(df.columns)})"
        )
    if df.empty:
        raise ValueError(f"{what}: no rows; give at least one finished run")
    df = df.copy()
    for col in required:
        if col in _NOT_NUMERIC:
            continue
        numeric = pd.to_numeric(df[col], errors="coerce")
        not_numbers = numeric.isna() & df[col].notna()
        if not_numbers.any():
            raise ValueError(
                f"{what}: column {col!r} must be numeric: {int(not_numbers.sum())} value(s) are not numbers, "
                f"e.g. {df.loc[not_numbers, col].astype(str).tolist()[:3]} (rows {row_ids(df, not_numbers)}); "
                "fix the input file"
            )
        df[col] = numeric
    warnings: list[str] = []
    n_in = len(df)
    df, dup_warnings = _drop_duplicates(df, key, what)
    warnings += dup_warnings
    nan_loss = df["loss"].isna() if "loss" in df.columns else pd.Series(False, index=df.index)
    n_nan = int(nan_loss.sum())
    if n_nan:
        warnings.append(f"excluded {n_nan} row(s) with NaN loss (diverged runs) {row_ids(df, nan_loss)}")
        df = df.loc[~nan_loss]
    if df.empty:
        raise ValueError(f"{what}: every loss is NaN (all runs diverged); nothing to fit")
    for col in required:
        if col in _NOT_NUMERIC:
            continue
        vals = df[col].to_numpy(dtype=float)
        must_be_positive = positive is None or col in positive  # a general law's inputs may be <= 0
        bad = ~np.isfinite(vals) | ((vals <= 0) if must_be_positive else False)
        if bad.any():
            example = df.loc[bad, col].tolist()[:3]
            kind = "non-positive or non-finite" if must_be_positive else "non-finite"
            rule = "> 0" if must_be_positive else "a finite number"
            raise ValueError(
                f"{what}: column {col!r} has {int(bad.sum())} {kind} value(s), "
                f"e.g. {example}; every {col} must be {rule} (remove or fix those rows)"
            )
    if "mu_rec" in required:
        shallow = df["mu_rec"].to_numpy(dtype=float) < 1
        if shallow.any():
            raise ValueError(
                f"{what}: column 'mu_rec' has {int(shallow.sum())} value(s) < 1, e.g. "
                f"{df.loc[shallow, 'mu_rec'].tolist()[:3]}; mu_rec is a mean recurrence depth and must be "
                ">= 1 (1 = no looping; fix those rows)"
            )
    return Table(df=df.reset_index(drop=True), n_rows_in=n_in, n_excluded_nan=n_nan,
                 warnings=tuple(warnings))


def row_ids(df: pd.DataFrame, mask: pd.Series) -> list[str]:
    """A few run ids (or row numbers) of the masked rows, for messages."""
    if "run_id" in df.columns:
        return sorted(set(df.loc[mask, "run_id"].astype(str)))[:5]
    return [f"row {i}" for i in df.index[mask][:5]]


def _drop_duplicates(df: pd.DataFrame, key: tuple[str, ...], what: str) -> tuple[pd.DataFrame, list[str]]:
    """Drop rows repeated exactly (notice); refuse rows that share `key` but differ.

    A repeated row would double that run's weight in every fit and bootstrap.
    """
    warnings: list[str] = []
    exact = df.duplicated(keep="first")
    if exact.any():
        warnings.append(f"dropped {int(exact.sum())} exact duplicate row(s) {row_ids(df, exact)}: "
                        "each run counts once")
        df = df.loc[~exact]
    if key and all(k in df.columns for k in key):
        clash = df.duplicated(subset=list(key), keep=False)
        if clash.any():
            raise ValueError(
                f"{what}: {', '.join(key)} {row_ids(df, clash)} appear in {int(clash.sum())} rows with "
                f"different values; each {' + '.join(key)} must appear once (remove the stale rows)"
            )
    return df, warnings


def load_csv(path: str | Path) -> pd.DataFrame:
    """Read a results CSV (validation happens in the analysis that uses it)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input CSV {str(path)!r} does not exist; pass the path of a results table")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"input CSV {str(path)!r} is empty (not even a header row); "
                         "pass a results table with a header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"input CSV {str(path)!r} is not a readable CSV ({detail}); "
                         "pass a UTF-8 comma-separated results table") from None


def parse_column_map(text: str | None) -> dict[str, str]:
    """`--columns params=N,tokens=D` -> {"N": "params", "D": "tokens"} (the file's name -> ours)."""
    mapping: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        ours, sep, theirs = (part.strip() for part in item.partition("="))
        if not sep or not ours or not theirs:
            raise ValueError(f"--columns {text!r}: write OURS=THEIRS pairs separated by commas, e.g. "
                             "--columns params=N,tokens=D,loss=L")
        if theirs in mapping:
            raise ValueError(f"--columns {text!r}: the file's column {theirs!r} is mapped twice")
        mapping[theirs] = ours
    return mapping


def adapt_external(df: pd.DataFrame, mapping: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """A table from another tool as a run table: its columns renamed by `mapping` (the file's name
    -> ours), and what a law can be fitted without derived where it is missing, each with a note:
    budget_flops as 6 N D (the Chinchilla convention), a row number as run_id, and, for a table
    declared foreign by a mapping, mu_rec = 1 (a fixed-depth model)."""
    absent = [theirs for theirs in mapping if theirs not in df.columns]
    if absent:
        raise ValueError(f"--columns names {absent}, which the file does not have; its columns: {list(df.columns)}")
    notes: list[str] = []
    shadowed = [ours for ours in mapping.values() if ours in df.columns and ours not in mapping]
    if shadowed:  # the file has a column of that name too: the mapping says which one is meant
        df = df.drop(columns=shadowed)
        notes.append(f"the file's own column(s) {shadowed} replaced by the mapped ones")
    df = df.rename(columns=mapping)
    if "budget_flops" not in df.columns and {"params", "tokens"} <= set(df.columns):
        df = df.assign(budget_flops=6.0 * df["params"].astype(float) * df["tokens"].astype(float))
        if "flop_convention" not in df.columns:
            df = df.assign(flop_convention="6ND")
        notes.append("budget_flops = 6 N D (the file has no budget_flops)")
    if "run_id" not in df.columns:
        df = df.assign(run_id=[f"row-{i + 1}" for i in range(len(df))])
        notes.append("run_id = row number")
    if "mu_rec" not in df.columns and mapping:  # declared another tool's table: a fixed-depth model
        df = df.assign(mu_rec=1)
        notes.append("mu_rec = 1 (no mu_rec column: a fixed-depth model)")
    return df, notes


def epoch_chinchilla_table(path: str | Path, *, drop_highest: int = 5) -> pd.DataFrame:
    """Epoch AI's digitised Chinchilla points as a run table (D = C / (6 N)).

    Epoch drop the 5 highest losses before fitting (240 of 245 points remain).
    """
    raw = load_csv(path)
    raw = raw.sort_values("loss", kind="stable").iloc[: len(raw) - drop_highest]
    params = raw["Model Size"].to_numpy(float)
    budget = raw["Training FLOP"].to_numpy(float)
    return pd.DataFrame({
        "run_id": [f"chinchilla-{i}" for i in raw.index],
        "budget_flops": budget,
        "params": params,
        "tokens": budget / (6.0 * params),
        "loss": raw["loss"].to_numpy(float),
        "flop_convention": "6ND",
    }).reset_index(drop=True)
