"""Issue 11, float32 accuracy and cost numerics: cases 3, 6, 7 and 8.

* 3: the cosine cost at a zero vector, and the Euclidean / PNorm costs at duplicated
  points, have finite derivatives on every backend, equal to the manual rules.
* 6: the unbalanced cost near ``tau = 1`` keeps its digits in float32 (``expm1``).
* 7: the squared Euclidean cost of float32 clouds far from the origin keeps its digits
  (points moved by a common shift), dense and online, values and gradients.
* 8: an ε schedule keeps float32 solves float32.

References: float64 solves of the same float32-rounded inputs, closed-form derivatives
written here from the plan, and central finite differences in float64.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from _helpers import make_backend, to_numpy

import otcore as ot
from otcore.geometry.costs import Cosine, Euclidean, PNorm, SqEuclidean
from otcore.geometry.epsilon import EpsilonSchedule

AUTODIFF = ("numpy", "jax", "torch")  # NumPy: the manual rules (ot.grad)


def _grad_x(name, x, y, dtype=np.float64, via_ot=False, **kw):
    """``∂ reg_ot_cost(x, y) / ∂x`` on backend ``name`` with its own differentiation:
    ``ot.grad`` (manual rule) on NumPy, ``jax.grad``, torch autograd; ``ot.grad`` on every
    backend with ``via_ot``. ``y=None``: x vs x."""
    be = make_backend(name)
    xb = be.to_xp(x, dtype)
    yb = None if y is None else be.to_xp(y, dtype)
    if name == "numpy" or via_ot:
        g = ot.grad(ot.reg_ot_cost)(xb, yb, **kw)
    elif name == "jax":
        import jax

        g = jax.grad(lambda t: ot.reg_ot_cost(t, yb, **kw))(xb)
    else:
        xb.requires_grad_(True)
        ot.reg_ot_cost(xb, yb, **kw).backward()
        g = xb.grad
    return to_numpy(g)


# -- case 3: cosine at a zero vector; Euclidean / PNorm at duplicated points ----------------

X3 = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])
Y3 = np.array([[1.0, 0.0], [0.0, 1.0]])
EPS3 = 0.1


def _cosine_reference_gradient(ridge=1e-8):
    """``Σ_j P_ij ∂c_ij/∂x_i`` (the envelope gradient, exact at the optimum) written from
    the float64 plan: ``∂c/∂x = -y/d + <x,y> |y| x / (|x| d²)``, ``d = |x||y| + ridge``,
    and ``-y/ridge`` at ``x = 0``."""
    plan = ot.solve(ot.PointCloud(X3, Y3, cost=Cosine(ridge), epsilon=EPS3), threshold=1e-13)
    plan = np.asarray(plan.matrix)
    grad = np.zeros_like(X3)
    for i, xi in enumerate(X3):
        nx = np.linalg.norm(xi)
        for j, yj in enumerate(Y3):
            ny = np.linalg.norm(yj)
            d = nx * ny + ridge
            dc = -yj / d + (0.0 if nx == 0 else (xi @ yj) * ny * xi / (nx * d * d))
            grad[i] += plan[i, j] * dc
    return grad


@pytest.mark.parametrize("name", AUTODIFF)
def test_case_03_cosine_zero_vector_gradient_is_finite_and_matches_manual_rule(name):
    ref = _cosine_reference_gradient()
    manual = _grad_x("numpy", X3, Y3, cost="cosine", epsilon=EPS3, threshold=1e-13)
    for via_ot in (False, True):
        got = _grad_x(name, X3, Y3, via_ot=via_ot, cost="cosine", epsilon=EPS3, threshold=1e-13)
        assert np.all(np.isfinite(got))
        assert abs(got[0, 0]) > 1e7  # the ridged formula's slope -y/ridge at the zero vector
        np.testing.assert_allclose(got, manual, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-7)


def test_case_03_cosine_gradient_matches_finite_differences_where_smooth():
    """Rows away from the zero vector: central differences of the float64 cost (the zero
    vector's row varies on the scale of the ridge, 1e-8: no usable step there)."""
    kw = {"cost": "cosine", "epsilon": EPS3, "threshold": 1e-14}
    h = 1e-6
    fd = np.zeros_like(X3)
    for i in (1, 2):
        for k in range(2):
            step = np.zeros_like(X3)
            step[i, k] = h
            up = float(ot.reg_ot_cost(X3 + step, Y3, **kw))
            down = float(ot.reg_ot_cost(X3 - step, Y3, **kw))
            fd[i, k] = (up - down) / (2 * h)
    for name in AUTODIFF:
        got = _grad_x(name, X3, Y3, **kw)
        np.testing.assert_allclose(got[1:], fd[1:], atol=1e-8, err_msg=name)


@pytest.mark.parametrize("ridge", [1e-8, 0.0], ids=["ridge", "no-ridge"])
def test_case_03_cosine_pairwise_derivative_at_zero_vectors(xp, ridge):
    """The cost matrix's own VJP (autodiff on JAX/PyTorch through ``cost_vjp``, the
    manual rule elsewhere) is finite with zero vectors on both sides and equals the
    manual rule; a zero vector is at cost 1 from everything."""
    x = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])
    y = np.array([[1.0, 0.0], [0.0, 0.0]])
    w = np.array([[0.3, -1.0], [0.5, 2.0], [-0.7, 0.25]])  # cotangent, input-independent
    cost = Cosine(ridge)
    c = to_numpy(cost.pairwise(xp.to_xp(x), xp.to_xp(y)))
    assert np.all(np.isfinite(c))
    np.testing.assert_array_equal(c[0], [1.0, 1.0])
    np.testing.assert_array_equal(c[:, 1], [1.0, 1.0, 1.0])
    dx, dy = xp.adapter.cost_vjp(cost, xp.to_xp(x), xp.to_xp(y), xp.to_xp(w))
    mx, my = cost.vjp(x, y, w)
    assert np.all(np.isfinite(mx)) and np.all(np.isfinite(my))
    np.testing.assert_allclose(to_numpy(dx), mx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(dy), my, rtol=1e-12, atol=1e-12)
    if ridge == 0.0:  # a pair with a zero vector: cost 1 and derivative 0
        np.testing.assert_array_equal(mx[0], [0.0, 0.0])
        np.testing.assert_array_equal(my[1], [0.0, 0.0])
    else:  # -sum_j w_0j y_j / ridge
        np.testing.assert_allclose(mx[0], -(w[0] @ y) / ridge, rtol=1e-12)


