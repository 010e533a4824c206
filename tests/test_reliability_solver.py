"""Issue 11 (reliability), the Sinkhorn solver's own cases: 1, 4, 9, 14a and 14b.

Every solve must end finite and ``converged``, or flagged (``converged=False`` /
``diverged=True``, and ``ot.reg_ot_cost`` raises or warns), or raise a clear error up
front. References: closed forms, float64 solves of the same (rounded) inputs and the
unscheduled solve.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_backend

import otcore as ot
from otcore.solvers.output import SinkhornOutput, report

EAGER = ("numpy", "jax", "torch")
DTYPES = [np.float32, np.float64]


def _jax():
    jax = pytest.importorskip("jax")
    return jax, jax.numpy


# -- case 1: kernel mode, tiny positive weight ---------------------------------------------

X1 = np.array([[0.0, 0.0], [0.0, 20.0]])  # C = [[0, 400], [400, 0]]
# underflows the kernel-mode scaling; normal numbers (JAX flushes subnormals like 1e-310
# to zero, which makes them zero weights: a correct result)
TINY = {np.float32: 1e-30, np.float64: 1e-307}


def case_01(xp, dtype):
    x = xp.to_xp(X1, dtype)
    a = xp.to_xp([0.5, 0.5], dtype)
    b = xp.to_xp([1.0, TINY[dtype]], dtype)
    return x, a, b


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_case_01_kernel_mode_tiny_weight_is_flagged(xp, dtype):
    x, a, b = case_01(xp, dtype)
    out = ot.solve(ot.PointCloud(x, x, epsilon=10.0), a, b, lse_mode=False)
    # before the fix: g = [0, -inf] where b > 0, reg_ot_cost = -inf, converged = True
    assert bool(out.diverged)
    assert not bool(out.converged)
    with pytest.raises(ot.NonFiniteIterationError, match=r"kernel mode.*lse_mode=True"):
        ot.reg_ot_cost(x, None, a, b, epsilon=10.0, lse_mode=False)
    # log mode on the same inputs: the closed form P = [[.5, 0], [.5, 0]] costs 200
    value = ot.reg_ot_cost(x, None, a, b, epsilon=10.0, threshold=1e-6)
    assert float(value) == pytest.approx(200.0, rel=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_case_01_kernel_mode_tiny_weight_is_flagged_under_jit(dtype):
    jax, _ = _jax()
    x, a, b = case_01(make_backend("jax"), dtype)

    @jax.jit
    def solve(x, a, b):
        out = ot.solve(ot.PointCloud(x, x, epsilon=10.0), a, b, lse_mode=False)
        return out.converged, out.diverged

    converged, diverged = solve(x, a, b)
    assert bool(diverged) and not bool(converged)


# -- case 4: non-finite results are diverged -----------------------------------------------


def huge_mass(xp, dtype=np.float32):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
    a, b = np.full(5, 1e30 / 5), np.full(4, 1e30 / 4)
    return tuple(xp.to_xp(v, dtype) for v in (x, y, a, b))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_case_04_float32_total_mass_1e30_is_diverged(xp):
    x, y, a, b = huge_mass(xp)
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b)
    # before: reg_ot_cost = inf with converged = diverged = False (only a warning)
    assert bool(out.diverged) and not bool(out.converged)
    with pytest.raises(ot.NonFiniteIterationError, match=r"float32 overflows.*float64"):
        ot.reg_ot_cost(x, y, a, b, epsilon=0.1)
    # float64 holds the same problem: finite and converged
    x, y, a, b = huge_mass(xp, np.float64)
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b)
    assert bool(out.converged) and not bool(out.diverged)
    assert np.isfinite(float(out.reg_ot_cost))


@pytest.mark.parametrize("side", ["a", "b"])
def test_case_04_nan_weights_under_jit_are_diverged(side):
    jax, jnp = _jax()
    rng = np.random.default_rng(5)
    x, y = jnp.asarray(rng.normal(size=(5, 2))), jnp.asarray(rng.normal(size=(4, 2)))
    a, b = np.full(5, 0.2), np.full(4, 0.25)
    (a if side == "a" else b)[1] = np.nan

    @jax.jit
    def solve(a, b):
        out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b)
        return out.reg_ot_cost, out.converged, out.diverged

    _, converged, diverged = solve(jnp.asarray(a), jnp.asarray(b))
    assert bool(diverged) and not bool(converged)  # before: diverged False, cost NaN
    # eagerly the weights are checked up front
    with pytest.raises(ValueError, match=f"{side} contains NaN"):
        ot.solve(ot.PointCloud(x, y, epsilon=0.1), jnp.asarray(a), jnp.asarray(b))


def far_clouds(seed=19):
    """float32 clouds of scale 1e5, unequal masses (Σa ≈ 3.3, Σb ≈ 1.9): with ε=1.5e-4
    the potentials (~1e10) keep no digit at the scale of ε and the plan overflows."""
    rng = np.random.RandomState(seed)
    x = (1e5 * rng.randn(7, 2)).astype(np.float32)
    y = (1e5 * rng.randn(4, 2)).astype(np.float32)
    a = rng.uniform(0.2, 1.0, 7).astype(np.float32)
    b = rng.uniform(0.2, 1.0, 4).astype(np.float32)
    return x, y, a, b


def test_case_04_float32_far_clouds_unequal_masses_are_flagged():
    jax, jnp = _jax()
    x, y, a, b = (jnp.asarray(v) for v in far_clouds())

    @jax.jit
    def solve(x, y, a, b):
        out = ot.solve(ot.PointCloud(x, y, epsilon=1.5e-4), a, b, max_iterations=200)
        return out.reg_ot_cost, out.converged, out.diverged

    cost, converged, diverged = solve(x, y, a, b)
    # before: cost -inf with diverged False (the loop only formed the columns' marginal)
    assert not np.isfinite(float(cost))
    assert bool(diverged) and not bool(converged)
    # eagerly the unequal masses of a balanced problem are refused up front (case 14a)
    with pytest.raises(ValueError, match="same total mass"):
        ot.reg_ot_cost(x, y, a, b, epsilon=1.5e-4)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", EAGER)
def test_case_04_report_raises_on_a_non_finite_cost_with_finite_iterates(name):
    xp = make_backend(name)
    rng = np.random.default_rng(6)
    x, y = (xp.to_xp(rng.normal(size=s), np.float32) for s in ((5, 2), (4, 2)))
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), threshold=1e-5)
    report(out)  # a converged, finite solve passes silently
    # the same flags with potentials whose plan overflows (f + g - C ≫ ε)
    big = SinkhornOutput(
        out.f + 1e3,
        out.g,
        out.prob,
        out.errors,
        out.n_iters,
        out.converged,
        out.diverged,
        out.solver,
    )
    assert not np.isfinite(float(big.reg_ot_cost))
    with pytest.raises(ot.NonFiniteIterationError, match=r"cost is not finite.*float64"):
        report(big)


# -- case 9: unbalanced + ε schedule -------------------------------------------------------


def gaussians(n=100):
    t = np.linspace(0.0, 1.0, n)

    def gauss(mu, s):
        w = np.exp(-((t - mu) ** 2) / (2 * s**2))
        return w / w.sum()

    return (t[:, None] - t[None]) ** 2, gauss(0.3, 0.1), gauss(0.7, 0.05)


@pytest.mark.parametrize("name", EAGER)
def test_case_09_unbalanced_schedule_converges_to_the_unscheduled_potentials(name):
    xp = make_backend(name)
    C, a, b = (xp.to_xp(v) for v in gaussians())
    geom = ot.Geometry(C, epsilon=1e-3)
    kw = {"tau_a": 0.5, "tau_b": 0.5, "threshold": 1e-12, "max_iterations": 5000}
    ref = ot.solve(geom, a, b, **kw)
    assert bool(ref.converged)
    for schedule in [(100.0, 0.9), (10.0, 0.9)]:
        out = ot.solve(geom, a, b, epsilon_schedule=schedule, **kw)
        # before: (100, .9) stopped as diverged at the first check (error inf), and
        # (10, .9) reported an error of 4e103
        assert bool(out.converged) and not bool(out.diverged), schedule
        errors = xp.to_np(out.errors)
        ran = errors[errors >= 0]
        assert np.all(np.isfinite(ran)) and ran.max() < 1.0, (schedule, ran.max())
        np.testing.assert_allclose(xp.to_np(out.f), xp.to_np(ref.f), rtol=0, atol=1e-10)
        np.testing.assert_allclose(xp.to_np(out.g), xp.to_np(ref.g), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", EAGER)
def test_case_09_schedule_reaches_its_target_before_converging(name):
    xp = make_backend(name)
    C, a, b = (xp.to_xp(v) for v in gaussians())
    geom = ot.Geometry(C, epsilon=1e-2)
    # ε_t reaches the target at t = 44 (100 · 0.9^44 < 1 < 100 · 0.9^43): a loose
    # threshold must not stop the loop before
    for tau in (0.5, 1.0):
        out = ot.solve(
            geom, a, b, tau_a=tau, tau_b=tau, threshold=0.5, epsilon_schedule=(100.0, 0.9)
        )
        assert bool(out.converged) and int(out.n_iters) == 50, tau
        # stopped by max_iterations while ε_t is still 100 · 0.9^19 ε: not converged
        out = ot.solve(
            geom,
            a,
            b,
            tau_a=tau,
            tau_b=tau,
            threshold=0.5,
            epsilon_schedule=(100.0, 0.9),
            max_iterations=20,
        )
        assert not bool(out.converged) and not bool(out.diverged), tau
    # balanced + schedule still reaches the unscheduled solution
    ref = ot.solve(geom, a, b, threshold=1e-12, max_iterations=5000)
    out = ot.solve(geom, a, b, threshold=1e-12, max_iterations=5000, epsilon_schedule=(100.0, 0.9))
    assert bool(out.converged)
    assert float(out.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), rel=1e-12)


# -- case 14a: balanced problem with unequal masses ----------------------------------------


def unequal(xp, dtype=np.float64, factor=2.0):
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
    a, b = np.full(5, 0.2), np.full(4, 0.25 * factor)
    return tuple(xp.to_xp(v, dtype) for v in (x, y, a, b))


def test_case_14a_balanced_unequal_masses_raise_up_front(xp):
    x, y, a, b = unequal(xp)
    message = r"sum\(a\) = 1 and sum\(b\) = 2.*threshold=0.001.*Normalise.*tau_a < 1"
    with pytest.raises(ValueError, match=message):
        ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b)  # before: 2000 iterations
    with pytest.raises(ValueError, match=message):
        ot.reg_ot_cost(x, y, a, b, epsilon=0.1)
    # the remedies work: unbalanced, or normalised weights
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b, tau_a=0.9, tau_b=0.9)
    assert bool(out.converged)
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b / 2.0)
    assert bool(out.converged)
    # a fixed number of steps (min_iterations = max_iterations) is a map of any weights
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b, min_iterations=20, max_iterations=20)
    assert int(out.n_iters) == 20 and not bool(out.converged)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_case_14a_gap_within_threshold_or_rounding_is_accepted(dtype):
    xp = make_backend("numpy")
    # a gap of 1e-4 (relative) is below threshold=1e-3: solved, and converged
    x, y, a, b = unequal(xp, dtype, factor=1.0 + 1e-4)
    out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b)
    assert bool(out.converged)
    # a rounding-level gap with a threshold below it: no error (converged=False at most)
    x, y, a, b = unequal(xp, dtype, factor=1.0 + 10 * np.finfo(dtype).eps)
    ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b, threshold=1e-20, max_iterations=20)
    # but a gap above both raises, also with norm_error = 2 (bound gap · max(n, m)^(-1/2))
    x, y, a, b = unequal(xp, dtype, factor=1.01)
    with pytest.raises(ValueError, match="same total mass"):
        ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b, norm_error=2)


def test_case_14a_unequal_masses_under_jit_do_not_converge():
    jax, _ = _jax()
    x, y, a, b = unequal(make_backend("jax"))

    @jax.jit
    def solve(a, b):
        out = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b, max_iterations=50)
        return out.converged, out.diverged

    converged, diverged = solve(a, b)
    assert not bool(converged) and not bool(diverged)


# -- case 14b: the threshold is relative to the mass ---------------------------------------


def heavy(xp, dtype, mass=1e6):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    a, b = rng.uniform(0.5, 1.0, 6), rng.uniform(0.5, 1.0, 5)
    a, b = (mass * a / a.sum()).astype(np.float32), (mass * b / b.sum()).astype(np.float32)
    return tuple(xp.to_xp(v, dtype) for v in (x.astype(np.float32), y.astype(np.float32), a, b))


@pytest.mark.parametrize("name", EAGER)
def test_case_14b_float32_mass_1e6_converges_to_the_float64_answer(name):
    xp = make_backend(name)
    outs = {}
    for dtype in DTYPES:  # the same float32-rounded inputs
        x, y, a, b = heavy(xp, dtype)
        outs[dtype] = ot.solve(ot.PointCloud(x, y, epsilon=0.1), a, b, threshold=1e-5)
        # before: float32 ran to max_iterations (absolute error ~ 1e6 · 1e-7 > threshold)
        assert bool(outs[dtype].converged), dtype
    lo, hi = outs[np.float32], outs[np.float64]
    assert float(lo.reg_ot_cost) == pytest.approx(float(hi.reg_ot_cost), rel=1e-5)
    np.testing.assert_allclose(xp.to_np(lo.matrix) / 1e6, xp.to_np(hi.matrix) / 1e6, atol=1e-5)


def test_case_14b_errors_are_relative_to_the_mass(xp):
    rng = np.random.default_rng(8)
    x, y = xp.to_xp(rng.normal(size=(6, 2))), xp.to_xp(rng.normal(size=(5, 2)))
    a, b = rng.uniform(0.5, 1.0, 6), rng.uniform(0.5, 1.0, 5)
    a, b = a / a.sum(), b / b.sum()
    # balanced: scaling both weights by λ = 2^10 (exact) scales the plan by λ, so the
    # relative errors are unchanged
    for p in (1.0, 2.0):
        errs = []
        for mass in (1.0, 1024.0):
            geom = ot.PointCloud(x, y, epsilon=0.1)
            out = ot.solve(geom, xp.to_xp(mass * a), xp.to_xp(mass * b), norm_error=p)
            assert bool(out.converged)
            errs.append(xp.to_np(out.errors))
        np.testing.assert_allclose(errs[1], errs[0], rtol=1e-9)
    # unbalanced, mass 3: ‖P1 - γ_a‖_p / Σa + ‖Pᵀ1 - γ_b‖_p / Σb after one block, with
    # γ = w exp(-(h - ε log w)/ρ), ρ = ε τ / (1 - τ)
    eps, tau, p = 0.1, 0.8, 2.0
    a3, b3 = 3.0 * a, 3.0 * b
    geom = ot.PointCloud(x, y, epsilon=eps)
    out = ot.solve(
        geom, xp.to_xp(a3), xp.to_xp(b3), tau_a=tau, tau_b=tau, norm_error=p, max_iterations=10
    )
    P, f, g = (xp.to_np(v) for v in (out.matrix, out.f, out.g))
    rho = eps * tau / (1 - tau)
    gamma_a = a3 * np.exp(-(f - eps * np.log(a3)) / rho)
    gamma_b = b3 * np.exp(-(g - eps * np.log(b3)) / rho)
    expected = np.linalg.norm(P.sum(1) - gamma_a, p) / 3.0
    expected += np.linalg.norm(P.sum(0) - gamma_b, p) / 3.0
    assert float(xp.to_np(out.errors)[0]) == pytest.approx(expected, rel=1e-8)
    # probability weights, balanced: the error is the absolute ‖Pᵀ1 - b‖_1, as before
    out = ot.solve(geom, xp.to_xp(a), xp.to_xp(b), max_iterations=10)
    P = xp.to_np(out.matrix)
    assert float(xp.to_np(out.errors)[0]) == pytest.approx(np.abs(P.sum(0) - b).sum(), rel=1e-8)
