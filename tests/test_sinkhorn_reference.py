"""otcore's Sinkhorn against references nobody here wrote, and against closed forms.

* balanced problems: OTT-JAX (potentials up to a constant, plan, ``reg_ot_cost``) and POT
  (``sinkhorn_log`` plan, ``sinkhorn2`` transport cost), float64, threshold 1e-12 on
  both sides, with zero weights, ``n != m`` and non-uniform weights;
* unbalanced problems (both sides and one side): the optimal value of
  ``<P,C> + ε KL(P||a⊗b) + ρ_a KL(P1||a) + ρ_b KL(Pᵀ1||b)`` found by minimising the
  primal directly (``_helpers.solve_primal``: L-BFGS then Newton, no Sinkhorn), POT's
  ``sinkhorn_unbalanced`` (``reg_type='kl'``, the same objective), and the fixed-point
  marginals ``P1 = a ∘ exp(-(f - ε log a)/ρ_a)``;
* 1-D OT as ε → 0: sorted matching, with the bound ``0 ≤ <P_ε,C> - W ≤ ε log n``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from _helpers import jax_subset, primal_objective, solve_primal, to_numpy

import otcore as ot

EPS = 0.2
TIGHT = dict(threshold=1e-12, max_iterations=20000)

# (n, m, zero rows of a, zero columns of b, uniform weights)
# (two shapes only: OTT-JAX compiles once per shape)
BALANCED_CASES = {
    "uniform-n<m": (9, 13, (), (), True),
    "zeros-both-n<m": (9, 13, (1, 4), (2,), False),
    "zeros-a-n>m": (13, 9, (0, 12), (), False),
    "zeros-b-n>m": (13, 9, (), (3, 8), False),
}


def make_problem(n, m, zeros_a=(), zeros_b=(), uniform=False, seed=0, d=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + 0.5
    if uniform:
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    else:
        a, b = rng.uniform(0.1, 1.0, n), rng.uniform(0.1, 1.0, m)
    a[list(zeros_a)] = 0.0
    b[list(zeros_b)] = 0.0
    return x, y, a / a.sum(), b / b.sum()


def sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


@functools.cache
def _ott_solver():
    pytest.importorskip("ott")
    import jax
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    @jax.jit
    def solve(x, y, a, b):
        geom = pointcloud.PointCloud(x, y, epsilon=EPS)
        out = sinkhorn.Sinkhorn(**TIGHT)(linear_problem.LinearProblem(geom, a, b))
        return out.f, out.g, out.matrix, out.reg_ot_cost, out.n_iters, out.converged

    return solve


@functools.lru_cache
def ott_solution(case):
    """OTT-JAX's solution (numpy arrays) of BALANCED_CASES[case], float64."""
    import jax.numpy as jnp

    x, y, a, b = make_problem(*BALANCED_CASES[case])
    f, g, P, cost, n_iters, converged = _ott_solver()(*(jnp.asarray(v) for v in (x, y, a, b)))
    assert bool(converged)
    return {
        "f": np.asarray(f),
        "g": np.asarray(g),
        "matrix": np.asarray(P),
        "reg_ot_cost": float(cost),
        "n_iters": int(n_iters),
    }


def assert_potentials_match(f, g, f_ref, g_ref, a, b, atol):
    """f = f_ref + c and g = g_ref - c on the supports; -inf (both) off them."""
    sa, sb = a > 0, b > 0
    np.testing.assert_array_equal(f[~sa], -np.inf)
    np.testing.assert_array_equal(g[~sb], -np.inf)
    np.testing.assert_array_equal(f_ref[~sa], -np.inf)
    c = np.mean(f[sa] - f_ref[sa])
    np.testing.assert_allclose(f[sa] - c, f_ref[sa], rtol=0, atol=atol)
    np.testing.assert_allclose(g[sb] + c, g_ref[sb], rtol=0, atol=atol)


# -- balanced: OTT-JAX ---------------------------------------------------------------------