def _phi_grad(cost, d):
    """``∇φ(d)`` of ``c(x, y) = φ(x - y)`` with the subgradient 0 at ``d = 0``."""
    if isinstance(cost, Euclidean):
        n = np.linalg.norm(d)
        return np.zeros_like(d) if n == 0 else d / n
    return cost.p * np.abs(d) ** (cost.p - 1.0) * np.sign(d)


@pytest.mark.parametrize(
    ("cost", "self_transport"),
    [(Euclidean(), False), (PNorm(1.0), False), (PNorm(1.5), False), (Euclidean(), True)],
    ids=["euclidean-x-y", "pnorm1-x-y", "pnorm1.5-x-y", "euclidean-x-x"],
)
def test_case_03_euclidean_pnorm_duplicated_points_have_finite_gradients(cost, self_transport):
    """``x_1 == y_0`` (or ``y is x``: the whole diagonal): every backend's gradient is
    finite and equals ``Σ_j P_ij ∇φ(x_i - y_j)`` with ``∇φ(0) = 0`` (twice that for
    ``y is x``, both slots moving)."""
    x = np.array([[0.0, 0.0], [1.0, 2.0], [0.5, -1.0]])
    y = None if self_transport else np.array([[1.0, 2.0], [0.0, 1.0]])
    yy = x if self_transport else y
    out = ot.solve(ot.PointCloud(x, y, cost=cost, epsilon=0.5), threshold=1e-11)
    plan = np.asarray(out.matrix)
    ref = np.array(
        [sum(plan[i, j] * _phi_grad(cost, x[i] - yy[j]) for j in range(len(yy))) for i in range(3)]
    )
    ref = 2.0 * ref if self_transport else ref
    for name in AUTODIFF:
        got = _grad_x(name, x, y, cost=cost, epsilon=0.5, threshold=1e-11)
        assert np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10, err_msg=name)


