"""Batched L-BFGS Fenchel conjugate: closed forms on every backend, autodiff on JAX/torch."""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot


def _quadratic(d, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(d, d))
    a = m @ m.T + 0.5 * np.eye(d)
    b = rng.normal(size=d)
    return a, b


def test_conjugate_of_quadratic_closed_form(xp):
    """f(x) = ½xᵀAx + bᵀx: f*(y) = ½(y−b)ᵀA⁻¹(y−b), x*(y) = A⁻¹(y−b)."""
    d = 5
    a, b = _quadratic(d)
    y = np.random.default_rng(1).normal(size=(16, d)) * 3
    A, B = xp.to_xp(a), xp.to_xp(b)

    def f(x):
        return 0.5 * xp.sum((x @ A) * x, axis=-1) + x @ B

    def vg(x):
        return f(x), x @ A + B[None, :]

    out = ot.neural.FenchelConjugateLBFGS(max_iter=60, gtol=1e-9).solve(
        f, xp.to_xp(y), value_and_grad=vg
    )
    x_star = np.linalg.solve(a, (y - b).T).T
    val = 0.5 * np.sum((y - b) * x_star, axis=1)
    np.testing.assert_allclose(xp.to_np(out.grad), x_star, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(xp.to_np(out.val), val, rtol=1e-9, atol=1e-9)
    assert 0 < int(out.num_iter) <= 60


@pytest.mark.parametrize("condition", ["armijo", "strong-wolfe"])
def test_conjugate_autodiff_smooth_nonquadratic(condition):
    """f(x) = logsumexp(Wx) + ½‖x‖² via torch autograd: first-order optimality ∇f(x*) = y
    and the conjugate value matches scipy's minimiser."""
    torch = pytest.importorskip("torch")
    from scipy.optimize import minimize

    rng = np.random.default_rng(2)
    w = torch.tensor(rng.normal(size=(6, 3)))
    y = torch.tensor(rng.normal(size=(8, 3)))

    def f(x):
        return torch.logsumexp(x @ w.T, dim=-1) + 0.5 * (x * x).sum(-1)

    solver = ot.neural.FenchelConjugateLBFGS(gtol=1e-10, max_iter=50, condition=condition)
    out = solver.solve(f, y)
    x = out.grad.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    np.testing.assert_allclose(g.numpy(), y.numpy(), atol=1e-8)
    for i in range(3):
        res = minimize(
            lambda v, i=i: float(f(torch.tensor(v)[None])[0] - torch.tensor(v) @ y[i]),
            np.zeros(3),
            method="BFGS",
            options={"gtol": 1e-10},
        )
        assert float(out.val[i]) == pytest.approx(-res.fun, abs=1e-10)


def test_conjugate_under_jax_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    a, b = _quadratic(3, seed=4)
    A, B = jnp.asarray(a), jnp.asarray(b)

    def f(x):
        return 0.5 * jnp.sum((x @ A) * x, axis=-1) + x @ B

    solver = ot.neural.FenchelConjugateLBFGS(max_iter=40, gtol=1e-10)
    y = jnp.asarray(np.random.default_rng(5).normal(size=(10, 3)))
    out = jax.jit(lambda y: solver.solve(f, y).grad)(y)
    np.testing.assert_allclose(
        np.asarray(out), np.linalg.solve(a, (np.asarray(y) - b).T).T, atol=1e-8
    )


def test_warm_start_at_solution_stops_at_once():
    a, b = _quadratic(2, seed=6)
    y = np.array([[0.3, -0.2]])
    x_star = np.linalg.solve(a, (y - b).T).T

    def vg(x):
        return 0.5 * np.sum((x @ a) * x, -1) + x @ b, x @ a + b

    out = ot.neural.FenchelConjugateLBFGS().solve(None, y, x_init=x_star, value_and_grad=vg)
    assert int(out.num_iter) == 0
    np.testing.assert_array_equal(out.grad, x_star)


def test_nonsmooth_never_increases_objective():
    """On a kinked function, each point ends no worse than where it started."""
    y = np.random.default_rng(7).normal(size=(32, 2))

    def vg(x):
        v = np.abs(x).sum(-1) * 2.0 + 0.5 * (x * x).sum(-1)
        return v, 2.0 * np.sign(x) + x

    short = ot.neural.FenchelConjugateLBFGS().solve(None, y, x_init=y, value_and_grad=vg)
    h0 = vg(y)[0] - (y * y).sum(-1)
    assert np.all(-short.val <= h0 + 1e-12)  # 20 iterations: not converged, never worse
    out = ot.neural.FenchelConjugateLBFGS(max_iter=200).solve(None, y, x_init=y, value_and_grad=vg)
    assert np.all(np.isfinite(out.val))
    assert np.all(-out.val <= h0 + 1e-12)
    # f = 2‖x‖₁ + ½‖x‖²: x* = soft-threshold(y, 2)
    x_star = np.sign(y) * np.maximum(np.abs(y) - 2.0, 0.0)
    np.testing.assert_allclose(out.grad, x_star, atol=1e-6)


def test_numpy_needs_value_and_grad():
    with pytest.raises(TypeError, match="automatic differentiation"):
        ot.neural.FenchelConjugateLBFGS().solve(lambda x: (x * x).sum(-1), np.ones((2, 2)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"linesearch_type": "zoom"}, "linesearch_type"),
        ({"linesearch_init": "foo"}, "linesearch_init"),
        ({"max_iter": 0}, "max_iter"),
        ({"gtol": -1.0}, "gtol"),
        ({"condition": "wolfe"}, "condition"),
    ],
)
def test_bad_solver_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ot.neural.FenchelConjugateLBFGS(**kwargs)


def test_bad_shapes():
    solver = ot.neural.FenchelConjugateLBFGS()
    vg = lambda x: ((x * x).sum(-1), 2 * x)  # noqa: E731
    with pytest.raises(ValueError, match="y must have shape"):
        solver.solve(None, np.ones(3), value_and_grad=vg)
    with pytest.raises(ValueError, match="x_init"):
        solver.solve(None, np.ones((3, 2)), x_init=np.ones((2, 2)), value_and_grad=vg)
