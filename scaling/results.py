"""Typed fit results that carry their diagnosis, with JSON round-trips.

`to_json()` / `from_json()` round-trip the whole result; the store keeps that JSON
(`Store.save_fit`, written by `parcae-fit` for fits read from a store).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

# Bootstrap resamples behind the intervals the analyses and reports print (0 = none).
DEFAULT_BOOTSTRAP = 200


@dataclass(frozen=True, kw_only=True)
class ConfidenceInterval:
    """A two-sided interval of one quantity (percentile bootstrap unless `method` says otherwise)."""

    low: float
    high: float
    level: float = 0.95
    method: str = "percentile bootstrap"
    n_resamples: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"ConfidenceInterval.level={self.level} must be in (0, 1), e.g. 0.95")
        if self.low > self.high:
            raise ValueError(f"ConfidenceInterval: low={self.low} > high={self.high}; swap them")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def percentile_interval(samples: np.ndarray, level: float, *,
                        method: str = "percentile bootstrap") -> ConfidenceInterval:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return ConfidenceInterval(low=float("nan"), high=float("nan"), level=level, method=method)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return ConfidenceInterval(low=float(lo), high=float(hi), level=level, method=method, n_resamples=int(samples.size))


@dataclass(frozen=True, kw_only=True)
class DataSelection:
    """Which rows went into a fit and why others did not."""

    source: str = ""
    n_rows_in: int = 0
    n_used: int = 0
    n_excluded_nan: int = 0
    filters: tuple[str, ...] = ()


def _ci_map(d: Mapping[str, Any]) -> dict[str, ConfidenceInterval]:
    return {k: ConfidenceInterval(**v) for k, v in d.items()}


@dataclass(frozen=True, kw_only=True)
class FitResult:
    """A fitted parametric law: natural parameters, intervals, objective and diagnosis."""

    law: str
    formula: str
    params: Mapping[str, float]
    objective: float
    loss: str = "huber"
    delta: float = 1e-3
    n_starts: int = 1
    n_starts_agree: int = 1
    n_points: int = 0
    n_runs: int = 0
    success: bool = True
    message: str = ""
    intervals: Mapping[str, ConfidenceInterval] = field(default_factory=dict)
    derived: Mapping[str, float] = field(default_factory=dict)
    derived_intervals: Mapping[str, ConfidenceInterval] = field(default_factory=dict)
    selection: DataSelection = field(default_factory=DataSelection)
    convention: str = ""
    flop_convention: str = ""
    warnings: tuple[str, ...] = ()
    bootstrap_params: tuple[tuple[float, ...], ...] = ()  # natural values, one row per replica
    unidentified: tuple[str, ...] = ()  # parameters/derived the bootstrap cannot bound ("not identified")

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("FitResult.params is empty; a fit must name its parameters")
        if self.n_starts_agree > self.n_starts:
            raise ValueError(f"FitResult.n_starts_agree={self.n_starts_agree} > n_starts={self.n_starts}")

    @property
    def points_per_parameter(self) -> float:
        return self.n_points / max(len(self.params), 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["derived"] = dict(self.derived)
        return d

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FitResult":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"FitResult.from_dict: unknown keys {sorted(unknown)}")
        d = dict(d)
        d["intervals"] = _ci_map(d.get("intervals", {}))
        d["derived_intervals"] = _ci_map(d.get("derived_intervals", {}))
        sel = dict(d.get("selection", {}))
        sel["filters"] = tuple(sel.get("filters", ()))
        d["selection"] = DataSelection(**sel)
        d["warnings"] = tuple(d.get("warnings", ()))
        d["bootstrap_params"] = tuple(tuple(r) for r in d.get("bootstrap_params", ()))
        d["unidentified"] = tuple(d.get("unidentified", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "FitResult":
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        lines = [f"{self.law}: {self.formula}",
                 f"  objective {self.objective:.7g} ({self.loss}, delta={self.delta:g}); "
                 f"{self.n_starts_agree}/{self.n_starts} starts reach it; {self.n_points} points"]
        for name, v in self.params.items():
            lines.append(f"  {name:>12} = {v:.6g}{self._interval_text(name, self.intervals)}")
        for name, v in self.derived.items():
            lines.append(f"  {name:>12} = {v:.4g}{self._interval_text(name, self.derived_intervals)}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _interval_text(self, name: str, intervals: Mapping[str, ConfidenceInterval]) -> str:
        if name in self.unidentified:
            return "  [not identified]"
        ci = intervals.get(name)
        return f"  [{ci.low:.4g}, {ci.high:.4g}]" if ci else ""
