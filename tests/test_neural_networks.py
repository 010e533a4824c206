"""ICNN / PotentialMLP: convexity, seeded initialisation across frameworks, Gaussian init."""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot
from otcore._lib import tree as _tree
from otcore.neural.networks import gaussian_map


def _perturbed_params(net, xp, seed=0):
    """Initial parameters with every bias and hidden diagonal randomised (kinks off 0)."""
    rng = np.random.default_rng(seed + 100)
    params = net.init_params(xp.namespace, xp.float64, xp.device, seed=seed)

    def jitter(p):
        if isinstance(p, dict):
            return {k: jitter(v) for k, v in p.items()}
        if isinstance(p, list):
            return [jitter(v) for v in p]
        return p + xp.to_xp(rng.normal(scale=0.5, size=tuple(p.shape)))

    return jitter(params)


def test_icnn_positive_weights_is_convex(xp):
    """Midpoint convexity on random pairs, at random (perturbed) parameters."""
    net = ot.neural.ICNN(3, dim_hidden=(16, 16, 8), pos_weights=True)
    params = _perturbed_params(net, xp)
    rng = np.random.default_rng(1)
    a, b = rng.normal(scale=2.0, size=(2, 500, 3))
    fa, fb, fm = (xp.to_np(net.apply(params, xp.to_xp(v))) for v in (a, b, (a + b) / 2))
    gap = (fa + fb) / 2 - fm
    assert gap.min() >= -1e-10 * np.abs(fm).max()
    assert gap.max() > 1e-3  # the test is not vacuous: f is not affine


def test_icnn_negative_weights_can_be_nonconvex():
    """The midpoint test detects non-convexity (so the test above can fail).

    With ``W = −1`` the network is ``f(x) = relu(5 − relu(x))``: concave kink at 0.
    """
    net = ot.neural.ICNN(1, dim_hidden=(1,), ranks=0, pos_weights=False)
    params = net.init_params(np, np.float64, "cpu", seed=0)
    for layer, bias in zip(params["w_x"], (0.0, 5.0)):
        layer.update(diag=np.full((1, 1), -60.0), lin=np.full((1, 1), 1.0 - bias / 5.0))
        layer["bias"] = np.full(1, bias)
    params["w_z"] = [np.full((1, 1), -1.0)]
    params["final"] = {k: np.zeros_like(v) for k, v in params["final"].items()}
    a, b = np.array([[-1.0]]), np.array([[1.0]])
    gap = (net.apply(params, a) + net.apply(params, b)) / 2 - net.apply(params, (a + b) / 2)
    np.testing.assert_allclose(gap, [-0.5], atol=1e-12)
    params["w_z"] = [np.full((1, 1), 1.0)]  # the same network with W ≥ 0 is convex
    gap = (net.apply(params, a) + net.apply(params, b)) / 2 - net.apply(params, (a + b) / 2)
    assert gap[0] >= 0


def test_project_and_penalty():
    net = ot.neural.ICNN(2, dim_hidden=(8, 8), pos_weights=False)
    params = net.init_params(np, np.float64, "cpu", seed=3)
    expected = sum(np.linalg.norm(np.maximum(-w, 0)) for w in params["w_z"])
    assert float(net.weight_penalty(params)) == pytest.approx(expected, rel=1e-12)
    projected = net.project(params)
    assert all((w >= 0).all() for w in projected["w_z"])
    assert float(net.weight_penalty(projected)) == 0.0


