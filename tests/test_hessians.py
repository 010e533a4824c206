"""Second-order differentiation of ``reg_ot_cost`` (``use_danskin=False``, float64).

* JAX: ``jax.hessian`` and ``jax.jacrev(jax.jacrev(.))`` under ``jax.jit`` through the
  implicit rule agree with each other and with the unrolled Hessian (``implicit_diff=None``);
* Hessian-vector products equal central finite differences of the gradient;
* PyTorch ``torch.autograd.functional.hessian`` (and ``ot.hessian``/``ot.hvp`` on torch)
  equal JAX's;
* NumPy and array_api_strict: ``ot.hessian`` / ``ot.hvp`` (otcore's analytic rules) equal
  JAX's w.r.t. ``x`` and ``a``, and finite differences w.r.t. ``y`` and ``b``.

Balanced problems are only defined on the simplex, so their weight Hessians are compared
after projecting out the all-ones direction (``P H P`` with ``P = I - 11ᵀ/n``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _diff_cases import CASES, assert_rel, case_params, central_fd
from _helpers import make_backend

import otcore as ot

IMPLICIT = {"use_danskin": False}
HCASES = ("balanced", "unbalanced")


def blocks_to_matrix(blocks, shapes):
    """Nested ``((H_xx, H_xa), (H_ax, H_aa))`` -> one square matrix over ``(vec x, a)``."""
    sizes = [int(np.prod(s)) for s in shapes]
    return np.block(
        [[np.asarray(blocks[i][j]).reshape(sizes[i], sizes[j]) for j in range(2)] for i in range(2)]
    )


def projector(case):
    """Identity on ``vec x``; on ``a``, projection onto zero-sum vectors if balanced."""
    nx, n = case.x.size, case.a.size
    q = np.eye(nx + n)
    if case.balanced:
        q[nx:, nx:] -= 1.0 / n
    return q


def project(case, h):
    q = projector(case)
    return q @ h @ q


@functools.cache
def jax_hessians(case_name):
    """JAX Hessians w.r.t. ``(x, a)`` in one jitted function: ``jax.hessian`` through the
    implicit rule, ``jax.hessian`` unrolled and, for the balanced problem (one is enough:
    the rule is the same, and each form costs seconds of compilation), ``jacrev(jacrev)``
    through the implicit rule (``None`` otherwise)."""
    import jax
    import jax.numpy as jnp

    case = CASES[case_name]

    def cost(mode):
        return lambda x, y, a, b: ot.reg_ot_cost(x, y, a, b, **case.kwargs(**mode))

    def all_forms(*args):
        return (
            jax.hessian(cost(IMPLICIT), argnums=(0, 2))(*args),
            jax.hessian(cost({"implicit_diff": None}), argnums=(0, 2))(*args),
            jax.jacrev(jax.jacrev(cost(IMPLICIT), argnums=(0, 2)), argnums=(0, 2))(*args)
            if case.balanced
            else None,
        )

    out = jax.jit(all_forms)(*(jnp.asarray(t) for t in case.args))
    shapes = (case.x.shape, case.a.shape)
    return tuple(None if h is None else blocks_to_matrix(h, shapes) for h in out)


@pytest.mark.parametrize("case", case_params(*HCASES))
def test_jax_hessian_jacrev_jacrev_and_unrolled_agree(case):
    hess, unrolled, jrjr = jax_hessians(case.name)
    assert np.abs(hess).max() > 0.1
    assert_rel(hess.T, hess, 1e-10, "symmetry")
    if jrjr is not None:
        assert_rel(jrjr, hess, 1e-10, "jacrev(jacrev) vs hessian")
    assert_rel(project(case, unrolled), project(case, hess), 1e-6, "unrolled vs implicit")
    if not case.balanced:  # no gauge: every direction of the weights is defined
        assert_rel(unrolled, hess, 1e-6, "unrolled vs implicit, unprojected")


@pytest.mark.parametrize("case", case_params(*HCASES))
def test_hessian_vector_products_equal_finite_differences_of_the_gradient(case):
    """``H δ`` against central differences of the (exact, envelope) NumPy gradient along
    random directions ``δ`` of ``(x, a)`` (``a``: zero-sum for a balanced problem)."""
    hess = jax_hessians(case.name)[0]
    x, y, a, b = case.args
    nx = x.size
    rng = np.random.default_rng(5)
    q = projector(case)

    def grad_at(z):
        gx, ga = ot.grad(ot.reg_ot_cost, argnums=(0, 2))(
            z[:nx].reshape(x.shape), y, z[nx:], b, **case.kwargs()
        )
        return np.concatenate([gx.ravel(), ga])

    z0 = np.concatenate([x.ravel(), a])
    for which in ("x", "a", "both"):
        delta = rng.normal(size=z0.size)
        if which == "x":
            delta[nx:] = 0.0
        elif which == "a":
            delta[:nx] = 0.0
        delta = 0.1 * (q @ delta)
        h = 1e-5
        fd = (grad_at(z0 + h * delta) - grad_at(z0 - h * delta)) / (2 * h)
        # central differences: h² truncation and 1e-13/h solution noise, ~1e-8 relative
        assert_rel(q @ (hess @ delta), q @ fd, 1e-5, which)


@pytest.mark.parametrize("case", case_params(*HCASES))
def test_torch_hessian_equals_jax(case):
    import torch

    hess = jax_hessians(case.name)[0]
    x, y, a, b = (torch.asarray(t) for t in case.args)
    kw = case.kwargs(**IMPLICIT)
    blocks = torch.autograd.functional.hessian(
        lambda x, a: ot.reg_ot_cost(x, y, a, b, **kw), (x, a)
    )
    h_torch = blocks_to_matrix([[t.numpy() for t in row] for row in blocks], (x.shape, a.shape))
    assert_rel(project(case, h_torch), project(case, hess), 1e-8, "functional.hessian")
    # otcore's framework-neutral second-order API on torch tensors
    nx = case.x.size
    h_xx = ot.hessian(ot.reg_ot_cost, argnums=0)(x, y, a, b, **kw).numpy()
    assert_rel(h_xx.reshape(nx, nx), hess[:nx, :nx], 1e-8, "ot.hessian")
    v = np.random.default_rng(1).normal(size=case.x.shape)
    hv = ot.hvp(ot.reg_ot_cost, argnums=0)(x, y, a, b, **kw)(torch.asarray(v)).numpy()
    assert_rel(hv.ravel(), hess[:nx, :nx] @ v.ravel(), 1e-8, "ot.hvp")


def test_jax_hvp_through_ot_hvp():
    import jax.numpy as jnp

    case = CASES["balanced"]
    hess = jax_hessians(case.name)[0]
    nx = case.x.size
    v = np.random.default_rng(2).normal(size=case.x.shape)
    product = ot.hvp(ot.reg_ot_cost, argnums=0)(
        *(jnp.asarray(t) for t in case.args), **case.kwargs(**IMPLICIT)
    )
    assert_rel(np.asarray(product(jnp.asarray(v))).ravel(), hess[:nx, :nx] @ v.ravel(), 1e-8)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("case", case_params(*HCASES))
def test_manual_hessian_and_hvp_equal_jax(backend, case):
    """otcore's analytic second-order rules (no autodiff) w.r.t. ``x`` and ``a``."""
    be = make_backend(backend)
    hess = jax_hessians(case.name)[0]
    args = [be.to_xp(t) for t in case.args]
    kw = case.kwargs(**IMPLICIT)
    nx, n = case.x.size, case.a.size
    h_xx = be.to_np(ot.hessian(ot.reg_ot_cost, argnums=0)(*args, **kw)).reshape(nx, nx)
    assert_rel(h_xx, hess[:nx, :nx], 1e-8, "d2/dx2")
    h_aa = be.to_np(ot.hessian(ot.reg_ot_cost, argnums=2)(*args, **kw))
    p = np.eye(n) - (1.0 / n if case.balanced else 0.0)
    assert_rel(p @ h_aa @ p, p @ hess[nx:, nx:] @ p, 1e-8, "d2/da2")
    rng = np.random.default_rng(3)
    vx, va = rng.normal(size=case.x.shape), p @ rng.normal(size=n)
    hv_x = ot.hvp(ot.reg_ot_cost, argnums=0)(*args, **kw)(be.to_xp(vx))
    assert_rel(be.to_np(hv_x).ravel(), hess[:nx, :nx] @ vx.ravel(), 1e-8, "hvp x")
    hv_a = ot.hvp(ot.reg_ot_cost, argnums=2)(*args, **kw)(be.to_xp(va))
    assert_rel(p @ be.to_np(hv_a), p @ hess[nx:, nx:] @ va, 1e-8, "hvp a")


