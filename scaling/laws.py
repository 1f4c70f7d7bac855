"""Functional forms for scaling laws: one registry, one representation.

Every law here is a sum of positive terms, each a coefficient times a product of powers or
exponentials of the inputs. In log space each term is *affine in the fitted parameters*:

    log L = logsumexp_k( log C_k - sum_j theta_kj * f_kj(x) )

so a law is a list of `Term`s over named features. The fitter builds one design tensor
G[k, n, p] (term k, point n, fitted parameter p) and evaluates predictions and analytic
gradients of many starting points at once with matrix products. Coefficients are fitted as
logs (the Chinchilla/Epoch log-sum-exp form), exponents as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from parcae_scaling.scaling.effective_params import EffectiveParams, UnrolledParams

Bounds = tuple[float | None, float | None]
FeatureFn = Callable[[pd.DataFrame], Mapping[str, np.ndarray]]


@dataclass(frozen=True, kw_only=True)
class Term:
    """One positive term: coef * exp(-sum(exponent * feature)); `coef=None` means 1."""

    coef: str | None
    exponents: tuple[tuple[str, str], ...] = ()  # (parameter name, feature name)


@dataclass(frozen=True, kw_only=True)
class Law:
    """A scaling law: terms over features, plus where and how to start fitting it."""

    name: str
    formula: str
    terms: tuple[Term, ...]
    columns: tuple[str, ...]  # input columns the feature function reads
    features: FeatureFn
    start_grid: Mapping[str, tuple[float, ...]]  # fit-space values (log_<coef>, exponents)
    bounds: Mapping[str, Bounds] = field(default_factory=dict)  # fit-space bounds
    derived: Mapping[str, Callable[[Mapping[str, float]], float]] = field(default_factory=dict)
    convention: str = ""  # how N, D, T are counted; recorded with every fit
    # feature -> the input columns that make it vary; named when a feature is constant
    feature_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError(f"Law {self.name!r}: terms is empty; give at least one Term")
        missing = [p for p in self.fit_names if p not in self.start_grid]
        if missing:
            raise ValueError(f"Law {self.name!r}: start_grid lacks {missing}; add values for them")
        unknown = [p for p in list(self.start_grid) + list(self.bounds) if p not in self.fit_names]
        if unknown:
            raise ValueError(f"Law {self.name!r}: start_grid/bounds name unknown parameters {unknown}")

    @property
    def fit_names(self) -> tuple[str, ...]:
        """Fitted parameters: log-coefficients in term order, then exponents."""
        coefs = [f"log_{t.coef}" for t in self.terms if t.coef is not None]
        exps: list[str] = []
        for t in self.terms:
            exps += [p for p, _ in t.exponents if p not in exps]
        return tuple(coefs + exps)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Natural parameter names (coefficients un-logged)."""
        return tuple(n[4:] if n.startswith("log_") else n for n in self.fit_names)

    def to_natural(self, theta: np.ndarray) -> np.ndarray:
        """Fit space -> natural values (exp of log-coefficients); works on (..., P)."""
        theta = np.asarray(theta, dtype=float)
        is_log = np.array([n.startswith("log_") for n in self.fit_names])
        return np.where(is_log, np.exp(np.where(is_log, theta, 0.0)), theta)

    def to_fit_space(self, natural: Mapping[str, float]) -> np.ndarray:
        vals = []
        for fit_name, name in zip(self.fit_names, self.param_names):
            v = float(natural[name])
            if fit_name.startswith("log_") and v <= 0:
                raise ValueError(f"parameter {name}={v} must be > 0 (it is fitted as a log)")
            vals.append(np.log(v) if fit_name.startswith("log_") else v)
        return np.array(vals)

    def design(self, df: pd.DataFrame) -> np.ndarray:
        """G[k, n, p] such that term_k(x_n) = G[k, n, :] @ theta (in log space)."""
        feats = self.features(df)
        n = len(df)
        index = {p: i for i, p in enumerate(self.fit_names)}
        g = np.zeros((len(self.terms), n, len(index)))
        for k, term in enumerate(self.terms):
            if term.coef is not None:
                g[k, :, index[f"log_{term.coef}"]] = 1.0
            for param, feat in term.exponents:
                g[k, :, index[param]] -= np.asarray(feats[feat], dtype=float)
        return g

    def log_predict(self, theta: np.ndarray, df: pd.DataFrame) -> np.ndarray:
        """log L for fit-space parameters theta (P,) or (S, P); returns (n,) or (S, n)."""
        from scipy.special import logsumexp

        g = self.design(df)
        terms = np.einsum("knp,...p->...kn", g, np.asarray(theta, dtype=float))
        return logsumexp(terms, axis=-2)

    def predict(self, params: Mapping[str, float], df: pd.DataFrame) -> np.ndarray:
        """Loss predicted from natural parameters (e.g. FitResult.params)."""
        return np.exp(self.log_predict(self.to_fit_space(params), df))

    def start_points(self) -> np.ndarray:
        """Cartesian product of the start grid, (S, P) in fit space."""
        axes = [np.asarray(self.start_grid[p], dtype=float) for p in self.fit_names]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)