def test_penalty_gradient_is_finite_at_zero():
    """‖relu(−W)‖_F has a zero (not NaN) derivative once the weights are clipped."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    net = ot.neural.ICNN(2, dim_hidden=(4, 4), pos_weights=False)
    params = net.project(net.init_params(jnp, jnp.float64, None, seed=0))
    grads = jax.grad(net.weight_penalty)(params)
    for g in grads["w_z"]:
        assert np.all(np.asarray(g) == 0.0)


def test_same_seed_same_parameters_across_frameworks(xp):
    net = ot.neural.ICNN(3, dim_hidden=(8, 4))
    ref = net.init_params(np, np.float64, "cpu", seed=7)
    got = net.init_params(xp.namespace, xp.float64, xp.device, seed=7)
    for a, b in zip(_tree.tree_leaves(ref), _tree.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), xp.to_np(b))
    other = net.init_params(np, np.float64, "cpu", seed=8)
    assert not np.allclose(ref["w_z"][0], other["w_z"][0])


def test_identity_init_is_half_squared_norm_plus_hidden():
    """Final layer ½‖x‖²: with the hidden layers switched off, ∇f = id."""
    net = ot.neural.ICNN(2, dim_hidden=(4,))
    params = net.init_params(np, np.float64, "cpu", seed=0)
    params["w_x"][0]["bias"] = np.full(4, -1e3)  # hidden units off
    params["w_x"][1]["bias"] = np.full(1, -1e3)
    x = np.random.default_rng(0).normal(size=(5, 2))
    np.testing.assert_allclose(net.apply(params, x), 0.5 * np.sum(x**2, 1), rtol=1e-14)


def _spd(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q @ np.diag(rng.uniform(0.5, 2.0, d)) @ q.T


def _sqrtm(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(w)) @ v.T


def test_gaussian_map_matches_closed_form(xp):
    rng = np.random.default_rng(0)
    d = 3
    s1, s2 = _spd(rng, d), _spd(rng, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    n = 200
    # samples whose empirical mean/covariance are exactly (m, S): whitened then coloured
    z = rng.normal(size=(n, d))
    z = z - z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T)).T)
    x = m1 + z @ np.linalg.cholesky(s1).T
    y = m2 + z @ np.linalg.cholesky(s2).T
    h = _sqrtm(s1)
    hi = np.linalg.inv(h)
    a_ref = hi @ _sqrtm(h @ s2 @ h) @ hi
    a, b = gaussian_map(xp.to_xp(x), xp.to_xp(y))
    # the 1e-6 ridge on Σs shifts A by ~1e-6 relative
    np.testing.assert_allclose(xp.to_np(a), a_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xp.to_np(b), m2 - a_ref @ m1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a_ref @ s1 @ a_ref, s2, atol=1e-10)  # reference sanity


def test_gaussian_init_final_layer_is_bures_map():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 2))
    y = 1.5 + x @ np.array([[2.0, 0.3], [0.0, 0.5]])
    net = ot.neural.ICNN(2, dim_hidden=(4,), init="gaussian", gaussian_map_samples=(x, y))
    params = net.init_params(np, np.float64, "cpu", seed=0)
    params["w_x"][0]["bias"] = np.full(4, -1e3)
    params["w_x"][1]["bias"] = np.full(1, -1e3)
    a, b = gaussian_map(x, y)
    pts = rng.normal(size=(6, 2))
    # f(x) = ½ xᵀAx + bᵀx: check through a finite difference of the exact quadratic
    expected = 0.5 * np.einsum("ni,ij,nj->n", pts, a, pts) + pts @ b
    np.testing.assert_allclose(net.apply(params, pts), expected, rtol=1e-12, atol=1e-12)


def test_potential_mlp_shapes_and_values(xp):
    pot = ot.neural.PotentialMLP(3, dim_hidden=(8, 8))
    grad_net = ot.neural.PotentialMLP(3, dim_hidden=(8, 8), is_potential=False)
    x = xp.to_xp(np.random.default_rng(0).normal(size=(5, 3)))
    v = pot.apply(pot.init_params(xp.namespace, xp.float64, xp.device), x)
    g = grad_net.apply(grad_net.init_params(xp.namespace, xp.float64, xp.device), x)
    assert tuple(v.shape) == (5,) and tuple(g.shape) == (5, 3)
    assert pot.is_potential and not grad_net.is_potential


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim_data": 0}, "dim_data"),
        ({"dim_data": 2, "dim_hidden": (4, 0)}, "dim_hidden"),
        ({"dim_data": 2, "init": "zeros"}, "init"),
        ({"dim_data": 2, "ranks": -1}, "ranks"),
        ({"dim_data": 2, "dim_hidden": ()}, "dim_hidden"),
    ],
)
def test_icnn_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ot.neural.ICNN(**kwargs)


def test_gaussian_init_without_samples_errors():
    net = ot.neural.ICNN(2, dim_hidden=(4,), init="gaussian")
    with pytest.raises(ValueError, match="gaussian_map_samples"):
        net.init_params(np, np.float64, "cpu")