@pytest.mark.parametrize("case", case_params("unbalanced", "zero_weights", "n_lt_m", "online"))
def test_manual_hessians_wrt_y_and_b_equal_finite_differences(case):
    """The NumPy rules for the second argument and the second weights (both Schur
    branches: n > m and n < m; zero weights; online blocks), column by column."""
    x, y, a, b = case.args
    kw = case.kwargs(**IMPLICIT)

    def grads(y_, b_):
        return ot.grad(ot.reg_ot_cost, argnums=(1, 3))(x, y_, a, b_, **case.kwargs())

    h_yy = ot.hessian(ot.reg_ot_cost, argnums=1)(x, y, a, b, **kw).reshape(y.size, y.size)
    rng = np.random.default_rng(4)
    h = 1e-5
    for _ in range(3):
        dy = rng.normal(size=y.shape)
        fd = (grads(y + h * dy, b)[0] - grads(y - h * dy, b)[0]) / (2 * h)
        assert_rel(h_yy @ dy.ravel(), fd.ravel(), 1e-5, "y")
    h_bb = ot.hessian(ot.reg_ot_cost, argnums=3)(x, y, a, b, **kw)
    support = b > 0
    for _ in range(3):
        db = rng.normal(size=b.shape) * support
        if case.balanced:
            db = db - support * db.sum() / support.sum()
        fd = (grads(y, b + h * db)[1] - grads(y, b - h * db)[1]) / (2 * h)
        hb = h_bb @ db
        if case.balanced:
            fd, hb = (np.where(support, t - t[support].mean(), 0.0) for t in (fd, hb))
        assert_rel(hb[support], fd[support], 1e-5, "b")


