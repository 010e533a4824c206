"""PyTorch: the implicit rules under ``torch.func`` and higher-order autograd (float64).

* 2-D ``Grid``: gradients of the potentials and of ``reg_ot_cost`` (``use_danskin=False``)
  w.r.t. weights and grid axes are finite and equal central finite differences and the
  same problem as a ``PointCloud`` (the reproducer of issue 10);
* ``torch.autograd.gradcheck`` / ``gradgradcheck`` on the implicit potentials;
* ``torch.func.grad`` and ``torch.func.hessian`` (points and weights) equal finite
  differences and ``torch.autograd.functional.hessian``;
* ``torch.func.vmap(torch.func.grad(f))`` over a batch of 8 point clouds equals a loop of
  ``torch.autograd.grad`` (envelope and implicit), also with ε computed from each cloud;
  ``torch.func.vmap`` of a solve equals the loop of solves; the barycenter's fixed-point
  rule under ``torch.func.grad`` / ``vmap`` equals ``torch.autograd.grad`` and finite
  differences.

Cotangents are fixed random vectors, independent of the inputs; for balanced problems they
are gauge-invariant (``Σv = Σu`` on ``(f, g)``) and weights move along zero-sum directions.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import otcore as ot

torch = pytest.importorskip("torch")

TOL = 1e-12
H = 1e-5


def t(v):
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


def rng(seed=0):
    return np.random.default_rng(seed)


def fd(fun, x, d, h=H):
    """Central difference of scalar ``fun`` at ``x`` along ``d``."""
    with torch.no_grad():
        return float((fun(x + h * d) - fun(x - h * d)) / (2 * h))


def zero_sum(r, n):
    v = r.normal(size=n)
    return t(v - v.mean())


def assert_close(actual, expected, rtol, what=""):
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert bool(torch.all(torch.isfinite(actual))), (what, actual)
    scale = float(expected.abs().max())
    assert scale > 0, what
    err = float((actual - expected).abs().max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


# -- the 2-D Grid through the implicit rule (issue 10) -----------------------------------------

GRID_SHAPE = (4, 3)


def grid_axes():
    return [t(np.linspace(0.0, 1.0, 4)), t(np.linspace(0.0, 0.8, 3))]


def grid_points(axes):
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def test_grid_2d_potentials_gradient_is_finite_issue_reproducer():
    a = torch.full((12,), 1 / 12, dtype=torch.float64, requires_grad=True)
    out = ot.solve(ot.Grid(shape=GRID_SHAPE, epsilon=0.1), a, a.detach(), threshold=TOL)
    (ga,) = torch.autograd.grad(out.f.sum(), a)
    assert ga.shape == (12,) and bool(torch.all(torch.isfinite(ga)))


@pytest.mark.parametrize("geometry", ["grid", "pointcloud"])
def test_grid_2d_potentials_gradient_matches_fd(geometry):
    r = rng(1)
    b = t(r.uniform(0.5, 1.0, 12))
    b = b / b.sum()
    v = zero_sum(r, 12)  # <v, f>: invariant under the gauge (f + c, g - c)
    direction = zero_sum(r, 12)

    def make(axes):
        if geometry == "grid":
            return ot.Grid(axes=axes, epsilon=0.1)
        return ot.PointCloud(grid_points(axes), epsilon=0.1)

    def loss(a):
        return torch.sum(v * ot.solve(make(grid_axes()), a, b, threshold=TOL).f)

    a0 = torch.full((12,), 1 / 12, dtype=torch.float64)
    a = a0.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(loss(a), a)
    assert abs(float(ga @ direction) - fd(loss, a0, direction)) <= 1e-7 * float(ga.abs().max())
    # the same problem as a point cloud on the grid's points (another code path)
    pa = a0.clone().requires_grad_(True)
    pts = grid_points(grid_axes())
    out = ot.solve(ot.PointCloud(pts, epsilon=0.1), pa, b, threshold=TOL)
    (gp,) = torch.autograd.grad(torch.sum(v * out.f), pa)
    assert_close(ga - ga.mean(), gp - gp.mean(), 1e-9, "grid vs point cloud")


def test_grid_2d_implicit_cost_gradients_match_fd():
    """``reg_ot_cost`` with ``use_danskin=False``: weights and both grid axes."""
    r = rng(2)
    a0 = t(r.uniform(0.5, 1.0, 12))
    a0 = a0 / a0.sum()
    b = t(r.uniform(0.5, 1.0, 12))
    b = b / b.sum()
    ax0 = grid_axes()

    def cost(a, axes):
        geom = ot.Grid(axes=axes, epsilon=0.1)
        return ot.solve(geom, a, b, threshold=TOL, use_danskin=False).reg_ot_cost

    a = a0.clone().requires_grad_(True)
    axes = [x.clone().requires_grad_(True) for x in ax0]
    ga, g0, g1 = torch.autograd.grad(cost(a, axes), (a, *axes))
    da = zero_sum(r, 12)
    d0, d1 = t(r.normal(size=4)), t(r.normal(size=3))
    fa = fd(lambda s: cost(s, ax0), a0, da)
    fx = fd(lambda s: cost(a0, [ax0[0] + s * d0, ax0[1] + s * d1]), t(0.0), t(1.0))
    assert abs(float(ga @ da) - fa) <= 1e-7 * abs(fa)
    assert abs(float(g0 @ d0 + g1 @ d1) - fx) <= 1e-7 * abs(fx)


# -- gradcheck / gradgradcheck -----------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.8], ids=["balanced", "unbalanced"])
def test_implicit_potentials_gradcheck_and_gradgradcheck(tau):
    """Points (and, unbalanced, where the weights are free, the weights too)."""
    r = rng(3)
    x0, y0 = t(r.normal(size=(4, 2))), t(r.normal(size=(3, 2)))
    a0, b0 = t(r.uniform(0.2, 0.4, 4)), t(r.uniform(0.2, 0.4, 3))
    v = t(r.normal(size=4))
    u = t(r.normal(size=3))
    u = u + (v.sum() - u.sum()) / 3  # gauge-invariant

    def potentials(x, y, a, b):
        geom = ot.PointCloud(x, y, epsilon=2.0)  # few iterations: gradgradcheck solves often
        out = ot.solve(geom, a, b, tau_a=tau, tau_b=tau, threshold=TOL)
        return torch.sum(v * out.f) + torch.sum(u * out.g)

    if tau == 1.0:
        a0, b0 = a0 / a0.sum(), b0 / b0.sum()
    inputs = [s.clone().requires_grad_(tau < 1.0 or i < 2) for i, s in enumerate((x0, y0, a0, b0))]
    assert torch.autograd.gradcheck(potentials, inputs, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(potentials, inputs, eps=1e-6, atol=1e-6)


# -- torch.func.grad / hessian -----------------------------------------------------------------


def cloud_problem(seed=4, n=5, m=4):
    r = rng(seed)
    x, y = t(r.normal(size=(n, 2))), t(r.normal(size=(m, 2)))
    a = t(r.uniform(0.5, 1.0, n))
    return x, y, a / a.sum(), r


IMPLICIT = dict(threshold=TOL, implicit_diff=ot.ImplicitDiff())


@pytest.mark.parametrize("use_danskin", [True, False])
def test_func_grad_matches_fd_points_and_weights(use_danskin):
    x0, y, a0, r = cloud_problem()
    kw = dict(IMPLICIT, use_danskin=use_danskin)

    def cost(x, a):
        return ot.reg_ot_cost(x, y, a=a, epsilon=0.5, **kw)

    gx, ga = torch.func.grad(cost, argnums=(0, 1))(x0, a0)
    dx, da = t(r.normal(size=x0.shape)), zero_sum(r, 5)
    fx, fa = fd(lambda s: cost(s, a0), x0, dx), fd(lambda s: cost(x0, s), a0, da)
    assert abs(float(torch.sum(gx * dx)) - fx) <= 1e-7 * abs(fx)
    assert abs(float(ga @ da) - fa) <= 1e-7 * abs(fa)


@pytest.mark.parametrize("wrt", ["points", "weights"])
def test_func_hessian_matches_autograd_and_fd(wrt):
    x0, y, a0, r = cloud_problem()
    kw = dict(IMPLICIT, use_danskin=False)
    if wrt == "points":
        arg0 = x0

        def cost(x):
            return ot.reg_ot_cost(x, y, a=a0, epsilon=0.5, **kw)

        direction = t(r.normal(size=x0.shape))
    else:
        arg0 = a0

        def cost(a):
            return ot.reg_ot_cost(x0, y, a=a, epsilon=0.5, **kw)

        direction = zero_sum(r, 5)
    hf = torch.func.hessian(cost)(arg0)
    ha = torch.autograd.functional.hessian(cost, arg0)
    assert_close(hf, ha, 1e-10, "torch.func.hessian vs autograd.functional.hessian")
    k = arg0.numel()
    hv = (hf.reshape(k, k) @ direction.reshape(k)).reshape(arg0.shape)
    grad = torch.func.grad(cost)
    with torch.no_grad():
        ref = (grad(arg0 + H * direction) - grad(arg0 - H * direction)) / (2 * H)
    if wrt == "weights":  # balanced: only the zero-sum part of a weight gradient is defined
        hv, ref = hv - hv.mean(), ref - ref.mean()
    assert_close(hv, ref, 1e-6, "Hessian-vector product vs finite differences")


# -- torch.func.vmap ---------------------------------------------------------------------------


def loop_of_autograd(fun, xs):
    grads = []
    for x in xs:
        x = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(fun(x), x)[0])
    return torch.stack(grads)


@pytest.mark.parametrize("use_danskin", [True, False])
@pytest.mark.parametrize("epsilon", [0.5, None], ids=["eps", "default-eps"])
def test_vmap_grad_over_point_clouds_equals_loop(use_danskin, epsilon):
    r = rng(5)
    xs = t(r.normal(size=(8, 5, 2))) * t(r.uniform(0.5, 2.0, size=(8, 1, 1)))
    y = t(r.normal(size=(4, 2)))
    kw = dict(IMPLICIT, use_danskin=use_danskin)

    def cost(x):
        return ot.reg_ot_cost(x, y, epsilon=epsilon, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # functorch's batching-rule notices
        batched = torch.func.vmap(torch.func.grad(cost))(xs)
    loop = loop_of_autograd(cost, xs)
    assert float((loop[0] - loop[1]).abs().max()) > 1e-3  # the entries differ
    assert_close(batched, loop, 1e-10, "vmap(grad) vs loop of autograd.grad")
    if epsilon is not None:  # a default ε is a statistic of the data held constant
        d = t(r.normal(size=(5, 2)))
        f0 = fd(cost, xs[3], d)
        assert abs(float(torch.sum(batched[3] * d)) - f0) <= 1e-7 * abs(f0)


def test_vmap_of_a_solve_equals_loop():
    """Each batch entry stops at its own convergence (like ``jax.vmap`` of a while loop)."""
    r = rng(6)
    xs = t(r.normal(size=(3, 5, 2))) * t([[[0.3]], [[1.0]], [[3.0]]])
    y = t(r.normal(size=(4, 2)))

    def solve(x):
        out = ot.solve(ot.PointCloud(x, y, epsilon=0.5), threshold=1e-8)
        return out.f, out.reg_ot_cost, out.n_iters

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        f, cost, n_iters = torch.func.vmap(solve)(xs)
    refs = [solve(x) for x in xs]
    assert len({int(ref[2]) for ref in refs}) > 1  # different iteration counts
    for i, (fr, cr, nr) in enumerate(refs):
        assert int(n_iters[i]) == int(nr)
        assert_close(f[i], fr, 1e-12, "potentials")
        assert_close(cost[i], cr, 1e-12, "cost")


def test_barycenter_fixed_point_rule_under_torch_func():
    r = rng(7)
    A = r.uniform(0.1, 1, size=(6, 2))
    A = t(A / A.sum(0))
    C0 = t(r.uniform(size=(6, 6)))
    w = t([0.3, 0.7])
    cot = t(r.normal(size=6))
    kw = dict(epsilon=0.1, threshold=1e-10, implicit_diff=ot.ImplicitDiff())

    def loss(C):
        return ot.barycenter(A, C, w, **kw) @ cot

    grad = torch.func.grad(loss)(C0)
    (ref,) = loop_of_autograd(loss, C0[None])
    assert_close(grad, ref, 1e-12, "torch.func.grad vs autograd.grad")
    d = t(r.normal(size=(6, 6)))
    f0 = fd(loss, C0, d, h=1e-6)
    assert abs(float(torch.sum(grad * d)) - f0) <= 1e-6 * abs(f0)
    _, tangent = torch.func.jvp(loss, (C0,), (d,))  # forward mode, one direction
    assert abs(float(tangent) - float(torch.sum(ref * d))) <= 1e-10 * abs(f0)
    Cs = C0 + 0.2 * t(r.uniform(size=(3, 6, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        batched = torch.func.vmap(torch.func.grad(loss))(Cs)
    assert_close(batched, loop_of_autograd(loss, Cs), 1e-10, "vmap(grad) vs loop")


# -- one derivative: the manual pull-back equals the autodiff path on every geometry ------------


def geometry_cases():
    r = rng(8)
    x, y = t(r.normal(size=(6, 2))), t(r.normal(size=(5, 2)))
    ax1, ax2 = [t(np.linspace(0, 1, 4)), t(np.linspace(0, 0.8, 3))], [t(np.linspace(0, 1, 5))]
    return {
        "dense": (lambda s: ot.Geometry(s[0], epsilon=0.3), [torch.cdist(x, y) ** 2], 6, 5),
        "pointcloud": (lambda s: ot.PointCloud(*s, epsilon=0.3), [x, y], 6, 5),
        "online": (lambda s: ot.PointCloud(*s, epsilon=0.3, batch_size=2), [x, y], 6, 5),
        "eps-array": (lambda s: ot.PointCloud(s[0], s[1], epsilon=s[2]), [x, y, t(0.3)], 6, 5),
        "grid-1d": (lambda s: ot.Grid(axes=s, epsilon=0.1), ax2, 5, 5),
        "grid-2d": (lambda s: ot.Grid(axes=s, epsilon=0.1), ax1, 12, 12),
    }


@pytest.mark.parametrize("tau", [1.0, 0.8], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("name", list(geometry_cases()))
def test_manual_pullback_equals_autodiff_conditions(name, tau):
    """``ImplicitSystem.pullback`` (the NumPy/CuPy rules' hand-written ``(∂G/∂θ)ᵀ``) equals
    the PyTorch rule (``torch.func.vjp`` of the conditions) for every differentiable array."""
    from otcore.implicit.system import ImplicitSystem

    make, arrays, n, m = geometry_cases()[name]
    r = rng(9)
    a, b = t(r.uniform(0.5, 1, n)), t(r.uniform(0.5, 1, m))
    a, b = a / a.sum(), b / b.sum()
    v, u = t(r.normal(size=n)), t(r.normal(size=m))
    u = u + (v.sum() - u.sum()) / m  # gauge-invariant in the balanced case
    leaves = [s.clone().requires_grad_(True) for s in (*arrays, a, b)]
    k = len(arrays)
    prob = ot.LinearProblem(make(leaves[:k]), leaves[k], leaves[k + 1], tau_a=tau, tau_b=tau)
    out = ot.Sinkhorn(threshold=TOL)(prob)
    auto = torch.autograd.grad(torch.sum(v * out.f) + torch.sum(u * out.g), leaves)
    plain = ot.LinearProblem(make(arrays), a, b, tau_a=tau, tau_b=tau)
    system = ImplicitSystem(plain, out.f.detach(), out.g.detach(), ot.ImplicitDiff())
    manual = system.pullback(*system.solve(v, u))
    assert len(manual) == len(auto) == k + 2
    for i, (ga, gm) in enumerate(zip(auto, manual)):
        if tau == 1.0 and i >= k:  # balanced weights: defined up to a constant
            ga, gm = ga - ga.mean(), gm - gm.mean()
        assert_close(gm, ga, 1e-12, f"{name} leaf {i}")


# -- forward mode ------------------------------------------------------------------------------


def test_forward_mode_potentials_and_nested_forward_error():
    """``torch.func.jacfwd`` and ``torch.autograd.forward_ad`` go through the implicit rule
    (tangents of the potentials equal the reverse-mode Jacobian); forward mode inside
    another derivative (which PyTorch would not differentiate) raises."""
    import torch.autograd.forward_ad as fwad

    x0, y, a0, r = cloud_problem()
    v = t(r.normal(size=5))
    u = t(r.normal(size=4))
    u = u + (v.sum() - u.sum()) / 4

    def pot(x):
        out = ot.solve(ot.PointCloud(x, y, epsilon=0.5), a0, threshold=TOL)
        return torch.sum(v * out.f) + torch.sum(u * out.g)

    reverse = torch.func.grad(pot)(x0)
    assert_close(torch.func.jacfwd(pot)(x0), reverse, 1e-10, "jacfwd vs grad")
    d = t(r.normal(size=x0.shape))
    with fwad.dual_level():
        tangent = fwad.unpack_dual(pot(fwad.make_dual(x0, d))).tangent
    assert abs(float(tangent) - float(torch.sum(reverse * d))) <= 1e-10 * float(tangent.abs())
    with pytest.raises(NotImplementedError, match="forward mode only as the outermost"):
        torch.func.jacfwd(torch.func.jacfwd(pot))(x0)
    with pytest.raises(NotImplementedError, match="forward mode only as the outermost"):
        torch.func.jacrev(torch.func.jacfwd(pot))(x0)


@pytest.mark.parametrize("route", ["autograd", "func.hessian", "jacrev(jacrev)"])
def test_envelope_hessian_equals_implicit_hessian(route):
    """The default first-order mode (envelope, ``use_danskin=True``) differentiated twice is
    the exact Hessian on every PyTorch route: the envelope rule passes a zero first-order
    cotangent whose derivative still reaches the potentials' implicit rule. Reference:
    the Hessian with ``use_danskin=False`` and finite differences of the gradient."""
    r = rng(11)
    x = t(r.uniform(size=(5, 2)))
    y = t(r.uniform(size=(4, 2)))
    a, b = t(r.uniform(0.5, 1.5, 5)), t(r.uniform(0.5, 1.5, 4))
    a, b = a / a.sum(), b / b.sum()

    def cost(x_, use_danskin=True):
        out = ot.solve(
            ot.PointCloud(x_, y, epsilon=0.1), a, b, threshold=1e-12, use_danskin=use_danskin
        )
        return out.reg_ot_cost

    hess = {
        "autograd": lambda f: torch.autograd.functional.hessian(f, x),
        "func.hessian": lambda f: torch.func.hessian(f)(x),
        "jacrev(jacrev)": lambda f: torch.func.jacrev(torch.func.jacrev(f))(x),
    }[route]
    h_env = hess(cost)
    h_imp = torch.autograd.functional.hessian(lambda x_: cost(x_, use_danskin=False), x)
    assert_close(h_env, h_imp, 1e-10, "envelope vs implicit Hessian")
    d = t(r.normal(size=(5, 2)))

    def directional_grad(x_):
        (gx,) = torch.autograd.grad(cost(x_.requires_grad_(True)), x_)
        return float(torch.sum(gx * d))

    h = 1e-5
    fd_hd = (directional_grad(x + h * d) - directional_grad(x - h * d)) / (2 * h)
    assert abs(float(torch.einsum("ij,ijkl,kl->", d, h_env, d)) - fd_hd) <= 1e-6 * abs(fd_hd)