# -- case 6: unbalanced, tau near 1, float32 ------------------------------------------------

_R6 = np.random.RandomState(0)
X6 = _R6.randn(12, 2).astype(np.float32)
Y6 = _R6.randn(8, 2).astype(np.float32)
# dyadic weights: both masses are exactly 1 in float32 and float64 (a float32 mismatch of
# 1e-8 would move the tau -> 1 optimum far and hold the marginal error at that mismatch)
A6 = (np.array([8, 12, 10, 14, 9, 11, 7, 13, 10, 12, 11, 11]) / 128).astype(np.float32)
B6 = np.full(8, 1 / 8, np.float32)
TAUS = [1 - 1e-4, 1 - 1e-7, 1 - 1e-9, 1 - 1e-12]
# near tau = 1 the translation (f + c, g - c) contracts only by tau² per iteration: at
# 1 - 1e-4, 24k iterations reach 1e-6 (the cost itself is second order in that error)
SLOW = {"max_iterations": 30000}


def _reference_64(x, y, a, b, **kw):
    """float64 solve of the (float32-rounded) inputs."""
    kw = {"threshold": 1e-13, **kw}
    args = [None if v is None else np.asarray(v, np.float64) for v in (x, y, a, b)]
    return float(ot.reg_ot_cost(*args, **kw))


@functools.lru_cache
def _unbalanced_reference(tau):
    return _reference_64(X6, Y6, A6, B6, epsilon=0.1, tau_a=tau, tau_b=tau, threshold=1e-6, **SLOW)


@pytest.mark.parametrize("name", AUTODIFF)
@pytest.mark.parametrize("tau", TAUS, ids=lambda t: f"1-{1 - t:.0e}")
def test_case_06_unbalanced_float32_near_tau_one_matches_float64(name, tau):
    be = make_backend(name)
    ref = _unbalanced_reference(tau)
    out = ot.solve(
        ot.PointCloud(be.to_xp(X6), be.to_xp(Y6), epsilon=0.1),
        be.to_xp(A6),
        be.to_xp(B6),
        tau_a=tau,
        tau_b=tau,
        threshold=1e-4,
        **SLOW,
    )
    value = to_numpy(out.reg_ot_cost)
    assert value.dtype == np.float32
    assert bool(out.converged)
    assert abs(float(value) - ref) <= 1e-5 * abs(ref)


@pytest.mark.parametrize("name", AUTODIFF)
def test_case_06_unbalanced_float32_array_epsilon_and_divergence(name):
    """ρ = ε τ/(1-τ) formed from a 0-d float32 ε array, and the Sinkhorn divergence's
    unbalanced terms, at tau = 1 - 1e-9."""
    be = make_backend(name)
    tau = 1 - 1e-9
    ref = _unbalanced_reference(tau)
    eps = be.to_xp(np.asarray(0.1, np.float32))
    args = [be.to_xp(v) for v in (X6, Y6, A6, B6)]
    value = ot.reg_ot_cost(*args, epsilon=eps, tau_a=tau, tau_b=tau, threshold=1e-4)
    assert to_numpy(value).dtype == np.float32
    assert abs(float(to_numpy(value)) - ref) <= 1e-5 * abs(ref)
    args64 = [np.asarray(v, np.float64) for v in (X6, Y6, A6, B6)]
    div_ref = float(
        ot.sinkhorn_divergence(*args64, epsilon=0.1, tau_a=tau, tau_b=tau, threshold=1e-8)
    )
    div = ot.sinkhorn_divergence(*args, epsilon=0.1, tau_a=tau, tau_b=tau, threshold=1e-4)
    assert abs(float(to_numpy(div)) - div_ref) <= 1e-4 * abs(div_ref)