@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
@pytest.mark.parametrize("case", list(BALANCED_CASES))
def test_balanced_matches_ott(case, lse_mode):
    x, y, a, b = make_problem(*BALANCED_CASES[case])
    ref = ott_solution(case)
    out = ot.solve(ot.PointCloud(x, y, epsilon=EPS), a, b, lse_mode=lse_mode, **TIGHT)
    assert bool(out.converged)
    assert_potentials_match(out.f, out.g, ref["f"], ref["g"], a, b, atol=1e-10)
    np.testing.assert_allclose(out.matrix, ref["matrix"], rtol=0, atol=1e-12)
    assert out.reg_ot_cost == pytest.approx(ref["reg_ot_cost"], abs=1e-12, rel=0)
    # same algorithm, same error criterion (L1 error of the column marginal): same count
    assert int(out.n_iters) == ref["n_iters"]


def test_balanced_matches_ott_on_every_backend(xp):
    case = "zeros-both-n<m"
    x, y, a, b = make_problem(*BALANCED_CASES[case])
    ref = ott_solution(case)
    X, Y, A, B = (xp.to_xp(v) for v in (x, y, a, b))
    out = ot.solve(ot.PointCloud(X, Y, epsilon=EPS), A, B, **TIGHT)
    assert bool(out.converged)
    f, g = xp.to_np(out.f), xp.to_np(out.g)
    assert_potentials_match(f, g, ref["f"], ref["g"], a, b, atol=1e-10)
    np.testing.assert_allclose(xp.to_np(out.matrix), ref["matrix"], rtol=0, atol=1e-12)
    assert float(out.reg_ot_cost) == pytest.approx(ref["reg_ot_cost"], abs=1e-12, rel=0)


def test_default_epsilon_matches_ott():
    pytest.importorskip("ott")
    import jax.numpy as jnp
    from ott.geometry import pointcloud

    x, y, _, _ = make_problem(9, 13)
    ott_eps = float(pointcloud.PointCloud(jnp.asarray(x), jnp.asarray(y)).epsilon)
    assert ot.PointCloud(x, y).epsilon == pytest.approx(ott_eps, rel=1e-14)


# -- balanced: POT -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("case", list(BALANCED_CASES))
def test_balanced_matches_pot(case):
    pot = pytest.importorskip("ot")
    x, y, a, b = make_problem(*BALANCED_CASES[case])
    C = sqdist(x, y)
    # POT's reg is ε and its plan is the same P = exp((f + g - C)/ε) (times nothing else).
    P_ref = pot.sinkhorn(a, b, C, reg=EPS, method="sinkhorn_log", stopThr=1e-13, numItermax=20000)
    W_ref = pot.sinkhorn2(a, b, C, reg=EPS, method="sinkhorn_log", stopThr=1e-13, numItermax=20000)
    out = ot.solve(ot.Geometry(C, epsilon=EPS), a, b, **TIGHT)
    assert bool(out.converged)
    np.testing.assert_allclose(out.matrix, P_ref, rtol=0, atol=1e-11)
    # sinkhorn2 returns the transport cost <P, C> of the entropic plan
    assert out.primal_cost == pytest.approx(float(W_ref), abs=1e-10, rel=0)
    np.testing.assert_array_equal(out.matrix[a == 0], 0.0)
    np.testing.assert_array_equal(out.matrix[:, b == 0], 0.0)


def test_reg_ot_cost_is_the_balanced_primal_value():
    """reg_ot_cost = <P,C> + ε KL(P||a⊗b) at the solution (the documented objective)."""
    x, y, a, b = make_problem(*BALANCED_CASES["zeros-both-n<m"])
    out = ot.solve(ot.PointCloud(x, y, epsilon=EPS), a, b, **TIGHT)
    value = primal_objective(out.matrix, sqdist(x, y), a, b, EPS)
    assert out.reg_ot_cost == pytest.approx(value, abs=1e-12, rel=0)
    assert out.primal_cost == pytest.approx(float(np.sum(out.matrix * sqdist(x, y))), abs=1e-13)
    # ent_reg_cost = <P,C> - ε H(P) with H(P) = -Σ P log P, for a balanced problem
    P = out.matrix[out.matrix > 0]
    assert out.ent_reg_cost == pytest.approx(
        out.primal_cost + EPS * np.sum(P * np.log(P)), abs=1e-12, rel=0
    )


# -- unbalanced: the primal, minimised directly ---------------------------------------------

UNBALANCED_TAUS = [(0.6, 0.8), (0.3, 0.3), (1.0, 0.5), (0.7, 1.0)]
UNB_EPS = 0.4


