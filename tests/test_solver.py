"""The Sinkhorn solver's options and outputs, on every backend.

Solver variants (kernel mode, momentum, parallel updates, ε schedule) must reach the same
fixed point as the plain log-domain iteration; batched problems must equal separate
solves; zero weights must give ``-inf`` potentials and exact zeros, never NaN; the
convergence record (``errors``, ``n_iters``, ``converged``, ``diverged``) must say what
happened, and the convenience function must warn or raise accordingly.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
from _helpers import jax_subset, make_backend, to_numpy

import otcore as ot

N, M = 8, 6


def data(seed=0, n=N, m=M, d=2, zeros_a=(), zeros_b=()):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(size=(n, d)), rng.uniform(size=(m, d))
    a, b = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, m)
    a[list(zeros_a)] = 0.0
    b[list(zeros_b)] = 0.0
    return x, y, a / a.sum(), b / b.sum()


def solve_xp(xp, arrays, epsilon=0.1, **kw):
    x, y, a, b = (xp.to_xp(v) for v in arrays)
    return ot.solve(ot.PointCloud(x, y, epsilon=epsilon), a, b, **kw)


def assert_same_solution(xp, out, ref, atol, a=None, b=None):
    """Same potentials (on the supports), same plan, same reg_ot_cost."""
    f, g = xp.to_np(out.f), xp.to_np(ref.f)
    sa = np.isfinite(g)
    np.testing.assert_array_equal(np.isfinite(f), sa)
    np.testing.assert_allclose(f[sa], g[sa], rtol=0, atol=atol, err_msg="f")
    f, g = xp.to_np(out.g), xp.to_np(ref.g)
    sb = np.isfinite(g)
    np.testing.assert_array_equal(np.isfinite(f), sb)
    np.testing.assert_allclose(f[sb], g[sb], rtol=0, atol=atol, err_msg="g")
    np.testing.assert_allclose(
        xp.to_np(out.matrix), xp.to_np(ref.matrix), rtol=0, atol=atol, err_msg="plan"
    )
    assert float(out.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), abs=atol, rel=0)


TAUS = [(1.0, 1.0), (0.8, 0.9), (1.0, 0.7)]

# -- variants reach the same fixed point ------------------------------------------------------


@pytest.mark.parametrize(("tau_a", "tau_b"), TAUS)
def test_kernel_mode_equals_log_mode(xp, tau_a, tau_b):
    jax_subset(xp.name, keep=(tau_a, tau_b) == (0.8, 0.9))
    arrays = data(zeros_a=(2,))
    kw = dict(tau_a=tau_a, tau_b=tau_b, threshold=1e-12, epsilon=0.2)
    lse = solve_xp(xp, arrays, lse_mode=True, **kw)
    ker = solve_xp(xp, arrays, lse_mode=False, **kw)
    assert bool(lse.converged) and bool(ker.converged)
    # f, g to ~ε·threshold/min(weight); the potentials here are O(1)
    assert_same_solution(xp, ker, lse, atol=1e-11)


VARIANTS = {
    "momentum": dict(momentum=1.3),
    "parallel+momentum": dict(momentum=0.7, parallel_dual_updates=True),
    "parallel": dict(parallel_dual_updates=True),
}


@pytest.mark.parametrize(
    ("variant", "tau_a", "tau_b"),
    [
        ("momentum", 1.0, 1.0),
        ("momentum", 0.8, 0.9),
        ("parallel+momentum", 1.0, 1.0),
        ("parallel+momentum", 0.8, 0.9),
        ("parallel", 0.8, 0.9),
    ],
)
@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
def test_momentum_and_parallel_updates_reach_the_same_solution(xp, variant, lse_mode, tau_a, tau_b):
    jax_subset(xp.name, keep=lse_mode != (tau_a == 1.0))
    arrays = data(seed=1)
    kw = dict(tau_a=tau_a, tau_b=tau_b, threshold=1e-12, lse_mode=lse_mode)
    ref = solve_xp(xp, arrays, **kw)
    out = solve_xp(xp, arrays, max_iterations=1000, **VARIANTS[variant], **kw)
    assert bool(ref.converged) and bool(out.converged)
    if tau_a == tau_b == 1.0:  # balanced potentials are defined up to (c, -c): compare P
        np.testing.assert_allclose(xp.to_np(out.matrix), xp.to_np(ref.matrix), rtol=0, atol=1e-11)
        assert float(out.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), abs=1e-11)
    else:
        assert_same_solution(xp, out, ref, atol=1e-10)


@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
def test_parallel_updates_alone_converge_on_a_balanced_problem(lse_mode):
    arrays = data(seed=1)
    kw = dict(threshold=1e-12, lse_mode=lse_mode)
    ref = solve_xp(make_backend("numpy"), arrays, **kw)
    out = solve_xp(
        make_backend("numpy"), arrays, max_iterations=1000, parallel_dual_updates=True, **kw
    )
    assert bool(out.converged)
    np.testing.assert_allclose(out.matrix, ref.matrix, rtol=0, atol=1e-11)


def test_momentum_changes_the_iteration(xp):
    """Over-relaxation is not a no-op: it reaches the threshold in fewer iterations here."""
    arrays = data(seed=1)
    plain = solve_xp(xp, arrays, threshold=1e-10, inner_iterations=1, epsilon=0.02)
    fast = solve_xp(xp, arrays, threshold=1e-10, inner_iterations=1, epsilon=0.02, momentum=1.5)
    assert int(fast.n_iters) < int(plain.n_iters)


@pytest.mark.parametrize(
    "schedule", [ot.EpsilonSchedule(init=20.0, decay=0.8), (5.0, 0.95)], ids=["obj", "tuple"]
)
@pytest.mark.parametrize(("tau_a", "tau_b"), [(1.0, 1.0), (0.8, 0.9)])
def test_epsilon_schedule_reaches_the_same_solution(xp, schedule, tau_a, tau_b):
    jax_subset(xp.name, keep=isinstance(schedule, tuple) == (tau_a == 1.0))
    arrays = data(seed=2, zeros_b=(1,))
    kw = dict(tau_a=tau_a, tau_b=tau_b, threshold=1e-12, epsilon=0.05, max_iterations=1000)
    ref = solve_xp(xp, arrays, **kw)
    out = solve_xp(xp, arrays, epsilon_schedule=schedule, **kw)
    assert bool(ref.converged) and bool(out.converged)
    np.testing.assert_allclose(xp.to_np(out.matrix), xp.to_np(ref.matrix), rtol=0, atol=1e-11)
    assert float(out.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), abs=1e-11)


def test_epsilon_schedule_factors(xp):
    s = ot.EpsilonSchedule(init=10.0, decay=0.5)
    expected = [10.0, 5.0, 2.5, 1.25, 1.0, 1.0]
    assert [s.factor(t) for t in (0, 1, 2, 3, 4, 10)] == expected
    assert ot.EpsilonSchedule(init=1.0, decay=1.0).factor(7) == 1.0
    # on an integer array (the loop counter inside the solver): same values, float64 kept
    t = xp.to_xp(np.asarray([0, 1, 2, 3, 4, 10]))
    ns = array_api_compat.array_namespace(t)
    f64 = xp.to_xp(np.zeros(1)).dtype
    value = s.factor(t, xp=ns, dtype=f64)
    assert value.dtype == f64
    np.testing.assert_allclose(xp.to_np(value), expected, rtol=1e-15, atol=0)


def test_epsilon_schedule_is_really_used():
    """With few iterations the schedule must give a different (not yet converged) iterate."""
    arrays = data(seed=2)
    kw = dict(threshold=0.0, max_iterations=5, inner_iterations=5, epsilon=0.05)
    plain = solve_xp(make_backend("numpy"), arrays, **kw)
    sched = solve_xp(make_backend("numpy"), arrays, epsilon_schedule=(50.0, 0.9), **kw)
    assert np.max(np.abs(plain.f - sched.f)) > 1e-3


def test_warm_start_from_the_solution_stops_after_one_block(xp):
    arrays = data(seed=3)
    ref = solve_xp(xp, arrays, threshold=1e-12)
    assert int(ref.n_iters) > 10
    out = solve_xp(xp, arrays, threshold=1e-12, init=(ref.f, ref.g))
    assert int(out.n_iters) == 10
    # ten more iterations from a point converged to 1e-12 move P by about that much
    np.testing.assert_allclose(xp.to_np(out.matrix), xp.to_np(ref.matrix), rtol=0, atol=1e-12)


def test_min_iterations_is_respected(xp):
    arrays = data(seed=3)
    ref = solve_xp(xp, arrays, threshold=1e-3)
    assert int(ref.n_iters) < 100
    out = solve_xp(xp, arrays, threshold=1e-3, min_iterations=100)
    assert int(out.n_iters) == 100
    errs = xp.to_np(out.errors)
    assert np.all(errs[:10] >= 0) and np.all(errs[10:] == -1)


# -- batches ---------------------------------------------------------------------------------

B = 3


def test_batched_weights_over_one_geometry_equal_separate_solves(xp):
    rng = np.random.default_rng(4)
    x, y = rng.uniform(size=(N, 2)), rng.uniform(size=(M, 2))
    a = rng.uniform(0.1, 1.0, (B, N))
    a[1, 3] = 0.0
    a /= a.sum(-1, keepdims=True)
    b = rng.uniform(0.1, 1.0, M)
    b /= b.sum()
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=0.1)
    fixed = dict(threshold=0.0, max_iterations=150)  # same iteration count for all
    out = ot.solve(geom, xp.to_xp(a), xp.to_xp(b), **fixed)
    assert tuple(out.f.shape) == (B, N) and tuple(out.g.shape) == (B, M)
    assert tuple(out.matrix.shape) == (B, N, M)
    assert tuple(out.errors.shape) == (B, 15)
    assert tuple(out.converged.shape) == (B,)
    assert tuple(out.reg_ot_cost.shape) == (B,)
    f, g, cost, P = (xp.to_np(v) for v in (out.f, out.g, out.reg_ot_cost, out.matrix))
    for i in range(B):
        one = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a[i], b, **fixed)
        np.testing.assert_allclose(f[i], one.f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g[i], one.g, rtol=0, atol=1e-12)
        np.testing.assert_allclose(P[i], one.matrix, rtol=0, atol=1e-13)
        assert cost[i] == pytest.approx(float(one.reg_ot_cost), abs=1e-13)


def test_batched_point_clouds_equal_separate_solves(xp):
    rng = np.random.default_rng(5)
    x, y = rng.uniform(size=(B, N, 2)), rng.uniform(size=(B, M, 2))
    x[1] *= 3.0  # problems of different difficulty
    out = ot.solve(ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=0.1), threshold=1e-11)
    assert tuple(out.errors.shape) == (B, 200)
    assert tuple(out.converged.shape) == (B,)
    assert np.all(xp.to_np(out.converged))
    f, cost = xp.to_np(out.f), xp.to_np(out.reg_ot_cost)
    iters = []
    for i in range(B):
        one = ot.solve(ot.PointCloud(x[i], y[i], epsilon=0.1), threshold=1e-11)
        iters.append(int(one.n_iters))
        # the batch runs until its slowest member converges: the others iterate further,
        # which moves f, g by at most the convergence tolerance
        c = np.mean(f[i] - one.f)
        np.testing.assert_allclose(f[i] - c, one.f, rtol=0, atol=1e-9)
        assert cost[i] == pytest.approx(float(one.reg_ot_cost), abs=1e-11)
    assert int(out.n_iters) == max(iters)
    # per-problem error histories: the slowest problem's is the longest
    errs = xp.to_np(out.errors)
    assert np.all(errs[:, : max(iters) // 10] >= 0)
    assert np.all(errs[:, max(iters) // 10 :] == -1)


def test_batched_point_clouds_with_fixed_iterations_equal_separate_solves(xp):
    rng = np.random.default_rng(6)
    x, y = rng.uniform(size=(B, N, 2)), rng.uniform(size=(M, 2))  # y shared (broadcast)
    fixed = dict(threshold=0.0, max_iterations=100, tau_b=0.9)
    out = ot.solve(ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=0.1), **fixed)
    for i in range(B):
        one = ot.solve(ot.PointCloud(x[i], y, epsilon=0.1), **fixed)
        np.testing.assert_allclose(xp.to_np(out.f)[i], one.f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(xp.to_np(out.g)[i], one.g, rtol=0, atol=1e-12)
        assert float(xp.to_np(out.reg_ot_cost)[i]) == pytest.approx(
            float(one.reg_ot_cost), abs=1e-13
        )


def test_batched_epsilon_default_is_per_problem(xp):
    rng = np.random.default_rng(7)
    x, y = rng.uniform(size=(B, N, 2)), rng.uniform(size=(B, M, 2))
    x[2] *= 4.0
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y))
    eps = xp.to_np(geom.epsilon)
    assert eps.shape == (B,)
    out = ot.solve(geom, threshold=1e-10)
    for i in range(B):
        one = ot.solve(ot.PointCloud(x[i], y[i]), threshold=1e-10)
        assert eps[i] == pytest.approx(float(one.geom.epsilon), rel=1e-13)
        np.testing.assert_allclose(xp.to_np(out.matrix)[i], one.matrix, rtol=0, atol=1e-10)


# -- zero weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
@pytest.mark.parametrize(("tau_a", "tau_b"), TAUS)
def test_zero_weights_give_exact_zeros_and_no_nan(xp, lse_mode, tau_a, tau_b):
    jax_subset(xp.name, keep=lse_mode != (tau_a == 1.0 and tau_b == 1.0))
    za, zb = (0, 5), (3,)
    arrays = data(seed=8, zeros_a=za, zeros_b=zb)
    out = solve_xp(xp, arrays, tau_a=tau_a, tau_b=tau_b, lse_mode=lse_mode, threshold=1e-10)
    assert bool(out.converged)
    f, g, P = (xp.to_np(v) for v in (out.f, out.g, out.matrix))
    assert np.all(f[list(za)] == -np.inf) and np.all(np.isfinite(np.delete(f, za)))
    assert np.all(g[list(zb)] == -np.inf) and np.all(np.isfinite(np.delete(g, zb)))
    assert not np.any(np.isnan(P))
    np.testing.assert_array_equal(P[list(za)], 0.0)
    np.testing.assert_array_equal(P[:, list(zb)], 0.0)
    assert np.all(np.delete(np.delete(P, za, 0), zb, 1) > 0)
    for name in ("reg_ot_cost", "primal_cost", "dual_cost", "ent_reg_cost", "transport_mass"):
        assert np.isfinite(float(getattr(out, name))), name
    for axis, zeros in ((0, zb), (1, za)):
        marg = xp.to_np(out.marginal(axis))
        assert np.all(np.isfinite(marg))
        np.testing.assert_array_equal(marg[list(zeros)], 0.0)
    ones_n = xp.to_xp(np.ones(N))
    assert np.all(np.isfinite(xp.to_np(out.apply(ones_n, axis=0))))
    assert np.all(np.isfinite(xp.to_np(out.errors)))


# -- convergence record ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_iterations", "inner", "expected"), [(30, 10, 30), (25, 10, 30), (7, 1, 7)]
)
def test_not_converged_runs_to_max_iterations(xp, max_iterations, inner, expected):
    arrays = data(seed=9)
    out = solve_xp(
        xp,
        arrays,
        epsilon=0.01,
        threshold=1e-12,
        max_iterations=max_iterations,
        inner_iterations=inner,
    )
    assert not bool(out.converged)
    assert not bool(out.diverged)
    assert int(out.n_iters) == expected
    errs = xp.to_np(out.errors)
    assert errs.shape == (math.ceil(max_iterations / inner),)
    assert np.all(errs > 1e-12)  # every block ran and none met the threshold


def test_errors_are_minus_one_after_the_stop_and_record_the_marginal_error(xp):
    arrays = data(seed=10)
    for norm_error in (1, 2):
        out = solve_xp(xp, arrays, threshold=1e-6, norm_error=norm_error)
        assert bool(out.converged)
        k = int(out.n_iters) // 10
        errs = xp.to_np(out.errors)
        assert errs.shape == (200,)
        assert np.all(errs[k:] == -1.0)
        assert np.all(errs[: k - 1] > 1e-6) and 0 <= errs[k - 1] <= 1e-6
        # the last error is the ℓp distance of the column marginal to b (balanced, g then f)
        col = xp.to_np(out.matrix).sum(0)
        expected = np.linalg.norm(col - arrays[3], ord=norm_error)
        assert errs[k - 1] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_reg_ot_cost_warns_when_not_converged(xp):
    x, y, _, _ = data(seed=9)
    with pytest.warns(ot.ConvergenceWarning, match="max_iterations=20"):
        cost = ot.reg_ot_cost(
            xp.to_xp(x), xp.to_xp(y), epsilon=0.01, max_iterations=20, threshold=1e-12
        )
    assert np.isfinite(float(cost))


def test_reg_ot_cost_does_not_warn_when_converged(xp):
    x, y, _, _ = data(seed=9)
    # pyproject turns ConvergenceWarning into an error: this would fail if it warned
    cost = ot.reg_ot_cost(xp.to_xp(x), xp.to_xp(y), epsilon=0.1, threshold=1e-8)
    ref = ot.solve(ot.PointCloud(x, y, epsilon=0.1), threshold=1e-8)
    assert float(cost) == pytest.approx(float(ref.reg_ot_cost), abs=1e-14)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kernel_mode_underflow_is_reported_as_diverged(xp):
    rng = np.random.default_rng(11)
    x, y = rng.uniform(size=(N, 2)), rng.uniform(size=(M, 2)) + 1.0  # costs ~ 1..5
    X, Y = xp.to_xp(x), xp.to_xp(y)
    out = ot.solve(ot.PointCloud(X, Y, epsilon=1e-4), lse_mode=False, threshold=1e-9)
    assert bool(out.diverged)
    assert not bool(out.converged)
    assert int(out.n_iters) == 10  # stopped at the first check
    errs = xp.to_np(out.errors)
    assert not np.isfinite(errs[0]) and np.all(errs[1:] == -1)
    with pytest.raises(ot.NonFiniteIterationError, match="lse_mode=True"):
        ot.reg_ot_cost(X, Y, epsilon=1e-4, lse_mode=False)
    # the log-domain solver handles the same problem
    out = ot.solve(ot.PointCloud(X, Y, epsilon=1e-4), threshold=1e-9, max_iterations=100)
    assert not bool(out.diverged)
    assert np.isfinite(float(out.reg_ot_cost))


def test_diverged_is_false_for_a_normal_solve(xp):
    out = solve_xp(xp, data(seed=12), threshold=1e-8)
    assert not bool(out.diverged) and bool(out.converged)
    assert out.converged.dtype == xp.to_xp(np.asarray(True)).dtype
    assert to_numpy(out.n_iters) % 10 == 0