def test_case_06_unbalanced_cost_tends_to_balanced_as_tau_goes_to_one():
    """float64: ``|OT_τ - OT_1| = O(1 - τ)`` (measured 13.5 (1 - τ) |OT_1| here); without
    expm1 the tau = 1 - 1e-12 cost was 1.2e-6 off, 1e5 times that."""
    balanced = _reference_64(X6, Y6, A6, B6, epsilon=0.1, threshold=1e-12)
    gaps = []
    for tau in TAUS:
        gaps.append(abs(_unbalanced_reference(tau) - balanced))
        assert gaps[-1] <= 20 * (1 - tau) * abs(balanced), tau
    assert gaps == sorted(gaps, reverse=True)


def test_case_06_manual_weight_gradient_near_tau_one_float32():
    """The manual rule's ``∂/∂a = -ρ(e - 1) - ε e`` is formed with expm1 too (it was 40 %
    off at tau = 1 - 1e-9)."""
    tau = 1 - 1e-9
    grad32 = ot.grad(ot.reg_ot_cost, argnums=2)(
        X6, Y6, A6, B6, epsilon=0.1, tau_a=tau, tau_b=tau, threshold=1e-4
    )
    args64 = [np.asarray(v, np.float64) for v in (X6, Y6, A6, B6)]
    grad64 = ot.grad(ot.reg_ot_cost, argnums=2)(
        *args64, epsilon=0.1, tau_a=tau, tau_b=tau, threshold=1e-8
    )
    assert grad32.dtype == np.float32
    np.testing.assert_allclose(grad32, grad64, atol=1e-3 * np.abs(grad64).max())


# -- case 7: squared Euclidean far from the origin, float32 ------------------------------


def _far_clouds(offset, seed=1):
    r = np.random.RandomState(seed)
    x = (offset + 0.01 * r.randn(12, 2)).astype(np.float32)
    y = (offset + 0.01 * r.randn(10, 2)).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", AUTODIFF)
@pytest.mark.parametrize("offset", [1e3, 1e4])
@pytest.mark.parametrize("batch_size", [None, 4], ids=["dense", "online"])
def test_case_07_sqeuclidean_far_from_origin_float32_matches_float64(name, offset, batch_size):
    be = make_backend(name)
    x, y = _far_clouds(offset)
    for eps in (1e-4, 1e-3):
        ref = _reference_64(x, y, None, None, epsilon=eps)
        out = ot.solve(ot.PointCloud(be.to_xp(x), be.to_xp(y), epsilon=eps, batch_size=batch_size))
        value = to_numpy(out.reg_ot_cost)
        assert value.dtype == np.float32
        assert bool(out.converged)
        assert abs(float(value) - ref) <= 1e-5 * abs(ref), (eps, float(value), ref)


@pytest.mark.parametrize("name", AUTODIFF)
@pytest.mark.parametrize("batch_size", [None, 4], ids=["dense", "online"])
def test_case_07_far_from_origin_gradients_match_float64(name, batch_size):
    """Gradients w.r.t. ``x`` (jax.grad, torch autograd, the manual rule) agree with the
    float64 gradient of the same inputs (to the solve's accuracy at threshold 1e-5)."""
    for offset in (1e3, 1e4):
        x, y = _far_clouds(offset)
        ref = _grad_x("numpy", x, y, np.float64, epsilon=1e-4, threshold=1e-13)
        got = _grad_x(name, x, y, np.float32, epsilon=1e-4, batch_size=batch_size, threshold=1e-5)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=5e-5 * np.abs(ref).max(), err_msg=str(offset))


