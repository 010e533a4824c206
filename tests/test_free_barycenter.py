"""Free-support barycenters: closed forms (Gaussians, translations), POT and OTT-JAX
references, backends, JAX jit, gradients (JAX vs PyTorch vs finite differences), errors."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import to_numpy

import otcore as ot
from otcore.solvers.free_barycenter import FreeBarycenterOutput, free_barycenter


def _whitened(rng, m):
    """``m`` points of N(0, I₂) with exactly zero sample mean and identity covariance."""
    z = rng.normal(size=(m, 2))
    z -= z.mean(0)
    chol = np.linalg.cholesky(np.cov(z.T, bias=True))
    return z @ np.linalg.inv(chol).T


def _clouds(seed=0, sizes=(9, 7, 8), d=2):
    rng = np.random.default_rng(seed)
    ys = [rng.normal(size=(m, d)) + rng.normal(size=d) for m in sizes]
    bs = [rng.uniform(0.5, 1.0, size=m) for m in sizes]
    bs = [b / b.sum() for b in bs]
    w = rng.uniform(0.5, 1.0, size=len(sizes))
    return ys, bs, w / w.sum()


# -- closed forms ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::otcore.ConvergenceWarning")  # a few updates on purpose
def test_gaussian_closed_form():
    # y_s = m_s + Σ_s^{1/2} z: samples of N(m_s, Σ_s) with diagonal (commuting) covariances.
    # The W2 barycenter is N(Σ w_s m_s, (Σ w_s Σ_s^{1/2})²). With one whitened sample z
    # for all inputs, the sample's first two moments are exact, so only ε blurs the
    # result (measured at ε = 0.005: means 1e-4, covariances 3e-4 off).
    rng = np.random.default_rng(0)
    z = _whitened(rng, 40)
    means = np.array([[0.0, 0.0], [2.0, 1.0], [-1.0, 2.0]])
    sds = np.array([[1.0, 0.5], [0.5, 1.5], [0.8, 0.8]])
    w = np.array([0.2, 0.3, 0.5])
    ys = [means[s] + sds[s] * z for s in range(3)]
    out = free_barycenter(
        ys,
        weights=w,
        n_points=40,
        epsilon=0.005,
        max_iterations=10,
        sinkhorn_kwargs={"threshold": 1e-3},
        return_output=True,
    )
    X = out.points
    assert X.shape == (40, 2) and isinstance(out, FreeBarycenterOutput)
    np.testing.assert_allclose(X.mean(0), w @ means, rtol=0, atol=1e-3)
    np.testing.assert_allclose(np.cov(X.T, bias=True), np.diag((w @ sds) ** 2), rtol=0, atol=2e-3)
    # the blur shrinks the barycenter: at a larger ε the covariance is visibly smaller
    blurred = free_barycenter(
        ys, weights=w, x_init=X, epsilon=0.2, max_iterations=10, sinkhorn_kwargs={"threshold": 1e-3}
    )
    assert np.trace(np.cov(blurred.T, bias=True)) < np.trace(np.diag((w @ sds) ** 2)) - 0.05


def test_translations_exact_equivariance():
    # translates y + t_s: every plan equals the plan of the untranslated problem, so the
    # iterates are those of the barycenter of y alone, translated by Σ w_s t_s (any ε;
    # exactly so for converged inner solves: Sinkhorn's iterates are not equivariant)
    rng = np.random.default_rng(1)
    y = rng.normal(size=(20, 2))
    t = np.array([[0.0, 0.0], [3.0, -1.0], [-2.0, 4.0]])
    w = np.array([0.5, 0.2, 0.3])
    shift = w @ t
    x0 = y[:15] + 0.1 * rng.normal(size=(15, 2))
    kw = dict(
        epsilon=0.3,
        max_iterations=5,
        threshold=0.0,
        sinkhorn_kwargs={"threshold": 1e-14, "max_iterations": 10000},
    )
    moved = free_barycenter(np.stack([y + ts for ts in t]), weights=w, x_init=x0 + shift, **kw)
    alone = free_barycenter([y], x_init=x0, **kw)
    np.testing.assert_allclose(moved, alone + shift, rtol=0, atol=1e-12)  # measured 3e-14


def test_translations_small_epsilon_give_the_translated_cloud():
    # a jittered grid (squared spacing 0.04 >> ε = 0.002): the entropic plans are
    # permutations up to e^{-20}, so the barycenter is the translated cloud itself
    # (annealing ε lets Sinkhorn's potentials absorb the translations quickly)
    rng = np.random.default_rng(2)
    g = np.stack(np.meshgrid(np.arange(5), np.arange(5)), -1).reshape(-1, 2) * 0.2
    y = g + 0.02 * rng.uniform(-1, 1, size=g.shape)
    t = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    w = np.array([0.2, 0.3, 0.5])
    out = free_barycenter(
        np.stack([y + ts for ts in t]),
        weights=w,
        x_init=y + w @ t + 0.01,
        epsilon=0.002,
        threshold=1e-9,
        sinkhorn_kwargs={"threshold": 1e-7, "epsilon_schedule": (1000.0, 0.9)},
        return_output=True,
    )
    assert bool(out.converged) and bool(out.linear_converged)
    np.testing.assert_allclose(out.points, y + w @ t, rtol=0, atol=1e-6)  # measured 4e-8


def test_mean_is_preserved_and_output_fields():
    # rows of every plan are exact: the mean of the support is Σ_s w_s Σ_j b_sj y_sj
    ys, bs, w = _clouds()
    out = free_barycenter(
        ys,
        bs,
        w,
        n_points=6,
        epsilon=1.0,
        threshold=1e-3,
        sinkhorn_kwargs={"threshold": 1e-12},
        return_output=True,
    )
    mean = sum(w[s] * bs[s] @ ys[s] for s in range(3))
    np.testing.assert_allclose(out.points.mean(0), mean, rtol=0, atol=1e-10)
    assert bool(out.converged) and not bool(out.diverged)
    n = int(out.n_iters)
    assert 1 < n < 100 and np.all(out.errors[:n] >= 0) and np.all(out.errors[n:] == -1)
    assert out.errors[n - 1] <= 1e-3 < out.errors[n - 2]
    np.testing.assert_allclose(out.weights, np.full(6, 1 / 6))
    assert out.epsilon == 1.0
    # costs: Σ w_s reg_ot_cost(points, y_s) at the returned points
    ref = sum(
        w[s] * float(ot.reg_ot_cost(out.points, ys[s], None, bs[s], epsilon=1.0, threshold=1e-12))
        for s in range(3)
    )
    assert abs(float(out.costs) - ref) < 1e-10
    # not converged within max_iterations is reported
    out = free_barycenter(ys, bs, w, n_points=6, epsilon=1.0, max_iterations=2, return_output=True)
    assert not bool(out.converged) and int(out.n_iters) == 2


@pytest.mark.filterwarnings("ignore::otcore.ConvergenceWarning")  # a few updates on purpose
def test_default_epsilon_and_init():
    ys, bs, w = _clouds()
    out = free_barycenter(ys, bs, w, n_points=5, max_iterations=1, return_output=True)
    union = np.concatenate(ys)
    x0 = union[np.random.default_rng(0).choice(len(union), size=5, replace=False)]
    C = ((x0[:, None] - union[None]) ** 2).sum(-1)
    assert abs(out.epsilon - 0.05 * C.std()) < 1e-12
    same = free_barycenter(ys, bs, w, x_init=x0, epsilon=out.epsilon, max_iterations=1)
    np.testing.assert_allclose(out.points, same, rtol=0, atol=1e-14)
    other = free_barycenter(ys, bs, w, n_points=5, max_iterations=1, seed=3)
    assert np.abs(other - out.points).max() > 1e-3


# -- references -----------------------------------------------------------------------------
def test_matches_pot():
    pot = pytest.importorskip("ot")
    ys, bs, w = _clouds()
    x0 = np.random.default_rng(5).normal(size=(6, 2))
    # POT: reg is ε (kernel exp(-M/reg), M the squared distances); X <- Σ w_s P_s y_s / b
    ref = pot.bregman.free_support_sinkhorn_barycenter(
        ys, bs, x0, 1.0, weights=w, numItermax=5, numInnerItermax=10000, stopThr=0.0
    )
    X = free_barycenter(
        ys,
        bs,
        w,
        x_init=x0,
        epsilon=1.0,
        threshold=0.0,
        max_iterations=5,
        sinkhorn_kwargs={"threshold": 1e-13},
    )
    # POT's inner solves stop at its fixed stopThr = 1e-9 (2-norm of the marginal error)
    np.testing.assert_allclose(X, ref, rtol=0, atol=2e-8)


def test_matches_ott():
    pytest.importorskip("ott")
    import jax.numpy as jnp
    from ott.problems.linear.barycenter_problem import FreeBarycenterProblem
    from ott.solvers.linear import sinkhorn
    from ott.solvers.linear.continuous_barycenter import FreeWassersteinBarycenter

    ys, bs, w = _clouds(sizes=(8, 8, 8))
    x0 = np.random.default_rng(5).normal(size=(6, 2))
    prob = FreeBarycenterProblem(
        jnp.asarray(np.stack(ys)), jnp.asarray(np.stack(bs)), jnp.asarray(w), epsilon=1.0
    )
    solver = FreeWassersteinBarycenter(
        sinkhorn.Sinkhorn(threshold=1e-13, max_iterations=10000), min_iterations=5, max_iterations=5
    )
    ref = solver(prob, bar_size=6, x_init=jnp.asarray(x0))
    kw = dict(x_init=x0, epsilon=1.0, threshold=0.0, sinkhorn_kwargs={"threshold": 1e-13})
    out = free_barycenter(np.stack(ys), np.stack(bs), w, max_iterations=5, **kw)
    np.testing.assert_allclose(out, np.asarray(ref.x), rtol=0, atol=1e-11)  # measured 4e-14
    # OTT's costs[i] is Σ w_s reg_ot_cost at the i-th iterate (before its update)
    out = free_barycenter(ys, bs, w, max_iterations=4, return_output=True, **kw)
    assert abs(float(out.costs) - float(ref.costs[4])) < 1e-11


# -- backends -------------------------------------------------------------------------------
def test_backends_agree(xp):
    ys, bs, w = _clouds()
    kw = dict(n_points=6, epsilon=1.0, threshold=0.0, max_iterations=6)
    # equal sizes: one batched (k, m, d) problem per iteration
    Y, B = np.stack([y[:7] for y in ys]), np.stack([b[:7] / b[:7].sum() for b in bs])
    ref = free_barycenter(Y, B, w, **kw)
    X = free_barycenter(xp.to_xp(Y), xp.to_xp(B), xp.to_xp(w), **kw)
    assert isinstance(X, xp.array_type)
    np.testing.assert_allclose(to_numpy(X), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(free_barycenter(list(Y), list(B), w, **kw), ref, rtol=0, atol=1e-12)
    if xp.name.startswith("jax"):
        return  # compile time: the list path runs on JAX in test_jax_jit
    # different sizes: one problem per input
    ref = free_barycenter(ys, bs, w, **kw)
    X = free_barycenter([xp.to_xp(y) for y in ys], [xp.to_xp(b) for b in bs], xp.to_xp(w), **kw)
    np.testing.assert_allclose(to_numpy(X), ref, rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore::otcore.ConvergenceWarning")  # a few updates on purpose
def test_float32_keeps_dtype_and_device(xp):
    ys, _, _ = _clouds(sizes=(7, 7))
    kw = dict(n_points=6, epsilon=1.0, max_iterations=3, sinkhorn_kwargs={"threshold": 1e-4})
    Y = np.stack(ys)
    X = free_barycenter(xp.to_xp(Y, np.float32), **kw)
    assert X.dtype == xp.float32 and tuple(X.shape) == (6, 2)
    assert str(getattr(X, "device", "cpu")) == str(getattr(xp.to_xp(Y), "device", "cpu"))
    np.testing.assert_allclose(to_numpy(X), free_barycenter(Y, **kw), rtol=0, atol=1e-4)


def test_jax_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    ys, bs, w = _clouds()
    kw = dict(n_points=6, epsilon=1.0, threshold=1e-3, max_iterations=50, return_output=True)
    ref = free_barycenter(ys, bs, w, **kw)

    def run(ys, bs, w):
        out = free_barycenter(ys, bs, w, **kw)
        return out.points, out.n_iters, out.converged, out.costs

    points, n_iters, converged, costs = jax.jit(run)(
        [jnp.asarray(y) for y in ys], [jnp.asarray(b) for b in bs], jnp.asarray(w)
    )
    np.testing.assert_allclose(np.asarray(points), ref.points, rtol=0, atol=1e-10)
    assert int(n_iters) == int(ref.n_iters) and bool(converged)
    assert abs(float(costs) - float(ref.costs)) < 1e-10


# -- gradients ------------------------------------------------------------------------------
_FIXED = dict(
    n_points=5,
    epsilon=0.5,
    threshold=0.0,
    max_iterations=2,
    sinkhorn_kwargs={
        "threshold": 0.0,
        "min_iterations": 10,
        "max_iterations": 10,
        "implicit_diff": None,
    },
)
_COT = np.random.default_rng(7).normal(size=(5, 2))  # fixed cotangent


def _jax_grads(ys, bs, w, kw):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def loss(ys, bs, w):
        return jnp.sum(jnp.asarray(_COT) * free_barycenter(ys, bs, w, **kw))

    args = ([jnp.asarray(y) for y in ys], [jnp.asarray(b) for b in bs], jnp.asarray(w))
    gy, gb, gw = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    return [np.asarray(g) for g in gy], [np.asarray(g) for g in gb], np.asarray(gw)


def _torch_grads(ys, bs, w, kw):
    torch = pytest.importorskip("torch")
    ty = [torch.tensor(y, requires_grad=True) for y in ys]
    tb = [torch.tensor(b, requires_grad=True) for b in bs]
    tw = torch.tensor(w, requires_grad=True)
    loss = torch.sum(torch.tensor(_COT) * free_barycenter(ty, tb, tw, **kw))
    grads = torch.autograd.grad(loss, [*ty, *tb, tw])
    k = len(ys)
    return [g.numpy() for g in grads[:k]], [g.numpy() for g in grads[k : 2 * k]], grads[-1].numpy()


def test_gradients_jax_torch_and_finite_differences():
    ys, bs, w = _clouds(sizes=(9, 7))
    jy, jb, jw = _jax_grads(ys, bs, w, _FIXED)
    ty, tb, tw = _torch_grads(ys, bs, w, _FIXED)
    for j, t in zip([*jy, *jb, jw], [*ty, *tb, tw]):
        np.testing.assert_allclose(j, t, rtol=0, atol=1e-8 * max(1.0, np.abs(t).max()))

    def loss(ys_, bs_, w_):
        return float(np.sum(_COT * free_barycenter(ys_, bs_, w_, **_FIXED)))

    rng = np.random.default_rng(3)
    h = 1e-6
    for _ in range(2):
        dy = [rng.normal(size=y.shape) for y in ys]
        db = [rng.normal(size=b.shape) for b in bs]
        db = [d - d.mean() for d in db]  # tangent to the simplex
        dw = rng.normal(size=2)
        dw -= dw.mean()
        plus = loss(
            [y + h * d for y, d in zip(ys, dy)], [b + h * d for b, d in zip(bs, db)], w + h * dw
        )
        minus = loss(
            [y - h * d for y, d in zip(ys, dy)], [b - h * d for b, d in zip(bs, db)], w - h * dw
        )
        fd = (plus - minus) / (2 * h)
        an = sum(np.sum(g * d) for g, d in zip([*ty, *tb, tw], [*dy, *db, dw]))
        assert abs(an - fd) <= 1e-8 * max(1.0, abs(fd)), (an, fd)  # measured 1e-10 relative


def test_implicit_gradients_jax_torch_agree():
    # default inner solves: implicit differentiation of each Sinkhorn solve
    ys, bs, w = _clouds(sizes=(8, 8))
    kw = dict(
        n_points=5,
        epsilon=1.0,
        threshold=0.0,
        max_iterations=3,
        sinkhorn_kwargs={"threshold": 1e-12},
    )
    jy, jb, jw = _jax_grads(ys, bs, w, kw)
    ty, tb, tw = _torch_grads(ys, bs, w, kw)
    for j, t in zip([*jy, *jb, jw], [*ty, *tb, tw]):
        np.testing.assert_allclose(j, t, rtol=0, atol=1e-8 * max(1.0, np.abs(t).max()))


def test_numpy_has_no_gradient_rule():
    ys, _, _ = _clouds()
    with pytest.raises(TypeError, match=r"ot\.vjp of free_barycenter on numpy arrays"):
        ot.vjp(free_barycenter, np.stack([y[:7] for y in ys]), n_points=4)


# -- errors ---------------------------------------------------------------------------------
def test_errors():
    ys, bs, w = _clouds()
    kw = dict(n_points=4, epsilon=0.5)
    with pytest.raises(ValueError, match="only cost='sqeuclidean'"):
        free_barycenter(ys, cost="euclidean", **kw)
    with pytest.raises(
        ValueError, match="same dimension d: ys\\[0\\] has d = 2, ys\\[1\\] has d = 3"
    ):
        free_barycenter([ys[0], np.ones((4, 3))], **kw)
    with pytest.raises(ValueError, match="one array \\(k, m, d\\)"):
        free_barycenter(ys[0], **kw)
    with pytest.raises(ValueError, match="at least one point cloud"):
        free_barycenter([], **kw)
    with pytest.raises(TypeError, match="ys must be a sequence of arrays"):
        free_barycenter(3.0, **kw)
    with pytest.raises(ValueError, match=r"ys\[1\] must have shape \(m_s, d\)"):
        free_barycenter([ys[0], ys[1][None]], **kw)
    with pytest.raises(ValueError, match="bs must hold one weight vector per input cloud"):
        free_barycenter(ys, bs[:2], **kw)
    with pytest.raises(ValueError, match=r"bs\[1\] must have shape \(7,\)"):
        free_barycenter(ys, [bs[0], bs[0], bs[2]], **kw)
    with pytest.raises(ValueError, match=r"bs\[0\] must sum to 1"):
        free_barycenter(ys, [2 * bs[0], bs[1], bs[2]], **kw)
    with pytest.raises(ValueError, match=r"bs\[2\] must be non-negative"):
        free_barycenter(ys, [bs[0], bs[1], bs[2] - 0.2], **kw)
    with pytest.raises(ValueError, match=r"weights must have shape \(k,\) = \(3,\)"):
        free_barycenter(ys, bs, w[:2], **kw)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        free_barycenter(ys, bs, 2 * w, **kw)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        free_barycenter(ys, bs, np.array([1.5, -0.5, 0.0]), **kw)
    with pytest.raises(ValueError, match="weights contains NaN"):
        free_barycenter(ys, bs, np.array([np.nan, 0.5, 0.5]), **kw)
    with pytest.raises(ValueError, match=r"n_points .* is required when x_init is not given"):
        free_barycenter(ys, epsilon=0.5)
    with pytest.raises(ValueError, match="n_points must be an integer >= 1"):
        free_barycenter(ys, n_points=0)
    with pytest.raises(ValueError, match=r"ys\[1\] contains NaN"):
        free_barycenter([ys[0], np.full((3, 2), np.inf)], **kw)
    with pytest.raises(ValueError, match="x_init contains NaN"):
        free_barycenter(ys, x_init=np.full((4, 2), np.nan), epsilon=0.5)
    with pytest.raises(ValueError, match=r"x_init must have shape \(n_points, d\) = \(4, 2\)"):
        free_barycenter(ys, x_init=np.ones((4, 3)), epsilon=0.5)
    with pytest.raises(ValueError, match=r"x_init must have shape \(n_points, d\) = \(5, 2\)"):
        free_barycenter(ys, n_points=5, x_init=np.ones((4, 2)), epsilon=0.5)
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        free_barycenter(ys, threshold=-1.0, **kw)
    with pytest.raises(ValueError, match="max_iterations must be an integer >= 1"):
        free_barycenter(ys, max_iterations=0, **kw)
    with pytest.raises(ValueError, match="epsilon must be a positive finite number"):
        free_barycenter(ys, n_points=4, epsilon=-1.0)
    with pytest.raises(TypeError, match="epsilon must be None or a positive float"):
        free_barycenter(ys, n_points=4, epsilon="small")
    with pytest.raises(ValueError, match=r"the default epsilon .* is 0"):
        free_barycenter([np.zeros((3, 2))], n_points=2)
    with pytest.raises(TypeError, match="sinkhorn_kwargs must be a dict"):
        free_barycenter(ys, sinkhorn_kwargs=[1], **kw)
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument 'tolerance' in sinkhorn_kwargs"
    ):
        free_barycenter(ys, sinkhorn_kwargs={"tolerance": 1e-3}, **kw)
    with pytest.raises(TypeError, match="seed must be an integer"):
        free_barycenter(ys, seed=0.5, **kw)
    with pytest.raises(TypeError, match="must have a real floating dtype"):
        free_barycenter([np.ones((3, 2), dtype=int)], **kw)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="same array library"):
        free_barycenter([torch.tensor(ys[0]), ys[1]], **kw)