def _log(df: pd.DataFrame, col: str) -> np.ndarray:
    return np.log(df[col].to_numpy(dtype=float))


def _allocation(exp_n: str, exp_d: str) -> dict[str, Callable[[Mapping[str, float]], float]]:
    # Chinchilla Approach 3: N_opt ∝ C^(β/(α+β)), D_opt ∝ C^(α/(α+β)) under C ∝ N·D.
    def share(num: str) -> Callable[[Mapping[str, float]], float]:
        # Undefined (NaN), not a crash, when the exponents cancel (e.g. a bootstrap replica).
        return lambda p: p[num] / (p[exp_n] + p[exp_d]) if p[exp_n] + p[exp_d] != 0 else float("nan")

    return {f"{exp_n}_opt_exponent": share(exp_d), f"{exp_d}_opt_exponent": share(exp_n)}


# Epoch AI's 4,500-point grid for Chinchilla (analyzing-chinchilla): a, b, e, alpha, beta.
_EPOCH_GRID = {
    "log_A": tuple(np.arange(0, 30, 5.0)),
    "log_B": tuple(np.arange(0, 30, 5.0)),
    "log_E": tuple(np.arange(-1, 1.5, 0.5)),
    "alpha": tuple(np.arange(0, 2.5, 0.5)),
    "beta": tuple(np.arange(0, 2.5, 0.5)),
}


