"""Effective-parameter functions N(mu_rec) for the Parcae law.

The paper fits L = E + A·N(mu_rec)^-a + B·D^-b with N the "effective (unrolled)" parameter
count but does not publish its exact definition, so the choice is explicit here and recorded
with every fit. Until the model package provides breakdowns, plain numbers or table columns are
accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np
import pandas as pd


class EffectiveParams(Protocol):
    columns: tuple[str, ...]

    def params(self, df: pd.DataFrame) -> np.ndarray: ...

    def describe(self) -> str: ...


def _positive(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{what} must be finite and > 0 for every row; check the inputs")
    return values


@dataclass(frozen=True, kw_only=True)
class UnrolledParams:
    """N(mu) = non_core + core·mu_rec: the recurrent block counted once per loop.

    Numbers apply to every row; left as None they are read per row from the columns
    `non_core_params` and `core_params` (needed when a sweep mixes model sizes).
    """

    non_core: float | None = None
    core: float | None = None

    def __post_init__(self) -> None:
        for name in ("non_core", "core"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"UnrolledParams.{name}={v} must be > 0 (or None to read a column)")

    @property
    def columns(self) -> tuple[str, ...]:
        cols = ()
        if self.non_core is None:
            cols += ("non_core_params",)
        if self.core is None:
            cols += ("core_params",)
        return cols

    def params(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ValueError(
                f"effective params 'unrolled' needs columns {missing} or numbers: "
                "pass --non-core/--core (UnrolledParams(non_core=..., core=...))"
            )
        mu = df["mu_rec"].to_numpy(float)
        non_core = df["non_core_params"].to_numpy(float) if self.non_core is None else self.non_core
        core = df["core_params"].to_numpy(float) if self.core is None else self.core
        return _positive(non_core + core * mu, "unrolled N(mu)")

    def describe(self) -> str:
        nc = "non_core_params" if self.non_core is None else f"{self.non_core:.6g}"
        c = "core_params" if self.core is None else f"{self.core:.6g}"
        return f"unrolled: {nc} + {c}·mu_rec"


@dataclass(frozen=True, kw_only=True)
class ColumnParams:
    """N read from a column the user computed (e.g. from the model package's breakdown)."""

    column: str = "params_effective"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def params(self, df: pd.DataFrame) -> np.ndarray:
        if self.column not in df.columns:
            raise ValueError(f"effective params 'column' needs column {self.column!r} in the data")
        return _positive(df[self.column].to_numpy(float), f"column {self.column!r}")

    def describe(self) -> str:
        return f"column {self.column}"


@dataclass(frozen=True, kw_only=True)
class TableParams:
    """N looked up per mu_rec from a table {mu_rec: N}."""

    table: Mapping[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.table:
            raise ValueError("TableParams.table is empty; give {mu_rec: effective params}")
        _positive(np.array(list(self.table.values())), "TableParams.table values")

    columns: tuple[str, ...] = ()

    def params(self, df: pd.DataFrame) -> np.ndarray:
        mu = df["mu_rec"].to_numpy(float)
        keys = {float(k): float(v) for k, v in self.table.items()}
        missing = sorted({m for m in mu if m not in keys})
        if missing:
            raise ValueError(f"TableParams has no entry for mu_rec {missing}; add them to the table")
        return np.array([keys[m] for m in mu])

    def describe(self) -> str:
        return "table " + ", ".join(f"{k:g}:{v:.4g}" for k, v in sorted(self.table.items()))


@dataclass(frozen=True, kw_only=True)
class CallableParams:
    """N = fn(mu_rec array) for a user-supplied function (not serialisable: described only)."""

    fn: Callable[[np.ndarray], np.ndarray]
    label: str = "callable"
    columns: tuple[str, ...] = ()

    def params(self, df: pd.DataFrame) -> np.ndarray:
        return _positive(self.fn(df["mu_rec"].to_numpy(float)), f"N(mu) from {self.label}")

    def describe(self) -> str:
        return self.label


EFFECTIVE_PARAMS: dict[str, type] = {
    "unrolled": UnrolledParams,
    "column": ColumnParams,
    "table": TableParams,
    "callable": CallableParams,
}


def get_effective_params(name: str, **options) -> EffectiveParams:
    if name not in EFFECTIVE_PARAMS:
        raise ValueError(f"unknown effective-params function {name!r}; choose one of {sorted(EFFECTIVE_PARAMS)}")
    return EFFECTIVE_PARAMS[name](**options)
