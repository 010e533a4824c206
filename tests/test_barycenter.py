"""Fixed-support barycenters: references (POT, OTT-JAX, closed forms), modes, backends,
gradients (manual NumPy rules vs autodiff vs finite differences) and errors."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import to_numpy

import otcore as ot


def _problem(n=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(size=n))
    A = rng.uniform(0.1, 1.0, size=(n, k))
    A /= A.sum(0)
    C = (t[:, None] - t[None, :]) ** 2
    w = rng.uniform(0.2, 1.0, size=k)
    return A, C, w / w.sum()


def _gaussians(n=200, means=(0.25, 0.7), stds=(0.05, 0.1)):
    t = np.linspace(0.0, 1.0, n)
    A = np.stack([np.exp(-((t - m) ** 2) / (2 * s * s)) for m, s in zip(means, stds)], 1)
    return t, A / A.sum(0), (t[:, None] - t[None, :]) ** 2


# -- references -------------------------------------------------------------------------
@pytest.mark.parametrize("lse_mode", [True, False])
def test_matches_pot_barycenter(lse_mode):
    pot = pytest.importorskip("ot")
    A, C, w = _problem()
    b = ot.barycenter(A, C, w, epsilon=0.02, lse_mode=lse_mode, threshold=1e-13)
    ref_log = pot.bregman.barycenter(
        A, C, 0.02, weights=w, method="sinkhorn_log", stopThr=1e-15, numItermax=20000
    )
    np.testing.assert_allclose(b, ref_log, rtol=0, atol=1e-12)
    # POT's kernel method keeps the weighted mean of log v from its unweighted start:
    # it agrees only for uniform weights (see test_is_the_minimiser)
    u = np.full(3, 1 / 3)
    b = ot.barycenter(A, C, u, epsilon=0.02, lse_mode=lse_mode, threshold=1e-13)
    ref = pot.bregman.barycenter(A, C, 0.02, weights=u, stopThr=1e-15, numItermax=20000)
    np.testing.assert_allclose(b, ref, rtol=0, atol=1e-12)


def test_is_the_minimiser():
    # b minimises Σ_s w_s (<P_s, C> − ε H(P_s)) over the simplex: every tangent direction
    # has zero slope (POT's kernel barycenter_sinkhorn fails this for non-uniform weights)
    A, C, w = _problem()
    b = ot.barycenter(A, C, w, epsilon=0.02, threshold=1e-13)

    def objective(bb):
        geom = ot.Geometry(C, epsilon=0.02)
        outs = [ot.solve(geom, A[:, s], bb, threshold=1e-14) for s in range(3)]
        return sum(w[s] * float(o.ent_reg_cost) for s, o in enumerate(outs))

    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(3):
        d = rng.normal(size=12)
        d -= d.mean()
        slope = (objective(b + h * d) - objective(b - h * d)) / (2 * h)
        assert abs(slope) < 1e-6  # POT's kernel barycenter: slopes of 1e-3 here


@pytest.mark.parametrize("lse_mode", [True, False])
def test_debiased_matches_pot_and_log_equals_kernel(lse_mode):
    pot = pytest.importorskip("ot")
    A, C, w = _problem()
    kw = dict(epsilon=0.003, debiased=True, threshold=1e-11, max_iterations=20000)
    out = ot.barycenter(A, C, w, lse_mode=lse_mode, return_output=True, **kw)
    assert bool(out.converged)
    ref = pot.bregman.barycenter_debiased(
        A, C, 0.003, weights=w, stopThr=0, numItermax=20000, warn=False
    )
    np.testing.assert_allclose(out.histogram, ref, rtol=0, atol=1e-8)
    other = ot.barycenter(A, C, w, lse_mode=not lse_mode, **kw)
    # each is within the threshold (ℓ1) of the limit; rounding may stop them a block apart
    np.testing.assert_allclose(out.histogram, other, rtol=0, atol=2e-11)
    # the debiasing potential solves the self-transport of b: e^η ∘ K e^η = b
    eta = out.debiasing / 0.003
    K = np.exp(-C / 0.003)
    np.testing.assert_allclose(np.exp(eta) * (K @ np.exp(eta)), out.histogram, atol=1e-10)


def test_matches_ott_fixed_barycenter():
    pytest.importorskip("ott")
    import jax.numpy as jnp
    from ott.geometry import geometry
    from ott.problems.linear.barycenter_problem import FixedBarycenterProblem
    from ott.solvers.linear.discrete_barycenter import FixedBarycenter

    A, C, w = _problem()
    geom = geometry.Geometry(cost_matrix=jnp.asarray(C), epsilon=0.02)
    prob = FixedBarycenterProblem(geom, jnp.asarray(A.T), jnp.asarray(w))
    ref = FixedBarycenter(threshold=1e-12, max_iterations=20000)(prob).histogram
    b = ot.barycenter(A, C, w, epsilon=0.02, threshold=1e-13)
    np.testing.assert_allclose(b, np.asarray(ref), rtol=0, atol=1e-10)


def test_one_dimensional_gaussians_closed_form():
    # W2 barycenter of N(m1, s1), N(m2, s2) with weights (w, 1-w): N(w m1 + ..., w s1 + ...)
    t, A, C = _gaussians()
    w = np.array([0.3, 0.7])
    # debiasing at ε = 8 h² converges slowly: 1e-7 (ℓ1 to the limit) needs > 5000 iterations
    b = ot.barycenter(A, C, w, epsilon=2e-4, debiased=True, threshold=1e-5, max_iterations=5000)
    mean = t @ b
    std = np.sqrt(((t - mean) ** 2) @ b)
    assert abs(mean - (0.3 * 0.25 + 0.7 * 0.7)) < 1e-3
    assert abs(std - (0.3 * 0.05 + 0.7 * 0.1)) < 2e-3
    # the biased barycenter is blurred: wider than the W2 barycenter
    blurred = ot.barycenter(A, C, w, epsilon=2e-3, threshold=1e-9)
    assert np.sqrt(((t - t @ blurred) ** 2) @ blurred) > std + 5e-3


def test_batched_weights_equal_one_by_one():
    A, C, _ = _problem()
    W = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    out = ot.barycenter(A, C, W, epsilon=0.05, threshold=1e-12, return_output=True)
    assert out.histogram.shape == (3, 12) and out.f.shape == (3, 3, 12)
    for i in range(3):
        one = ot.barycenter(A, C, W[i], epsilon=0.05, threshold=1e-12)
        np.testing.assert_allclose(out.histogram[i], one, atol=1e-11)


def test_rectangular_cost_barycenter_on_other_support():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(10, 2))
    y = rng.uniform(size=(7, 2))
    A = rng.uniform(0.1, 1, size=(10, 2))
    A /= A.sum(0)
    geom = ot.PointCloud(x, y, epsilon=0.05)
    out = ot.barycenter(A, geom, threshold=1e-12, return_output=True)
    assert out.histogram.shape == (7,)
    # each plan has rows A[:, s] and columns b
    for s in range(2):
        P = np.exp((out.f[s][:, None] + out.g[s][None, :] - geom.cost_matrix) / 0.05)
        np.testing.assert_allclose(P.sum(1), A[:, s], atol=1e-11)
        np.testing.assert_allclose(P.sum(0), out.histogram, atol=1e-11)


def test_zero_entries_and_output_fields():
    A, C, w = _problem()
    A[:3, 0] = 0.0
    A /= A.sum(0)
    out = ot.barycenter(A, C, w, epsilon=0.05, threshold=1e-10, return_output=True)
    assert bool(out.converged) and not bool(out.diverged)
    assert np.all(np.isneginf(out.f[0, :3])) and np.all(np.isfinite(out.histogram))
    assert out.n_iters % 10 == 0 and out.errors.shape == (200,)
    assert out.debiasing is None and out.epsilon == 0.05
    assert abs(out.histogram.sum() - 1.0) < 1e-9


def test_not_converged_is_reported():
    A, C, w = _problem()
    out = ot.barycenter(A, C, w, epsilon=0.01, max_iterations=10, return_output=True)
    assert not bool(out.converged) and out.n_iters == 10


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow notices
def test_kernel_mode_underflow_is_reported_as_diverged():
    A, C, w = _problem()
    out = ot.barycenter(A, C * 1e4, w, epsilon=1e-3, lse_mode=False, return_output=True)
    assert bool(out.diverged) and not bool(out.converged)


# -- backends -------------------------------------------------------------------------------
# the debiased barycenter of _problem() converges sublinearly (it does not reach 1e-9 in
# 3000 iterations): the histogram form warns; the backends still agree iterate by iterate
@pytest.mark.filterwarnings("ignore::otcore.ConvergenceWarning")
@pytest.mark.parametrize("debiased", [False, True])
def test_backends_agree(xp, debiased):
    A, C, w = _problem()
    kw = dict(epsilon=0.01, debiased=debiased, threshold=1e-9, max_iterations=3000)
    ref = ot.barycenter(A, C, w, **kw)
    b = ot.barycenter(xp.to_xp(A), xp.to_xp(C), xp.to_xp(w), **kw)
    assert isinstance(b, xp.array_type)
    np.testing.assert_allclose(to_numpy(b), ref, rtol=0, atol=1e-12)


def test_float32_keeps_dtype_and_device(xp):
    A, C, w = _problem()
    b = ot.barycenter(
        xp.to_xp(A, np.float32), xp.to_xp(C, np.float32), xp.to_xp(w, np.float32), epsilon=0.05
    )
    assert b.dtype == xp.float32
    ref = ot.barycenter(A, C, w, epsilon=0.05)
    np.testing.assert_allclose(to_numpy(b), ref, atol=2e-5)


def test_jax_jit_and_vmap():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    A, C, _ = _problem()
    W = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    f = jax.jit(lambda A, C, w: ot.barycenter(A, C, w, epsilon=0.05, threshold=1e-10))
    batched = jax.vmap(f, in_axes=(None, None, 0))(jnp.asarray(A), jnp.asarray(C), jnp.asarray(W))
    ref = ot.barycenter(A, C, W, epsilon=0.05, threshold=1e-10)
    np.testing.assert_allclose(np.asarray(batched), ref, atol=1e-10)


# -- gradients ------------------------------------------------------------------------------
_COT = np.random.default_rng(7).normal(size=12)  # fixed cotangent, independent of inputs


def _numpy_vjp(A, C, w, **kw):
    b, pull = ot.vjp(ot.barycenter, A, C, w, **kw)
    return b, pull(_COT)


@pytest.mark.filterwarnings("ignore::otcore.ConvergenceWarning")  # debiased: 2000 iterations
@pytest.mark.parametrize("lse_mode", [True, False])
@pytest.mark.parametrize("debiased", [False, True])
def test_manual_gradients_match_jax_and_torch(lse_mode, debiased):
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jnp = jax.numpy
    A, C, w = _problem()
    kw = dict(epsilon=0.01, lse_mode=lse_mode, debiased=debiased, threshold=1e-6)
    _, grads = _numpy_vjp(A, C, w, **kw)
    _, pull = jax.vjp(lambda *v: ot.barycenter(*v, **kw), *map(jnp.asarray, (A, C, w)))
    jgrads = pull(jnp.asarray(_COT))
    leaves = [torch.tensor(v, requires_grad=True) for v in (A, C, w)]
    tgrads = torch.autograd.grad(ot.barycenter(*leaves, **kw), leaves, torch.tensor(_COT))
    for g, jg, tg in zip(grads, jgrads, tgrads):
        scale = np.abs(g).max()
        np.testing.assert_allclose(g, np.asarray(jg), rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(g, tg.numpy(), rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("debiased", [False, True])
def test_unrolled_gradients_match_finite_differences(debiased):
    # fixed iteration count: FD of the same map the reverse recursion differentiates
    A, C, w = _problem()
    kw = dict(epsilon=0.02, debiased=debiased, threshold=0.0, min_iterations=30, max_iterations=30)
    _, (gA, gC, gw) = _numpy_vjp(A, C, w, **kw)

    def loss(A_, C_, w_):
        return _COT @ ot.barycenter(A_, C_, w_, **kw)

    rng = np.random.default_rng(3)
    h = 1e-6
    dA = rng.normal(size=A.shape)
    dA -= dA.mean(0)  # columns keep their mass
    dw = rng.normal(size=w.shape)
    dw -= dw.mean()  # stays on the simplex
    dC = rng.normal(size=C.shape)
    for grad, (i, d) in zip((gA, gC, gw), enumerate((dA, dC, dw))):
        plus = [A, C, w]
        minus = [A, C, w]
        plus[i] = plus[i] + h * d
        minus[i] = minus[i] - h * d
        fd = (loss(*plus) - loss(*minus)) / (2 * h)
        assert abs(np.sum(grad * d) - fd) <= 1e-7 * max(1.0, abs(fd)), (i, np.sum(grad * d), fd)


def test_implicit_gradients_equal_unrolled_at_convergence(xp):
    if xp.name == "array_api_strict":
        pytest.skip("same manual rule as numpy")
    A, C, w = _problem()
    kw = dict(epsilon=0.02, threshold=1e-13, max_iterations=5000)
    _, unrolled = _numpy_vjp(A, C, w, **kw)
    args = [xp.to_xp(v) for v in (A, C, w)]
    _, pull = ot.vjp(ot.barycenter, *args, implicit_diff=ot.ImplicitDiff(), **kw)
    implicit = pull(xp.to_xp(_COT))
    for g, gi in zip(unrolled, implicit):
        np.testing.assert_allclose(to_numpy(gi), g, rtol=0, atol=1e-9 * np.abs(g).max())


def test_gradient_wrt_weights_only_and_none_for_default_weights():
    A, C, w = _problem()
    _, pull = ot.vjp(ot.barycenter, A, C, epsilon=0.05)
    gA, gC = pull(_COT)
    assert gA.shape == A.shape and gC.shape == C.shape
    geom = ot.Geometry(C, epsilon=0.05)
    _, pull = ot.vjp(ot.barycenter, A, geom, w)
    gA, g_geom, gw = pull(_COT)
    assert g_geom is None and gw.shape == w.shape


def test_torch_gradients_through_pointcloud_and_grid():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(size=(8, 2)), requires_grad=True)
    A = rng.uniform(0.1, 1, size=(8, 2))
    A = torch.tensor(A / A.sum(0))
    b = ot.barycenter(A, ot.PointCloud(x, epsilon=0.05), threshold=1e-8)
    (gx,) = torch.autograd.grad(b @ torch.tensor(_COT[:8]), x)
    # finite differences with the same iteration count
    h = 1e-6
    d = torch.tensor(rng.normal(size=(8, 2)))
    out = ot.barycenter(A, ot.PointCloud(x, epsilon=0.05), threshold=1e-8, return_output=True)
    n_iters = int(out.n_iters)
    kw = dict(threshold=0.0, min_iterations=n_iters, max_iterations=n_iters)
    with torch.no_grad():
        fp = ot.barycenter(A, ot.PointCloud(x + h * d, epsilon=0.05), **kw) @ torch.tensor(_COT[:8])
        fm = ot.barycenter(A, ot.PointCloud(x - h * d, epsilon=0.05), **kw) @ torch.tensor(_COT[:8])
    assert abs(float(torch.sum(gx * d)) - float((fp - fm) / (2 * h))) < 1e-7


# -- errors ---------------------------------------------------------------------------------
def test_errors():
    A, C, w = _problem()
    with pytest.raises(ValueError, match=r"A must have shape \(n, k\)"):
        ot.barycenter(A[:5], C)
    with pytest.raises(ValueError, match="A must be non-negative"):
        ot.barycenter(A - 0.5, C)
    with pytest.raises(ValueError, match="same mass"):
        ot.barycenter(A * np.array([1.0, 2.0, 1.0]), C)
    with pytest.raises(ValueError, match="positive mass"):
        ot.barycenter(np.zeros_like(A), C)
    with pytest.raises(ValueError, match="A contains NaN"):
        ot.barycenter(np.where(A == A[0, 0], np.nan, A), C)
    with pytest.raises(ValueError, match="weights must have length k = 3"):
        ot.barycenter(A, C, w[:2])
    with pytest.raises(ValueError, match="sum to 1"):
        ot.barycenter(A, C, w * 2)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        ot.barycenter(A, C, np.array([1.5, -0.5, 0.0]))
    with pytest.raises(ValueError, match="epsilon is given by the geometry"):
        ot.barycenter(A, ot.Geometry(C, epsilon=0.1), epsilon=0.1)
    with pytest.raises(ValueError, match="square cost"):
        ot.barycenter(A, C[:, :5], debiased=True)
    with pytest.raises(ValueError, match="no batch axes"):
        ot.barycenter(A, np.stack([C, C]))
    with pytest.raises(TypeError, match="implicit_diff must be None or an ImplicitDiff"):
        ot.barycenter(A, C, implicit_diff="yes")
    with pytest.raises(ValueError, match="threshold must be"):
        ot.barycenter(A, C, threshold=-1.0)
    with pytest.raises(ValueError, match="max_iterations must be"):
        ot.barycenter(A, C, max_iterations=0)
    with pytest.raises(TypeError, match="A must have a real floating dtype"):
        ot.barycenter(np.ones((12, 3), dtype=int), C)
    with pytest.raises(TypeError, match="same array library"):
        torch = pytest.importorskip("torch")
        ot.barycenter(torch.tensor(A), C)
    with pytest.raises(TypeError, match="return_output=False"):
        ot.vjp(ot.barycenter, A, C, return_output=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        ot.vjp(ot.barycenter, A, C, foo=1)


def test_unconverged_fixed_point_adjoint_warns():
    A, C, w = _problem()
    few = ot.ImplicitDiff(solver_kwargs={"max_iter": 3})
    _, pull = ot.vjp(ot.barycenter, A, C, w, epsilon=0.02, implicit_diff=few)
    with pytest.warns(ot.ConvergenceWarning, match="fixed-point adjoint"):
        pull(_COT)
