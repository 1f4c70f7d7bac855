"""Plain power laws y = k·x^gamma by least squares in log-log space, with standard errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from parcae_scaling.scaling.results import ConfidenceInterval


@dataclass(frozen=True, kw_only=True)
class PowerLawFit:
    """y = k·x^gamma; standard errors from the OLS fit of log y on log x."""

    k: float
    gamma: float
    log_k_se: float  # standard error of ln k
    gamma_se: float
    n_points: int
    r_squared: float
    gamma_interval: ConfidenceInterval | None = None
    warnings: tuple[str, ...] = ()

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.k * np.asarray(x, dtype=float) ** self.gamma

    @classmethod
    def from_dict(cls, d: dict) -> "PowerLawFit":
        d = dict(d)
        if d.get("gamma_interval"):
            d["gamma_interval"] = ConfidenceInterval(**d["gamma_interval"])
        d["warnings"] = tuple(d.get("warnings", ()))
        return cls(**d)


def log_slopes(log_x: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """OLS exponents gamma of ln y = ln k + gamma·ln x for each row of log_y (B, k) over log_x (k,):
    many bootstrap replicas at once (no standard errors). NaN rows give NaN."""
    lx = log_x - log_x.mean()
    return ((log_y - log_y.mean(axis=1, keepdims=True)) * lx).sum(axis=1) / (lx**2).sum()


def fit_power_law(x: np.ndarray, y: np.ndarray, *, level: float = 0.95) -> PowerLawFit:
    """OLS of ln y on ln x. Needs >= 2 points; standard errors need >= 3."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y have shapes {x.shape} and {y.shape}; give one y per x")
    if np.any(~np.isfinite(x) | (x <= 0)) or np.any(~np.isfinite(y) | (y <= 0)):
        raise ValueError("power-law fit needs finite x > 0 and y > 0 (it is fitted in log-log space)")
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError(f"power-law fit needs >= 2 distinct x values, got {np.unique(x).size}")
    lx, ly = np.log(x), np.log(y)
    warnings: list[str] = []
    if x.size == 2:
        gamma = float((ly[1] - ly[0]) / (lx[1] - lx[0]))
        return PowerLawFit(k=float(np.exp(ly[0] - gamma * lx[0])), gamma=gamma, log_k_se=float("nan"),
                           gamma_se=float("nan"), n_points=2, r_squared=1.0,
                           warnings=("only 2 points: exponent has no standard error",))
    res = stats.linregress(lx, ly)
    t = stats.t.ppf((1 + level) / 2, x.size - 2)
    interval = ConfidenceInterval(low=float(res.slope - t * res.stderr), high=float(res.slope + t * res.stderr),
                                  level=level, method="OLS t-interval")
    if x.size < 4:
        warnings.append(f"only {x.size} points: the exponent's interval is wide")
    return PowerLawFit(k=float(np.exp(res.intercept)), gamma=float(res.slope), log_k_se=float(res.intercept_stderr),
                       gamma_se=float(res.stderr), n_points=int(x.size), r_squared=float(res.rvalue**2),
                       gamma_interval=interval, warnings=tuple(warnings))
