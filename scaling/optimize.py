"""Robust objectives and a batched multi-start optimiser.

Objective: sum_n w_n · rho(logsumexp_k(G[k,n,:] @ theta) - log y_n), rho = Huber(delta) or
squares. Summed, not averaged (REFERENCE §4): with a mean, L-BFGS's relative-decrease test
stops after a couple of iterations and "confirms" its starting point.

Speed: all starting points (or bootstrap replicas, which differ only in their point weights)
are optimised together by a projected L-BFGS whose every step is a couple of matrix products
over the stacked starts; converged starts leave the active set. The best few are then
polished by scipy's L-BFGS-B with the analytic gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from scipy.optimize import minimize

LossName = Literal["huber", "squares"]
_BLOCK_ELEMENTS = 1 << 15


def _rho_psi(r: np.ndarray, loss: LossName, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Loss rho(r) and its derivative psi(r)."""
    if loss == "huber":
        a = np.abs(r)
        rho = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
        return rho, np.clip(r, -delta, delta)
    if loss == "squares":
        return 0.5 * r * r, r
    raise ValueError(f"unknown loss {loss!r}; choose 'huber' or 'squares'")


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Elementwise Huber loss (same as torch.nn.functional.huber_loss, reduction='none')."""
    return _rho_psi(np.asarray(r, dtype=float), "huber", delta)[0]


@dataclass(frozen=True)
class Objective:
    """Weighted robust loss of a log-sum-exp law; evaluates many parameter vectors at once."""

    design: np.ndarray  # (K, n, P)
    log_y: np.ndarray  # (n,)
    loss: LossName = "huber"
    delta: float = 1e-3

    def __post_init__(self) -> None:
        if self.loss not in ("huber", "squares"):
            raise ValueError(f"unknown loss {self.loss!r}; choose 'huber' or 'squares'")
        if not self.delta > 0:
            raise ValueError(f"delta={self.delta} must be > 0")
        g = np.asarray(self.design, dtype=float)
        k, n, p = g.shape
        # Terms whose design row is the same for every point (e.g. the constant E) cost one
        # exp per start instead of one per point: split them out.
        const = np.all(g == g[:, :1, :], axis=(1, 2))
        gv = g[~const]
        object.__setattr__(self, "_kv", int(gv.shape[0]))
        object.__setattr__(self, "_flat_v", np.ascontiguousarray(gv.transpose(2, 0, 1).reshape(p, -1)))
        object.__setattr__(self, "_const", np.ascontiguousarray(g[const, 0, :]))  # (Kc, P)
        object.__setattr__(self, "_flat", np.ascontiguousarray(g.transpose(2, 0, 1).reshape(p, k * n)))

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """log prediction - log y, (S, n), computed with a per-point max (always stable)."""
        k, n, _ = self.design.shape
        t = (np.atleast_2d(theta) @ self._flat).reshape(-1, k, n)
        m = t.max(axis=1)
        lse = m + np.log(np.exp(t - m[:, None, :]).sum(axis=1))
        return lse - self.log_y

    def value_and_grad(self, theta: np.ndarray, weights: np.ndarray,
                       log_y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """theta (S, P), weights (S, n) or (n,) -> objective (S,), gradient (S, P). `log_y` (S, n):
        one target vector per row of theta (a parametric bootstrap); default: the fitted data."""
        theta = np.atleast_2d(theta)
        # Work in blocks of starts: temporaries stay cache-sized and are not fresh mmaps
        # (page faults otherwise dominate the run time).
        block = max(1, _BLOCK_ELEMENTS // (self.design.shape[0] * self.design.shape[1]))
        if theta.shape[0] <= block:
            return self._value_and_grad(theta, weights, log_y)
        weights = np.asarray(weights, dtype=float)
        per_row = weights.ndim == 2
        f = np.empty(theta.shape[0])
        g = np.empty_like(theta)
        for i in range(0, theta.shape[0], block):
            sl = slice(i, i + block)
            f[sl], g[sl] = self._value_and_grad(theta[sl], weights[sl] if per_row else weights,
                                                None if log_y is None else log_y[sl])
        return f, g

    def _value_and_grad(self, theta: np.ndarray, weights: np.ndarray,
                        log_y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        target = self.log_y if log_y is None else log_y
        s_count, n = theta.shape[0], self.log_y.shape[0]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            tv = (theta @ self._flat_v).reshape(s_count, self._kv, n)
            tc = theta @ self._const.T  # (S, Kc)
            # One shift per start (not per point) keeps the exps few; rows where that
            # under/overflows are redone with the per-point shift.
            m = np.full(s_count, -np.inf)
            if self._kv:
                m = np.maximum(m, tv.max(axis=(1, 2)))
            if tc.size:
                m = np.maximum(m, tc.max(axis=1))
            ev = np.exp(tv - m[:, None, None])
            ec = np.exp(tc - m[:, None])
            s = ev.sum(axis=1) + ec.sum(axis=1)[:, None]
            r = m[:, None] + np.log(s) - target
            psi = np.clip(r, -self.delta, self.delta) if self.loss == "huber" else r
            rho = psi * (r - 0.5 * psi)  # Huber and squares in one formula
            w = np.broadcast_to(weights, r.shape)
            f = (w * rho).sum(axis=-1)
            q = w * psi / s
            g = (q[:, None, :] * ev).reshape(s_count, -1) @ self._flat_v.T
            if tc.size:
                g += (q.sum(axis=1)[:, None] * ec) @ self._const
            bad = ~(np.isfinite(f) & np.all(s > 1e-250, axis=1))
            if bad.any():
                f[bad], g[bad] = self._stable(theta[bad], w[bad], target if target.ndim == 1 else target[bad])
        return f, g

    def _stable(self, theta: np.ndarray, w: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-point shifted log-sum-exp: slower, used only where the fast path fails."""
        k, n, _ = self.design.shape
        t = (theta @ self._flat).reshape(-1, k, n)
        m = t.max(axis=1, keepdims=True)
        e = np.exp(t - m)
        s = e.sum(axis=1)
        r = m[:, 0, :] + np.log(s) - target
        psi = np.clip(r, -self.delta, self.delta) if self.loss == "huber" else r
        f = (w * psi * (r - 0.5 * psi)).sum(axis=-1)
        g = ((w * psi / s)[:, None, :] * e).reshape(len(theta), -1) @ self._flat.T
        return f, g


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    x: np.ndarray  # (S, P)
    f: np.ndarray  # (S,)
    n_iter: np.ndarray  # (S,)
    converged: np.ndarray  # (S,) bool