def test_case_07_sqeuclidean_matrix_far_from_origin(xp):
    """The float32 cost matrix itself, and a grid's per-axis cost, against the float64
    squared differences of the same float32 numbers."""
    x, y = _far_clouds(1e4)
    exact = ((x.astype(np.float64)[:, None] - y.astype(np.float64)[None]) ** 2).sum(-1)
    for c in (
        SqEuclidean()(xp.to_xp(x), xp.to_xp(y)),
        ot.PointCloud(xp.to_xp(x), xp.to_xp(y)).cost_matrix,
        ot.PointCloud(xp.to_xp(x), xp.to_xp(y), batch_size=4).cost_matrix,
    ):
        np.testing.assert_allclose(to_numpy(c), exact, rtol=1e-4)
    axis = (1e3 + np.linspace(0.0, 0.1, 5)).astype(np.float32)
    grid = ot.Grid(axes=[xp.to_xp(axis)], epsilon=1.0)
    a64 = axis.astype(np.float64)
    np.testing.assert_allclose(
        to_numpy(grid.cost_matrix), (a64[:, None] - a64[None]) ** 2, rtol=1e-4, atol=1e-9
    )


@pytest.mark.parametrize("batch_size", [None, 4], ids=["dense", "online"])
def test_case_07_cost_statistics_use_the_accurate_cost(xp, batch_size):
    """``relative_epsilon``, the default ε and ``scale_cost`` statistics of a far-from-origin
    float32 cloud match those of the float64 cost; online, std(C) << mean(C) too (two-pass
    variance)."""
    x, y = _far_clouds(1e3)
    c64 = ((x.astype(np.float64)[:, None] - y.astype(np.float64)[None]) ** 2).sum(-1)
    xs, ys = xp.to_xp(x), xp.to_xp(y)
    geom = ot.PointCloud(xs, ys, batch_size=batch_size)
    assert float(to_numpy(geom.epsilon)) == pytest.approx(0.05 * c64.std(), rel=1e-4)
    geom = ot.PointCloud(xs, ys, epsilon=0.1, relative_epsilon="mean", batch_size=batch_size)
    assert float(to_numpy(geom.epsilon)) == pytest.approx(0.1 * c64.mean(), rel=1e-4)
    geom = ot.PointCloud(xs, ys, scale_cost="max_cost", batch_size=batch_size)
    assert float(to_numpy(geom.inv_scale_cost)) == pytest.approx(1 / c64.max(), rel=1e-4)
    # clouds 1 apart with a 3e-4 spread: C ≈ 1 ± 1e-3 (E[C²] - mean² was 9 % off)
    r = np.random.RandomState(2)
    u = (3e-4 * r.randn(12, 2)).astype(np.float32)
    v = (np.array([1.0, 0.0]) + 3e-4 * r.randn(10, 2)).astype(np.float32)
    c64 = ((u.astype(np.float64)[:, None] - v.astype(np.float64)[None]) ** 2).sum(-1)
    geom = ot.PointCloud(xp.to_xp(u), xp.to_xp(v), batch_size=batch_size)
    assert float(to_numpy(geom.epsilon)) == pytest.approx(0.05 * c64.std(), rel=1e-4)


