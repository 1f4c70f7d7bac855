"""`batched_lbfgs` (scaling/optimize.py): the vectorised projected L-BFGS every fit and bootstrap
runs on. Each row of the batch is its own problem: it must reach its own minimiser, stay put when
it starts there, respect the box, and never accept a point where the objective is not finite."""

from __future__ import annotations

import numpy as np
import pytest

from parcae_scaling.scaling.optimize import batched_lbfgs

# The bootstrap's settings (scaling/fit.py): relative stopping, tight gradient.
TIGHT = {"ftol": 1e-10, "gtol": 1e-12, "f_scale": 0.0}


def _free(p: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(p, -np.inf), np.full(p, np.inf)


def _quadratics(seed: int, s_count: int, p: int):
    """s_count convex quadratics 0.5 (x - c_s)' A_s (x - c_s), eigenvalues in [0.5, 20]; `fun`
    looks each row's A and c up by the row indices it is given, as the bootstrap's weights are."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(s_count, p, p)))[0]
    a = np.einsum("spi,si,sqi->spq", q, rng.uniform(0.5, 20.0, size=(s_count, p)), q)
    c = rng.normal(scale=3.0, size=(s_count, p))

    def fun(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = x - c[idx]
        g = np.einsum("spq,sq->sp", a[idx], d)
        return 0.5 * np.einsum("sp,sp->s", d, g), g

    return fun, c, rng.normal(scale=5.0, size=(s_count, p))


def _rosenbrock(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = x[:, 0], x[:, 1]
    f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)
    return f, g


ROSENBROCK_STARTS = np.array([[-1.2, 1.0], [2.0, 2.0], [-2.0, 3.0], [0.0, 0.0], [1.5, -1.0], [3.0, -2.0]])


def test_each_quadratic_reaches_its_own_minimiser() -> None:
    fun, c, x0 = _quadratics(seed=0, s_count=16, p=5)
    res = batched_lbfgs(fun, x0, *_free(5))
    assert res.x.shape == x0.shape and res.f.shape == res.n_iter.shape == res.converged.shape == (16,)
    assert res.converged.all()
    np.testing.assert_allclose(res.x, c, atol=1e-4)  # default (scipy's) stopping rule
    tight = batched_lbfgs(fun, x0, *_free(5), **TIGHT)
    np.testing.assert_allclose(tight.x, c, atol=1e-8)
    assert np.all(tight.f <= 1e-14)


def test_rosenbrock_reaches_one_one_from_every_start() -> None:
    res = batched_lbfgs(_rosenbrock, ROSENBROCK_STARTS, *_free(2))
    assert res.converged.all() and np.all(res.n_iter < 1000)
    np.testing.assert_allclose(res.x, 1.0, atol=1e-4)
    tight = batched_lbfgs(_rosenbrock, ROSENBROCK_STARTS, *_free(2), **TIGHT)
    np.testing.assert_allclose(tight.x, 1.0, atol=1e-8)


def test_is_deterministic() -> None:
    a = batched_lbfgs(_rosenbrock, ROSENBROCK_STARTS, *_free(2))
    b = batched_lbfgs(_rosenbrock, ROSENBROCK_STARTS, *_free(2))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.n_iter, b.n_iter)


def test_a_start_at_the_minimum_stays_while_the_others_run() -> None:
    fun, c, x0 = _quadratics(seed=1, s_count=6, p=3)
    at_min = np.array([True, False, True, False, False, True])
    x0[at_min] = c[at_min]
    res = batched_lbfgs(fun, x0, *_free(3))
    np.testing.assert_array_equal(res.x[at_min], c[at_min])
    assert np.all(res.f[at_min] == 0.0) and np.all(res.n_iter[at_min] == 1)
    assert np.all(res.n_iter[~at_min] > 1) and res.converged.all()
    np.testing.assert_allclose(res.x[~at_min], c[~at_min], atol=1e-4)

    one = batched_lbfgs(_rosenbrock, np.array([[1.0, 1.0]]), *_free(2))
    np.testing.assert_array_equal(one.x, [[1.0, 1.0]])
    assert one.f[0] == 0.0 and one.n_iter[0] == 1


def _box_problem():
    """8 separable quadratics (so the box minimiser is the clipped minimiser) and a box [-0.5, 0.5]^4
    that most minimisers lie outside; the starts lie outside it too (projected first)."""
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.5, 20.0, size=(8, 4))
    c = rng.normal(scale=2.0, size=(8, 4))

    def fun(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = x - c[idx]
        return 0.5 * (scale[idx] * d * d).sum(axis=1), scale[idx] * d

    return fun, np.clip(c, -0.5, 0.5), np.full(4, -0.5), np.full(4, 0.5), rng.uniform(-3.0, 3.0, size=(8, 4))


def test_bounds_are_never_left() -> None:
    fun, _, lower, upper, x0 = _box_problem()
    for kwargs in ({}, TIGHT):
        res = batched_lbfgs(fun, x0, lower, upper, **kwargs)
        assert np.all(res.x >= lower) and np.all(res.x <= upper) and np.all(np.isfinite(res.f))


@pytest.mark.xfail(strict=True, reason=(
    "projected L-BFGS stops early on a face of the box (rows 3, 5, 7: projected gradient up to 0.26) "
    "and still reports converged=True: the quasi-Newton step ignores the active bounds, so its "
    "projection makes little or no progress (Armijo backtracking exhausted, or a decrease below ftol)"))
def test_a_minimiser_outside_the_box_is_found_on_its_face() -> None:
    fun, want, lower, upper, x0 = _box_problem()
    res = batched_lbfgs(fun, x0, lower, upper, **TIGHT)
    np.testing.assert_allclose(res.x, want, atol=1e-6)


def _walled(calls: list[bool], centre: np.ndarray, radius: float):
    """sum (x - centre)^2 inside the disc |x| <= radius; inf (and a NaN gradient) outside."""

    def fun(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outside = (x * x).sum(axis=1) > radius**2
        calls.append(bool(outside.any()))
        f = np.where(outside, np.inf, ((x - centre) ** 2).sum(axis=1))
        g = np.where(outside[:, None], np.nan, 2 * (x - centre))
        return f, g

    return fun


def test_non_finite_trial_points_are_rejected_not_accepted() -> None:
    """A step into a region where the objective is inf is never taken: the line search backs off
    (and the step extension stops), so the run still reaches the finite minimiser."""
    calls: list[bool] = []
    starts = np.array([[-2.0, -2.0], [2.5, -1.0], [0.0, 2.5], [-2.9, 0.0]])
    res = batched_lbfgs(_walled(calls, np.array([1.0, 1.0]), 3.0), starts, *_free(2))
    assert any(calls), "no trial step reached the inf region: the test does not test anything"
    assert np.all(np.isfinite(res.f)) and np.all(np.isfinite(res.x)) and res.converged.all()
    np.testing.assert_allclose(res.x, 1.0, atol=1e-6)


def test_minimiser_inside_the_inf_region_leaves_a_finite_point_at_its_edge() -> None:
    """The smooth part's minimiser (5, 0) is where the objective is inf: each row stops at a finite
    point on the wall (|x| = 3, not necessarily the closest to (5, 0): steps along the wall are not
    searched), better than its start, never at an inf or NaN."""
    calls: list[bool] = []
    starts = np.array([[0.0, 0.0], [-2.0, 1.0], [1.0, -2.0]])
    fun = _walled(calls, np.array([5.0, 0.0]), 3.0)
    f0, _ = fun(starts, np.arange(3))
    res = batched_lbfgs(fun, starts, *_free(2))
    assert any(calls)
    assert np.all(np.isfinite(res.f)) and np.all(np.isfinite(res.x)) and np.all(res.n_iter < 1000)
    assert np.all(res.f < f0)
    np.testing.assert_array_less(np.linalg.norm(res.x, axis=1), 3.0 + 1e-12)
    np.testing.assert_allclose(np.linalg.norm(res.x, axis=1), 3.0, atol=1e-3)  # stopped at the wall


@pytest.mark.parametrize("p", [1, 7])
def test_dimensions(p: int) -> None:
    fun, c, x0 = _quadratics(seed=3, s_count=3, p=p)
    np.testing.assert_allclose(batched_lbfgs(fun, x0, *_free(p), **TIGHT).x, c, atol=1e-8)