def test_manual_hvp_without_y_equals_finite_differences():
    """``y=None`` (x against itself): the rule adds both sides' second derivatives."""
    case = CASES["balanced"]
    x = case.x
    kw = dict(epsilon=0.1, threshold=1e-13, use_danskin=False)
    hv = ot.hvp(ot.reg_ot_cost)(x, **kw)
    rng = np.random.default_rng(6)
    h = 1e-5
    for _ in range(2):
        v = rng.normal(size=x.shape)
        fd = (
            ot.grad(ot.reg_ot_cost)(x + h * v, **kw) - ot.grad(ot.reg_ot_cost)(x - h * v, **kw)
        ) / (2 * h)
        assert_rel(hv(v), fd, 1e-5)


@pytest.mark.parametrize("cost", ["euclidean", ot.costs.PNorm(1.5)], ids=["euclidean", "pnorm1.5"])
def test_manual_hvp_of_other_costs_equals_finite_differences(cost):
    """The cost-specific second-order pieces (``jvp``, ``vjp_jvp``) of non-default costs."""
    case = CASES["unbalanced"]
    x, y, a, b = case.args
    kw = case.kwargs(cost=cost)
    rng = np.random.default_rng(8)
    h = 1e-5
    for argnum, arg in ((0, x), (1, y)):
        hv = ot.hvp(ot.reg_ot_cost, argnums=argnum)(x, y, a, b, use_danskin=False, **kw)

        def grad_at(t, argnum=argnum):
            args = [x, y, a, b]
            args[argnum] = t
            return ot.grad(ot.reg_ot_cost, argnums=argnum)(*args, **kw)

        v = rng.normal(size=arg.shape)
        fd = (grad_at(arg + h * v) - grad_at(arg - h * v)) / (2 * h)
        assert_rel(hv(v), fd, 1e-5, f"argnum {argnum}")
        g = grad_at(arg)
        fd_g = central_fd(
            lambda t, argnum=argnum: float(
                ot.reg_ot_cost(*[t if k == argnum else z for k, z in enumerate((x, y, a, b))], **kw)
            ),
            arg,
            1e-5,
        )
        assert_rel(g, fd_g, 1e-5, f"gradient argnum {argnum}")