def batched_lbfgs(
    fun: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    memory: int = 10,
    max_iter: int = 1000,
    ftol: float = 2.2e-9,  # scipy L-BFGS-B's default factr·eps
    gtol: float = 1e-5,
    min_iter: int = 3,
    f_scale: float = 1.0,
) -> BatchResult:
    """Projected L-BFGS with Armijo backtracking, run on all rows of x0 at once.

    `fun(x_sub, idx)` returns objective and gradient for the rows `idx` of the batch (so that
    per-row data such as bootstrap weights can be looked up). A row stops when its decrease
    falls below ftol·max(|f|, f_scale) (f_scale=1 is scipy's rule; 0 makes it relative).
    """
    x = np.clip(np.array(x0, dtype=float), lower, upper)
    s_count, p = x.shape
    f, g = fun(x, np.arange(s_count))
    s_hist = np.zeros((s_count, memory, p))
    y_hist = np.zeros((s_count, memory, p))
    rho = np.zeros((s_count, memory))
    gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-12)  # first step: unit length
    n_iter = np.zeros(s_count, dtype=int)
    converged = np.zeros(s_count, dtype=bool)
    active = np.arange(s_count)
    for it in range(max_iter):
        if active.size == 0:
            break
        a = active
        q = g[a].copy()
        alphas = []
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]
        for slot in order:  # newest to oldest
            al = rho[a, slot] * np.einsum("sp,sp->s", s_hist[a, slot], q)
            q -= al[:, None] * y_hist[a, slot]
            alphas.append(al)
        r = gamma[a, None] * q
        for slot, al in zip(reversed(order), reversed(alphas)):
            be = rho[a, slot] * np.einsum("sp,sp->s", y_hist[a, slot], r)
            r += (al - be)[:, None] * s_hist[a, slot]
        d = -r
        steepest = ~np.any(rho[a] != 0.0, axis=1)  # no curvature pairs yet: step length unknown
        slope = np.einsum("sp,sp->s", g[a], d)
        bad = slope >= 0  # not a descent direction: restart from steepest descent
        if bad.any():
            d[bad] = -g[a][bad] * gamma[a][bad, None]
            rho[a[bad]] = 0.0
            steepest |= bad
            slope = np.einsum("sp,sp->s", g[a], d)
        # Armijo backtracking on the projected step, vectorised over the active rows
        step = np.ones(a.size)
        x_new = x[a].copy()
        f_new = f[a].copy()
        g_new = g[a].copy()
        pending = np.arange(a.size)
        for _ in range(40):
            if pending.size == 0:
                break
            rows = a[pending]
            trial = np.clip(x[rows] + step[pending, None] * d[pending], lower, upper)
            ft, gt = fun(trial, rows)
            ok = ft <= f[rows] + 1e-4 * np.einsum("sp,sp->s", g[rows], trial - x[rows])
            ok &= np.isfinite(ft)
            acc = pending[ok]
            x_new[acc], f_new[acc], g_new[acc] = trial[ok], ft[ok], gt[ok]
            pending = pending[~ok]
            step[pending] *= 0.5
        stalled = np.zeros(a.size, dtype=bool)
        stalled[pending] = True
        # Full steps accepted at once may be far too short (first steps, ill-conditioned
        # valleys): extend them while the objective keeps falling, as a Wolfe search would.
        grow = np.flatnonzero(~stalled & (step == 1.0) & steepest)
        for _ in range(30):
            if grow.size == 0:
                break
            rows = a[grow]
            step[grow] *= 2.0
            trial = np.clip(x[rows] + step[grow, None] * d[grow], lower, upper)
            ft, gt = fun(trial, rows)
            better = np.isfinite(ft) & (ft < f_new[grow])
            acc = grow[better]
            x_new[acc], f_new[acc], g_new[acc] = trial[better], ft[better], gt[better]
            grow = acc
        sv = x_new - x[a]
        yv = g_new - g[a]
        sy = np.einsum("sp,sp->s", sv, yv)
        slot = it % memory
        good = sy > 1e-12 * np.maximum(np.einsum("sp,sp->s", yv, yv), 1e-300)
        s_hist[a, slot] = np.where(good[:, None], sv, 0.0)
        y_hist[a, slot] = np.where(good[:, None], yv, 0.0)
        rho[a, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[a] = np.where(good, sy / np.maximum(np.einsum("sp,sp->s", yv, yv), 1e-300), gamma[a])
        f_old = f[a]
        x[a], f[a], g[a] = x_new, f_new, g_new
        n_iter[a] += 1
        pg = np.clip(x[a] - g[a], lower, upper) - x[a]  # projected gradient
        done = (f_old - f[a]) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(f[a])), f_scale)
        done &= n_iter[a] >= min_iter  # no verdict from the first steepest-descent steps
        done |= np.abs(pg).max(axis=1) <= gtol
        done |= stalled
        converged[a[done & ~stalled]] = True
        converged[a[stalled & (np.abs(pg).max(axis=1) <= gtol)]] = True
        active = a[~done]
    return BatchResult(x=x, f=f, n_iter=n_iter, converged=converged | (n_iter < max_iter))


def polish(
    objective: Objective,
    x0: np.ndarray,
    bounds: list[tuple[float | None, float | None]],
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, float, bool, str]:
    """Tight scipy L-BFGS-B refinement of one start with the analytic gradient."""
    w = np.ones(objective.log_y.shape) if weights is None else weights

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = objective.value_and_grad(theta[None, :], w)
        return float(f[0]), g[0]

    res = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxcor": 20})
    return res.x, float(res.fun), bool(res.success), str(res.message)