def chinchilla_law() -> Law:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3)."""
    return Law(
        name="chinchilla",
        formula="L(N, D) = E + A·N^-alpha + B·D^-beta",
        terms=(
            Term(coef="A", exponents=(("alpha", "log_N"),)),
            Term(coef="B", exponents=(("beta", "log_D"),)),
            Term(coef="E"),
        ),
        columns=("params", "tokens"),
        features=lambda df: {"log_N": _log(df, "params"), "log_D": _log(df, "tokens")},
        start_grid=_EPOCH_GRID,
        derived=_allocation("alpha", "beta"),
        convention="N = params column, D = tokens column",
        feature_columns={"log_N": ("params",), "log_D": ("tokens",)},
    )


def parcae_law(effective_params: EffectiveParams | None = None) -> Law:
    """L(mu_rec, D) = E + A·N(mu_rec)^-a + B·D^-b with an explicit effective-parameter N(mu)."""
    eff = effective_params or UnrolledParams()
    return Law(
        name="parcae",
        formula="L(mu_rec, D) = E + A·N(mu_rec)^-a + B·D^-b",
        terms=(
            Term(coef="A", exponents=(("a", "log_N"),)),
            Term(coef="B", exponents=(("b", "log_D"),)),
            Term(coef="E"),
        ),
        columns=("mu_rec", "tokens") + eff.columns,
        features=lambda df: {"log_N": np.log(eff.params(df)), "log_D": _log(df, "tokens")},
        start_grid={
            "log_A": (0.0, 5.0, 10.0, 15.0, 20.0),
            "log_B": (0.0, 5.0, 10.0, 15.0, 20.0),
            "log_E": (-1.0, 0.0, 1.0),
            "a": (0.0, 0.5, 1.0, 1.5),
            "b": (0.0, 0.5, 1.0, 1.5),
        },
        derived=_allocation("a", "b"),
        convention=f"N(mu) = {eff.describe()}; D = tokens column",
        feature_columns={"log_N": ("mu_rec",), "log_D": ("tokens",)},
    )


def unified_law(effective_params: EffectiveParams | None = None) -> Law:
    """L(T | mu_rec, D) = E + X·N(mu_rec)^-x + Y·D^-y + Z·exp(-z·T/mu_rec) (Parcae unified law)."""
    eff = effective_params or UnrolledParams()
    return Law(
        name="unified",
        formula="L(T | mu_rec, D) = E + X·N(mu_rec)^-x + Y·D^-y + Z·exp(-z·T/mu_rec)",
        terms=(
            Term(coef="X", exponents=(("x", "log_N"),)),
            Term(coef="Y", exponents=(("y", "log_D"),)),
            Term(coef="Z", exponents=(("z", "T_over_mu"),)),
            Term(coef="E"),
        ),
        columns=("mu_rec", "tokens", "recurrence") + eff.columns,
        features=lambda df: {
            "log_N": np.log(eff.params(df)),
            "log_D": _log(df, "tokens"),
            "T_over_mu": df["recurrence"].to_numpy(float) / df["mu_rec"].to_numpy(float),
        },
        start_grid={
            "log_X": (0.0, 5.0, 10.0, 15.0),
            "log_Y": (0.0, 5.0, 10.0, 15.0),
            "log_Z": (-4.0, -2.0, 0.0),
            "log_E": (-1.0, 0.0, 1.0),
            "x": (0.25, 0.75, 1.25),
            "y": (0.25, 0.75, 1.25),
            "z": (0.5, 2.0, 5.0),
        },
        bounds={"z": (0.0, None)},
        derived=_allocation("x", "y"),
        convention=f"N(mu) = {eff.describe()}; D = tokens column; T = recurrence at evaluation",
        feature_columns={"log_N": ("mu_rec",), "log_D": ("tokens",), "T_over_mu": ("recurrence", "mu_rec")},
    )


_TT_GRID = {"log_L_inf": (-1.0, 0.0, 1.0, 2.0), "log_Z": (-5.0, -3.0, -1.0, 1.0), "z": (0.1, 0.5, 1.0, 2.0)}


def _tt_law(name: str, formula: str, feature: str, fn, saturating: bool = True) -> Law:
    terms = (Term(coef="Z", exponents=(("z", feature),)),)
    grid = dict(_TT_GRID)
    if saturating:
        terms = (Term(coef="L_inf"),) + terms
    else:
        grid.pop("log_L_inf")
    return Law(
        name=name,
        formula=formula,
        terms=terms,
        columns=("recurrence",),
        features=lambda df: {feature: fn(df["recurrence"].to_numpy(float))},
        start_grid=grid,
        bounds={"z": (0.0, None)},
        convention="T = recurrence at evaluation",
        feature_columns={feature: ("recurrence",)},
    )


def saturating_power_law(x: str = "x") -> Law:
    """y = E + A·x^-alpha."""
    return Law(
        name="saturating_power",
        formula=f"y = E + A·{x}^-alpha",
        terms=(Term(coef="A", exponents=(("alpha", "log_x"),)), Term(coef="E")),
        columns=(x,),
        features=lambda df: {"log_x": _log(df, x)},
        start_grid={"log_A": (0.0, 5.0, 10.0, 20.0), "log_E": (-1.0, 0.0, 1.0, 2.0),
                    "alpha": (0.05, 0.2, 0.5, 1.0)},
        convention=f"x = {x} column",
        feature_columns={"log_x": (x,)},
    )


def power_law(x: str = "x") -> Law:
    """y = k·x^gamma (fitted robustly in log space; see powerlaw.fit_power_law for OLS)."""
    return Law(
        name="power",
        formula=f"y = k·{x}^gamma",
        terms=(Term(coef="k", exponents=(("gamma", "neg_log_x"),)),),
        columns=(x,),
        features=lambda df: {"neg_log_x": -_log(df, x)},
        start_grid={"log_k": (-10.0, 0.0, 10.0), "gamma": (-1.0, 0.0, 1.0)},
        convention=f"x = {x} column",
        feature_columns={"neg_log_x": (x,)},
    )


LAWS: dict[str, Callable[..., Law]] = {
    "chinchilla": chinchilla_law,
    "parcae": parcae_law,
    "unified": unified_law,
    "tt_exp": lambda: _tt_law("tt_exp", "L(T) = L_inf + Z·exp(-z·T)", "T", lambda t: t),
    "tt_shifted_power": lambda: _tt_law(
        "tt_shifted_power", "L(T) = L_inf + Z·(1+T)^-z", "log1p_T", np.log1p),
    "tt_power": lambda: _tt_law("tt_power", "L(T) = L_inf + Z·T^-z", "log_T", np.log),
    "tt_pure_power": lambda: _tt_law(
        "tt_pure_power", "L(T) = Z·T^-z", "log_T", np.log, saturating=False),
    "saturating_power": saturating_power_law,
    "power": power_law,
}
TEST_TIME_FORMS = ("tt_exp", "tt_shifted_power", "tt_power", "tt_pure_power")


def get_law(name: str, **options) -> Law:
    """Build a registered law; raises on unknown names (options go to its constructor)."""
    if name not in LAWS:
        raise ValueError(f"unknown law {name!r}; choose one of {sorted(LAWS)}")
    return LAWS[name](**options)