def rho(tau, eps=UNB_EPS):
    return math.inf if tau == 1.0 else eps * tau / (1.0 - tau)


def unbalanced_data(seed=3, n=4, m=5):
    """Tiny problem with unequal masses (Σa = 1, Σb = 1.7)."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(size=(n, 2)), rng.uniform(size=(m, 2))
    a = rng.uniform(0.2, 1.0, n)
    b = rng.uniform(0.2, 1.0, m)
    return x, y, a / a.sum(), 1.7 * b / b.sum()


@functools.lru_cache
def primal_reference(tau_a, tau_b):
    x, y, a, b = unbalanced_data()
    value, P = solve_primal(sqdist(x, y), a, b, UNB_EPS, rho(tau_a), rho(tau_b))
    return value, P


@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
@pytest.mark.parametrize(("tau_a", "tau_b"), UNBALANCED_TAUS)
def test_unbalanced_reg_ot_cost_is_the_primal_optimum(xp, tau_a, tau_b, lse_mode):
    jax_subset(xp.name, keep=(tau_a, tau_b) == ((0.6, 0.8) if lse_mode else (1.0, 0.5)))
    x, y, a, b = unbalanced_data()
    value, P_ref = primal_reference(tau_a, tau_b)
    X, Y, A, B = (xp.to_xp(v) for v in (x, y, a, b))
    out = ot.solve(
        ot.PointCloud(X, Y, epsilon=UNB_EPS),
        A,
        B,
        tau_a=tau_a,
        tau_b=tau_b,
        lse_mode=lse_mode,
        threshold=1e-13,
        max_iterations=5000,
    )
    assert bool(out.converged)
    assert float(out.reg_ot_cost) == pytest.approx(value, abs=1e-12, rel=0)
    np.testing.assert_allclose(xp.to_np(out.matrix), P_ref, rtol=0, atol=1e-11)
    # and the value of the primal at otcore's own plan is its reg_ot_cost
    P = xp.to_np(out.matrix)
    at_plan = primal_objective(P, sqdist(x, y), a, b, UNB_EPS, rho(tau_a), rho(tau_b))
    assert float(out.reg_ot_cost) == pytest.approx(at_plan, abs=1e-12, rel=0)


@pytest.mark.parametrize(("tau_a", "tau_b"), UNBALANCED_TAUS)
def test_unbalanced_marginals_at_the_fixed_point(xp, tau_a, tau_b):
    """P1 = a∘exp(-(f - ε log a)/ρ_a) and Pᵀ1 = b∘exp(-(g - ε log b)/ρ_b) (= a, b if τ = 1)."""
    jax_subset(xp.name, keep=(tau_a, tau_b) == (0.7, 1.0))
    x, y, a, b = unbalanced_data(seed=5, n=7, m=6)
    X, Y, A, B = (xp.to_xp(v) for v in (x, y, a, b))
    out = ot.solve(
        ot.PointCloud(X, Y, epsilon=UNB_EPS), A, B, tau_a=tau_a, tau_b=tau_b, threshold=1e-13
    )
    assert bool(out.converged)
    f, g, P = (xp.to_np(v) for v in (out.f, out.g, out.matrix))
    for w, h, tau, row_sums, marginal in (
        (a, f, tau_a, P.sum(1), out.marginal(1)),
        (b, g, tau_b, P.sum(0), out.marginal(0)),
    ):
        gamma = w if tau == 1.0 else w * np.exp(-(h - UNB_EPS * np.log(w)) / rho(tau))
        np.testing.assert_allclose(row_sums, gamma, rtol=0, atol=1e-12)
        np.testing.assert_allclose(xp.to_np(marginal), gamma, rtol=0, atol=1e-12)
    assert float(out.transport_mass) == pytest.approx(P.sum(), abs=1e-13, rel=0)


@pytest.mark.parametrize(("tau_a", "tau_b"), UNBALANCED_TAUS)
def test_unbalanced_plan_matches_pot(tau_a, tau_b):
    pot = pytest.importorskip("ot")
    x, y, a, b = unbalanced_data(seed=5, n=7, m=6)
    C = sqdist(x, y)
    P_ref = pot.unbalanced.sinkhorn_unbalanced(
        a,
        b,
        C,
        reg=UNB_EPS,
        reg_m=(rho(tau_a), rho(tau_b)),
        reg_type="kl",  # KL(P || a⊗b): the same objective as otcore's
        method="sinkhorn",
        stopThr=1e-15,
        numItermax=20000,
    )
    out = ot.solve(ot.Geometry(C, epsilon=UNB_EPS), a, b, tau_a=tau_a, tau_b=tau_b, threshold=1e-13)
    assert bool(out.converged)
    np.testing.assert_allclose(out.matrix, P_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("tau_a", "tau_b"), [(1.0, 1.0), *UNBALANCED_TAUS])
def test_zero_weights_equal_the_problem_restricted_to_the_support(xp, tau_a, tau_b):
    jax_subset(xp.name, keep=(tau_a, tau_b) in ((1.0, 1.0), (0.6, 0.8)))
    x, y, a, b = unbalanced_data(seed=7, n=7, m=6)
    a[[0, 4]] = 0.0
    b[[2]] = 0.0
    if tau_a == tau_b == 1.0:
        a, b = a / a.sum(), b / b.sum()
    sa, sb = a > 0, b > 0
    kw = dict(tau_a=tau_a, tau_b=tau_b, threshold=1e-13, max_iterations=5000)
    full = ot.solve(
        ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=UNB_EPS), xp.to_xp(a), xp.to_xp(b), **kw
    )
    sub = ot.solve(ot.PointCloud(x[sa], y[sb], epsilon=UNB_EPS), a[sa], b[sb], **kw)
    assert bool(full.converged) and bool(sub.converged)
    f, g, P = (xp.to_np(v) for v in (full.f, full.g, full.matrix))
    np.testing.assert_array_equal(f[~sa], -np.inf)
    np.testing.assert_array_equal(g[~sb], -np.inf)
    np.testing.assert_array_equal(P[~sa], 0.0)
    np.testing.assert_array_equal(P[:, ~sb], 0.0)
    np.testing.assert_allclose(P[np.ix_(sa, sb)], sub.matrix, rtol=0, atol=1e-13)
    for name in ("reg_ot_cost", "primal_cost", "ent_reg_cost", "dual_cost", "transport_mass"):
        val = float(getattr(full, name))
        assert np.isfinite(val), name
        assert val == pytest.approx(float(getattr(sub, name)), abs=1e-12, rel=0), name
    for axis, support in ((0, sb), (1, sa)):
        marg = xp.to_np(full.marginal(axis))
        assert np.all(np.isfinite(marg))
        np.testing.assert_array_equal(marg[~support], 0.0)


# -- 1-D closed form --------------------------------------------------------------------------


@pytest.mark.parametrize(("eps", "seed"), [(1e-2, 0), (3e-3, 3)])
def test_one_dimensional_closed_form(eps, seed):
    """W = mean (sort(x) - sort(y))² and, for the entropic plan P_ε (a coupling),
    W ≤ <P_ε, C> ≤ <P_ε, C> + ε KL(P_ε||a⊗b) ≤ W + ε KL(P*||a⊗b) = W + ε log n."""
    rng = np.random.default_rng(seed)
    n = 10
    x = rng.uniform(size=(n, 1))
    y = rng.uniform(size=(n, 1)) + 1.0  # W ≈ 1 ≫ ε log n
    W = float(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    out = ot.solve(ot.PointCloud(x, y, epsilon=eps), threshold=1e-10, max_iterations=5000)
    assert bool(out.converged)
    slack = 1e-10 * 9.0  # marginal error (L1) times the largest cost
    assert W - slack <= out.primal_cost <= W + eps * math.log(n)
    assert W - slack <= out.reg_ot_cost <= W + eps * math.log(n) + slack
    assert out.primal_cost < out.reg_ot_cost


def test_one_dimensional_cost_decreases_to_w_with_epsilon():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(10, 1)), rng.uniform(size=(10, 1)) + 1.0
    W = float(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    gaps = [
        float(to_numpy(ot.solve(ot.PointCloud(x, y, epsilon=e), threshold=1e-10).primal_cost)) - W
        for e in (0.1, 0.03, 0.01)
    ]
    assert gaps[0] > gaps[1] > gaps[2] > 0