def test_case_07_shifted_cost_derivatives_are_exact():
    """The shift is a constant for autodiff: jax.grad, the JAX Hessian and torch double
    backward of ``Σ W ∘ C(x, y)`` equal the closed forms ``2 Σ_j W_ij (x_i - y_j)`` and
    ``2 (Σ_j W_ij) I`` (float64)."""
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jnp = jax.numpy
    r = np.random.RandomState(3)
    x, y, w = 5.0 + r.randn(4, 2), 5.0 + r.randn(3, 2), r.randn(4, 3)
    grad_ref = 2.0 * (x * w.sum(1)[:, None] - w @ y)
    hess_ref = np.einsum("ij,kl->ikjl", np.diag(2.0 * w.sum(1)), np.eye(2))

    def loss(t):
        return jnp.sum(jnp.asarray(w) * SqEuclidean()(t, jnp.asarray(y)))

    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(x)), grad_ref, rtol=1e-12, atol=1e-12)
    hess = jax.hessian(loss)(jnp.asarray(x))
    np.testing.assert_allclose(hess, hess_ref, atol=1e-12)
    xt = torch.tensor(x, requires_grad=True)
    (gt,) = torch.autograd.grad(
        (torch.tensor(w) * SqEuclidean()(xt, torch.tensor(y))).sum(), xt, create_graph=True
    )
    np.testing.assert_allclose(gt.detach().numpy(), grad_ref, rtol=1e-12, atol=1e-12)
    direction = torch.tensor(r.randn(4, 2))
    (hv,) = torch.autograd.grad(gt, xt, direction)
    np.testing.assert_allclose(
        hv.numpy(), 2.0 * w.sum(1)[:, None] * direction.numpy(), rtol=1e-12, atol=1e-12
    )
    dx, dy = SqEuclidean().vjp(x, y, w)
    np.testing.assert_allclose(dx, grad_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dy, 2.0 * (y * w.sum(0)[:, None] - w.T @ x), atol=1e-12)


# -- case 8: an ε schedule keeps float32 --------------------------------------------------


def test_case_08_epsilon_schedule_keeps_float32(xp):
    x = np.random.RandomState(42).randn(20, 2).astype(np.float32)
    m = ((x[:, None] - x[None]) ** 2).sum(-1)
    u = np.full(20, 0.05, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ot.ConvergenceWarning)
        out = ot.solve(
            xp.to_xp(m), xp.to_xp(u), xp.to_xp(u), epsilon=1.0, epsilon_schedule=(100.0, 0.9)
        )
        value = ot.reg_ot_cost(xp.to_xp(x), epsilon=1.0, epsilon_schedule=(100.0, 0.9))
    for arr in (out.f, out.g, out.matrix, out.reg_ot_cost, value):
        assert to_numpy(arr).dtype == np.float32
    assert bool(out.converged)


def test_case_08_epsilon_schedule_factor_of_numpy_integer_is_a_python_float():
    schedule = EpsilonSchedule(init=100.0, decay=0.9)
    factor = schedule.factor(np.int64(3))
    assert type(factor) is float
    assert factor == pytest.approx(100.0 * 0.9**3, rel=1e-15)
    assert schedule.factor(np.int64(1000)) == 1.0
    x = np.random.RandomState(1).randn(8, 2).astype(np.float32)
    grad = ot.grad(ot.reg_ot_cost)(x, x[:5] + 1, epsilon=0.5, epsilon_schedule=(10.0, 0.8))
    assert grad.dtype == np.float32


@pytest.mark.parametrize("cost", ["euclidean", "sqeuclidean", "pnorm"])
def test_manual_gradient_rules_far_from_origin_float32_match_float64(cost):
    """Found by the property suite: NumPy's manual point gradient summed
    ``x_i Σ_j w_ij - Σ_j w_ij y_j``, cancelling every digit far from the origin in float32
    (euclidean at offset 1e5: 1.2e-3 off). Now within 1e-5 (relative) of float64."""
    cost_fn = ot.costs.PNorm(1.5) if cost == "pnorm" else cost
    rng = np.random.default_rng(17)
    x = (rng.normal(size=(7, 2)) + 1e5).astype(np.float32)
    y = (rng.normal(size=(5, 2)) + 1e5).astype(np.float32)
    grad = ot.grad(ot.reg_ot_cost)
    g32 = grad(x, y, epsilon=1.0, cost=cost_fn, threshold=1e-6)
    g64 = grad(x.astype(np.float64), y.astype(np.float64), epsilon=1.0, cost=cost_fn)
    assert g32.dtype == np.float32
    assert np.abs(g32 - g64).max() <= 1e-5 * np.abs(g64).max()
