"""First-order differentiation of otcore: every backend, every mode, against references.

* ``reg_ot_cost`` w.r.t. ``x, y, a, b`` on a fixed set of problems (balanced, unbalanced,
  one-sided, zero weights, n < m, online): NumPy/array_api_strict (``ot.grad``, manual
  rules), JAX (``jax.grad``) and PyTorch (autograd) agree to 1e-8, and equal central finite
  differences (weights of balanced problems: zero-sum directions on the support);
* Danskin (envelope, the default) = implicit (``use_danskin=False``) = unrolled
  (``implicit_diff=None``), balanced *and* unbalanced (otcore's unbalanced updates are exact
  coordinate ascent for the reported objective, so the envelope gradient is exact);
* the potentials themselves: ``jax.vjp`` / torch ``autograd.grad`` with fixed random
  cotangents (not derived from the inputs), implicit = unrolled = finite differences;
* the cost matrix (``reg_ot_cost_matrix``: the gradient is the plan) and a 0-d array ε;
* OTT-JAX as an outside reference (balanced; unbalanced through an exact correspondence);
* ``jax.jit``/``jax.vmap`` of gradients, float32 runs, ``torch.autograd.gradcheck`` and
  ``gradgradcheck``, and the error paths of ``ot.grad``/``ot.hvp``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _diff_cases import (
    CASES,
    EPS,
    MAX_ITER,
    THRESHOLD,
    assert_rel,
    backend_grad,
    case_params,
    central_fd,
    centred,
    potential_cotangents,
    potentials_loss_np,
    simplex_directions,
    weight_view,
)
from _helpers import make_backend

import otcore as ot
from otcore.errors import UnsupportedDerivativeError

ARGNUMS = (0, 1, 2, 3)
NAMES = ("x", "y", "a", "b")


@functools.cache
def numpy_grad(case_name, **extra):
    """``ot.grad(ot.reg_ot_cost)`` on NumPy w.r.t. ``(x, y, a, b)`` (cached per problem)."""
    case = CASES[case_name]
    return ot.grad(ot.reg_ot_cost, argnums=ARGNUMS)(*case.args, **case.kwargs(**extra))


def numpy_cost(case, x=None, y=None, a=None, b=None, **extra):
    x, y, a, b = (case_v if v is None else v for v, case_v in zip((x, y, a, b), case.args))
    return float(ot.reg_ot_cost(x, y, a, b, **case.kwargs(**extra)))


def fd_weight_check(case, grad_w, which, fun_of_w, h=1e-6, rtol=1e-5):
    """Compare a weight gradient with central differences: zero-sum directions on the
    support for a balanced problem, coordinates of the support otherwise."""
    w = case.a if which == "a" else case.b
    if case.balanced:
        dirs = simplex_directions(w)
        fd = central_fd(fun_of_w, w, h, dirs)
        assert_rel(dirs @ grad_w, fd, rtol, which)
        assert_rel(centred(grad_w, w)[w > 0], fd, rtol, which)
    else:
        support = np.flatnonzero(w > 0)
        dirs = np.eye(w.size)[support]
        fd = central_fd(fun_of_w, w, h, dirs)
        assert_rel(np.asarray(grad_w)[support], fd, rtol, which)


# -- reg_ot_cost: finite differences and every backend ------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_reg_ot_cost_gradient_equals_finite_differences(case):
    gx, gy, ga, gb = numpy_grad(case.name)
    # float64, converged to 1e-13: central differences with h = 1e-5 are accurate to
    # ~1e-9 relative (h² truncation, 1e-13/h solution noise); a wrong term would be O(1)
    assert_rel(gx, central_fd(lambda x: numpy_cost(case, x=x), case.x, 1e-5), 1e-5, "x")
    assert_rel(gy, central_fd(lambda y: numpy_cost(case, y=y), case.y, 1e-5), 1e-5, "y")
    fd_weight_check(case, ga, "a", lambda a: numpy_cost(case, a=a))
    fd_weight_check(case, gb, "b", lambda b: numpy_cost(case, b=b))
    # no mass, no gradient from the transport: zero rows/columns of the plan
    assert np.all(gx[case.a == 0] == 0.0) and np.all(gy[case.b == 0] == 0.0)


@pytest.mark.parametrize("case", case_params())
def test_every_backend_gives_the_same_reg_ot_cost_gradient(xp, case):
    grads = backend_grad(xp, ot.reg_ot_cost, case.args, ARGNUMS, **case.kwargs())
    for name, g, ref in zip(NAMES, grads, numpy_grad(case.name)):
        assert g.dtype == np.float64
        # all entries, zero weights included (the rules mask them like the autodiff traces)
        assert_rel(g, ref, 1e-8, f"{xp.name} d/d{name}")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_ot_grad_and_vjp_dispatch_to_the_framework(backend):
    """``ot.grad`` / ``ot.value_and_grad`` / ``ot.vjp`` on JAX (under jit) and PyTorch give
    the native framework's numbers; the cotangent scales the pullback linearly."""
    be = make_backend(backend)
    case = CASES["unbalanced"]
    kw = case.kwargs()
    xs = [be.to_xp(v) for v in case.args]
    ref = numpy_grad(case.name)
    if backend == "jax":
        import jax

        run = jax.jit(
            lambda *z: (
                ot.value_and_grad(ot.reg_ot_cost, argnums=ARGNUMS)(*z, **kw),
                ot.vjp(ot.reg_ot_cost, *z, **kw)[1](be.asarray(-2.5))[1],
            )
        )
        (value, grads), dy = run(*xs)
    else:
        value, grads = ot.value_and_grad(ot.reg_ot_cost, argnums=ARGNUMS)(*xs, **kw)
        _, pullback = ot.vjp(ot.reg_ot_cost, *xs, **kw)
        dy = pullback(be.asarray(-2.5, dtype=be.float64))[1]
    assert float(value) == pytest.approx(numpy_cost(case), rel=1e-13)
    for name, g, r in zip(NAMES, grads, ref):
        assert_rel(be.to_np(g), r, 1e-8, name)
    assert_rel(be.to_np(dy), -2.5 * ref[1], 1e-8, "vjp")


@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_vjp_of_a_batch_with_a_fixed_cotangent(backend):
    """Batched problems ``x (2, n, d)``: the output is ``(2,)``; pull back a fixed cotangent
    (not ones, not derived from the inputs) with ``ot.vjp`` / ``jax.vjp`` / torch
    ``backward(gradient=...)`` and compare with differences of ``<c, cost>``."""
    be = make_backend(backend)
    case = CASES["unbalanced"]
    kw = case.kwargs(use_danskin=False)
    rng = np.random.default_rng(12)
    xs = np.stack([case.x, case.x + 0.3 * rng.normal(size=case.x.shape)])
    c = np.array([0.7, -1.3])
    args = (xs, case.y, case.a, case.b)
    if backend == "numpy":
        _, pull = ot.vjp(ot.reg_ot_cost, *args, **kw)
        gx, gy = pull(c)[:2]
    elif backend == "jax":
        import jax

        def run(*z):
            return jax.vjp(lambda x, y: ot.reg_ot_cost(x, y, *z[2:], **kw), *z[:2])[1](
                be.asarray(c)
            )

        gx, gy = (be.to_np(t) for t in jax.jit(run)(*(be.to_xp(t) for t in args)))
    else:
        X, Y = be.to_xp(xs).requires_grad_(True), be.to_xp(case.y).requires_grad_(True)
        ot.reg_ot_cost(X, Y, be.to_xp(case.a), be.to_xp(case.b), **kw).backward(
            gradient=be.to_xp(c)
        )
        gx, gy = X.grad.numpy(), Y.grad.numpy()

    def pairing(x=xs, y=case.y):
        return float(c @ ot.reg_ot_cost(x, y, case.a, case.b, **case.kwargs()))

    assert_rel(gx, central_fd(lambda t: pairing(x=t), xs, 1e-5), 1e-5, "x")
    assert_rel(gy, central_fd(lambda t: pairing(y=t), case.y, 1e-5), 1e-5, "y")


# -- Danskin = implicit = unrolled -----------------------------------------------------------

MODES = {
    "danskin": {},
    "implicit": {"use_danskin": False},
    "unrolled": {"implicit_diff": None},
}


DANSKIN_CASES = ("balanced", "unbalanced", "one_sided", "zero_weights", "online")
# JAX compiles each configuration (seconds each): the headline pair there, all on the others
JAX_CASES = ("balanced", "unbalanced")


@pytest.mark.parametrize(
    ("backend", "case"),
    [
        pytest.param(be, CASES[c], id=f"{be}-{c}")
        for be in ("numpy", "jax", "torch")
        for c in DANSKIN_CASES
        if be != "jax" or c in JAX_CASES
    ],
)
def test_danskin_implicit_and_unrolled_gradients_agree(backend, case):
    """The envelope gradient is exact at convergence for balanced and unbalanced problems
    (OTT-JAX's unbalanced envelope gradient is ~30 % off; otcore's must not be)."""
    be = make_backend(backend)
    # Danskin on every backend equals NumPy's (test above): NumPy's is the reference
    ref = numpy_grad(case.name)
    modes = ("implicit",) if backend == "numpy" else ("implicit", "unrolled")
    for mode in modes:
        grads = backend_grad(be, ot.reg_ot_cost, case.args, ARGNUMS, **case.kwargs(**MODES[mode]))
        for k, name in enumerate(NAMES):
            g, r = grads[k], ref[k]
            if k >= 2:  # weights: the defined part (balanced: only zero-sum directions)
                w = case.a if k == 2 else case.b
                g, r = weight_view(g, w, case.balanced), weight_view(r, w, case.balanced)
            assert_rel(g, r, 1e-6, f"{mode} d/d{name}")


# -- potentials: adapter tests with fixed cotangents ---------------------------------------


def potentials_vjp(be, case, v, u, **kw):
    """Pull fixed cotangents ``(v, u)`` of ``(f, g)`` back to ``(x, y, a, b)``:
    ``jax.vjp`` under jit, or torch ``autograd.grad`` with ``grad_outputs``."""
    if be.name.startswith("jax"):
        import jax

        def run(x, y, a, b):
            _, pull = jax.vjp(lambda *z: case.solve(*z, **kw).potentials, x, y, a, b)
            return pull((be.asarray(v), be.asarray(u)))

        grads = jax.jit(run)(*(be.to_xp(t) for t in case.args))
    else:
        import torch

        xs = [be.to_xp(t).requires_grad_(True) for t in case.args]
        out = case.solve(*xs, **kw)
        grads = torch.autograd.grad(out.potentials, xs, grad_outputs=(be.to_xp(v), be.to_xp(u)))
    return [be.to_np(g) for g in grads]


@functools.cache
def potentials_fd(case_name):
    """Central differences of ``<v, f> + <u, g>`` on NumPy w.r.t. x, y and the weights."""
    case = CASES[case_name]
    v, u = potential_cotangents(case)
    x, y, a, b = case.args

    def loss(**kw):
        args = {"x": x, "y": y, "a": a, "b": b, **kw}
        return potentials_loss_np(case, args["x"], args["y"], args["a"], args["b"], v, u)

    out = [
        central_fd(lambda t: loss(x=t), x, 1e-5),
        central_fd(lambda t: loss(y=t), y, 1e-5),
    ]
    for name, w in (("a", a), ("b", b)):
        dirs = simplex_directions(w) if case.balanced else np.eye(w.size)[w > 0]
        out.append((dirs, central_fd(lambda t, name=name: loss(**{name: t}), w, 1e-6, dirs)))
    return out


@pytest.mark.parametrize(
    ("backend", "case"),
    [
        pytest.param(be, case, id=f"{be}-{name}")
        for be in ("jax", "torch")
        for name, case in CASES.items()
        if be != "jax" or name in (*JAX_CASES, "zero_weights")
    ],
)
def test_potentials_vjp_implicit_equals_unrolled_and_finite_differences(backend, case):
    be = make_backend(backend)
    v, u = potential_cotangents(case)
    implicit = potentials_vjp(be, case, v, u)
    unrolled = potentials_vjp(be, case, v, u, implicit_diff=None)
    fd = potentials_fd(case.name)
    for k, name in enumerate(NAMES):
        if k < 2:
            assert_rel(implicit[k], fd[k], 1e-5, f"implicit d/d{name} vs FD")
            assert_rel(unrolled[k], implicit[k], 1e-6, f"unrolled d/d{name}")
        else:
            w = case.a if k == 2 else case.b
            dirs, fdw = fd[k]
            assert_rel(dirs @ implicit[k], fdw, 1e-5, f"implicit d/d{name} vs FD")
            assert_rel(
                weight_view(unrolled[k], w, case.balanced),
                weight_view(implicit[k], w, case.balanced),
                1e-6,
                f"unrolled d/d{name}",
            )


def test_potentials_vjp_is_linear_in_the_cotangent():
    """A cotangent that is not the all-ones/inputs-shaped default: the pullback of
    ``(2v, 0)`` plus that of ``(0, 2u)`` is twice that of ``(v, u)`` (torch, implicit)."""
    be = make_backend("torch")
    case = CASES["unbalanced"]
    v, u = potential_cotangents(case)
    both = potentials_vjp(be, case, v, u)
    only_f = potentials_vjp(be, case, 2 * v, 0 * u)
    only_g = potentials_vjp(be, case, 0 * v, 2 * u)
    for k in range(4):
        assert_rel(only_f[k] + only_g[k], 2 * both[k], 1e-12, NAMES[k])
        assert np.abs(only_f[k]).max() > 1e-3 and np.abs(only_g[k]).max() > 1e-3


def test_balanced_potentials_vjp_sees_only_the_gauge_free_part_of_a_cotangent():
    """Balanced: ``(f + c, g - c)`` is the same solution, so the implicit rule projects a
    cotangent orthogonally to ``(1, -1)`` (implicit.py): a cotangent with ``Σv != Σu``
    pulls back like its projection, finite (an unprojected singular solve would not)."""
    be = make_backend("torch")
    case = CASES["balanced"]
    rng = np.random.default_rng(13)
    v, u = rng.normal(size=case.a.size) + 1.0, rng.normal(size=case.b.size) - 1.0
    t = (v.sum() - u.sum()) / (v.size + u.size)
    raw = potentials_vjp(be, case, v, u)
    projected = potentials_vjp(be, case, v - t, u + t)
    for k, name in enumerate(NAMES):
        g, r = raw[k], projected[k]
        if k >= 2:
            w = case.a if k == 2 else case.b
            g, r = centred(g, w), centred(r, w)
        assert_rel(g, r, 1e-9, name)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_potentials_vjp_wrt_the_cost_matrix(backend):
    """Cost-matrix geometry: implicit pullback to ``C`` = unrolled = finite differences."""
    be = make_backend(backend)
    case = CASES["unbalanced"]
    v, u = potential_cotangents(case)
    C = ot.PointCloud(case.x, case.y).cost_matrix
    kw = dict(
        epsilon=EPS, tau_a=case.tau_a, tau_b=case.tau_b, threshold=THRESHOLD, max_iterations=2000
    )

    def vjp(**extra):
        if backend == "jax":
            import jax

            def run(c, a, b):
                _, pull = jax.vjp(lambda c: ot.solve(c, a, b, **kw, **extra).potentials, c)
                return pull((be.asarray(v), be.asarray(u)))[0]

            return be.to_np(jax.jit(run)(*(be.to_xp(t) for t in (C, case.a, case.b))))
        import torch

        c = be.to_xp(C).requires_grad_(True)
        out = ot.solve(c, be.to_xp(case.a), be.to_xp(case.b), **kw, **extra)
        (gc,) = torch.autograd.grad(out.potentials, c, grad_outputs=(be.to_xp(v), be.to_xp(u)))
        return be.to_np(gc)

    def loss(c):
        out = ot.solve(c, case.a, case.b, **kw)
        return float(v @ out.f + u @ out.g)

    implicit, unrolled = vjp(), vjp(implicit_diff=None)
    assert_rel(implicit, central_fd(loss, C, 1e-5), 1e-5, "FD")
    assert_rel(unrolled, implicit, 1e-6, "unrolled")


# -- cost matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "use_danskin"),
    [
        pytest.param(CASES[c], d, id=f"{c}-{'danskin' if d else 'implicit'}")
        for c, d in (
            ("balanced", True),
            ("unbalanced", True),
            ("zero_weights", True),
            ("unbalanced", False),
            ("zero_weights", False),
        )
    ],
)
def test_cost_matrix_gradient_is_the_plan_on_every_backend(xp, case, use_danskin):
    C = ot.PointCloud(case.x, case.y).cost_matrix
    kw = dict(epsilon=EPS, tau_a=case.tau_a, tau_b=case.tau_b, threshold=THRESHOLD)
    plan = ot.solve(C, case.a, case.b, **kw).matrix
    grads = backend_grad(
        xp, ot.reg_ot_cost_matrix, (C, case.a, case.b), (0, 1, 2), use_danskin=use_danskin, **kw
    )
    assert_rel(grads[0], plan, 1e-10, "dC")
    for k, ref in ((1, numpy_grad(case.name)[2]), (2, numpy_grad(case.name)[3])):
        w = case.a if k == 1 else case.b
        assert_rel(
            weight_view(grads[k], w, case.balanced), weight_view(ref, w, case.balanced), 1e-8
        )


def test_cost_matrix_gradient_equals_finite_differences():
    case = CASES["unbalanced"]
    C = ot.PointCloud(case.x, case.y).cost_matrix
    kw = dict(epsilon=EPS, tau_a=case.tau_a, tau_b=case.tau_b, threshold=THRESHOLD)
    g = ot.grad(ot.reg_ot_cost_matrix)(C, case.a, case.b, **kw)
    fd = central_fd(lambda c: float(ot.reg_ot_cost_matrix(c, case.a, case.b, **kw)), C, 1e-5)
    assert_rel(g, fd, 1e-6)


# -- epsilon as a 0-d array -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "case"),
    [
        pytest.param("jax", CASES["unbalanced"], id="jax-unbalanced"),
        pytest.param("torch", CASES["balanced"], id="torch-balanced"),
        pytest.param("torch", CASES["unbalanced"], id="torch-unbalanced"),
    ],
)
def test_epsilon_gradient_implicit_unrolled_and_finite_differences(backend, case):
    be = make_backend(backend)
    v, u = potential_cotangents(case)
    x, y, a, b = (be.to_xp(t) for t in case.args)

    def values(e, mode):
        out = case.solve(x, y, a, b, epsilon=e, **MODES[mode])
        f = be.where(a > 0, out.f, be.zeros_like(out.f))
        g = be.where(b > 0, out.g, be.zeros_like(out.g))
        return out.reg_ot_cost, be.sum(f * be.asarray(v)) + be.sum(g * be.asarray(u))

    results = {}
    if backend == "jax":
        import jax

        def all_modes(e):  # one compilation for the three modes
            return [jax.jacrev(lambda e, m=m: be.stack(values(e, m)))(e) for m in MODES]

        jacs = jax.jit(all_modes)(be.to_xp(np.asarray(EPS)))
        results = {m: np.asarray(j) for m, j in zip(MODES, jacs)}
    else:
        import torch

        for mode in MODES:
            e = be.to_xp(np.asarray(EPS)).requires_grad_(True)
            cost, pot = values(e, mode)
            (gc,) = torch.autograd.grad(cost, e, retain_graph=True)
            (gp,) = torch.autograd.grad(pot, e)
            results[mode] = np.array([float(gc), float(gp)])

    def np_values(e):
        out = case.solve(*case.args, epsilon=e)
        return np.array([out.reg_ot_cost, v @ out.f + u @ out.g])

    h = 1e-6
    fd = (np_values(EPS + h) - np_values(EPS - h)) / (2 * h)
    for mode, res in results.items():
        # (use_danskin only concerns the costs: the potentials are differentiated implicitly)
        assert_rel(res[0], fd[0], 1e-6, f"{mode} d cost/dε")
        assert_rel(res[1], fd[1], 1e-5, f"{mode} d potentials/dε")
    assert_rel(results["unrolled"], results["implicit"], 1e-6, "unrolled vs implicit")


def test_epsilon_gradient_with_zero_weights():
    import torch

    case = CASES["zero_weights"]
    e = torch.asarray(EPS, dtype=torch.float64, requires_grad=True)
    xs = [torch.asarray(t) for t in case.args]
    (g,) = torch.autograd.grad(ot.reg_ot_cost(*xs, **case.kwargs(epsilon=e)), e)
    h = 1e-6
    fd = (numpy_cost(case, epsilon=EPS + h) - numpy_cost(case, epsilon=EPS - h)) / (2 * h)
    assert_rel(float(g), fd, 1e-6)


# -- OTT-JAX as an outside reference ----------------------------------------------------------


def ott_output(x, y, a, b, tau_a=1.0, tau_b=1.0):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    geom = pointcloud.PointCloud(x, y, epsilon=EPS)  # ε absolute, as otcore's
    prob = linear_problem.LinearProblem(geom, a, b, tau_a=tau_a, tau_b=tau_b)
    return sinkhorn.Sinkhorn(threshold=THRESHOLD, max_iterations=MAX_ITER)(prob)


def test_ott_balanced_gradients_are_ours():
    """Same problem, same ε, same cost formula: OTT's jax.grad w.r.t. x and a (centred)."""
    pytest.importorskip("ott")
    import jax
    import jax.numpy as jnp

    case = CASES["balanced"]
    gx, ga = jax.jit(
        jax.grad(lambda *z: ott_output(*z).reg_ot_cost, argnums=(0, 2)),
    )(*(jnp.asarray(t) for t in case.args))
    ref = numpy_grad(case.name)
    assert_rel(np.asarray(gx), ref[0], 1e-6, "x")
    assert_rel(centred(np.asarray(ga), case.a), centred(ref[2], case.a), 1e-6, "a")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lineax, inside OTT
def test_ott_unbalanced_gradients_through_the_exact_correspondence():
    """OTT-JAX 0.6's unbalanced problem is not otcore's (docs/conventions.md: its updates
    ``g <- τ_b (ε log b - ε LSE(..))`` scale ``ε log b`` by τ too, and its reported cost is
    not the optimal value of the problem its potentials solve), so its ``reg_ot_cost``
    gradients are not comparable, with or without Danskin. What is comparable: OTT's
    fixed point on weights ``(a, b)`` is otcore's fixed point on ``(a^τ_a, b^τ_b)`` (same
    updates), so the plans are equal and so are the envelope gradients w.r.t. the points
    (``Σ P_ij ∂C_ij``, OTT's default Danskin rule), and the derivatives of the potentials
    w.r.t. the points (implicit differentiation of the same fixed point)."""
    pytest.importorskip("ott")
    import jax
    import jax.numpy as jnp
    import torch

    case = CASES["unbalanced"]
    ta, tb = case.tau_a, case.tau_b
    x, y, a, b = (jnp.asarray(t) for t in case.args)
    a_ours, b_ours = case.a**ta, case.b**tb
    ours = case.solve(case.x, case.y, a_ours, b_ours)
    ott = ott_output(x, y, a, b, ta, tb)
    np.testing.assert_allclose(np.asarray(ott.matrix), ours.matrix, rtol=0, atol=1e-12)

    def ott_both(x, y):
        def pot(x, y):
            out = ott_output(x, y, a, b, ta, tb)
            return out.f @ v + out.g @ u

        grads_cost = jax.grad(lambda x, y: ott_output(x, y, a, b, ta, tb).reg_ot_cost, (0, 1))
        return grads_cost(x, y), jax.grad(pot, (0, 1))(x, y)

    v, u = potential_cotangents(case)
    (gx, gy), (px, py) = jax.jit(ott_both)(x, y)
    ref = ot.grad(ot.reg_ot_cost, argnums=(0, 1))(case.x, case.y, a_ours, b_ours, **case.kwargs())
    assert_rel(np.asarray(gx), ref[0], 1e-6, "cost x")
    assert_rel(np.asarray(gy), ref[1], 1e-6, "cost y")
    xs = [torch.asarray(t, requires_grad=i < 2) for i, t in enumerate(case.args[:2])]
    out = case.solve(*xs, torch.asarray(a_ours), torch.asarray(b_ours))
    tx, ty = torch.autograd.grad(
        out.potentials, xs, grad_outputs=(torch.asarray(v), torch.asarray(u))
    )
    assert_rel(np.asarray(px), tx.numpy(), 1e-6, "potentials x")
    assert_rel(np.asarray(py), ty.numpy(), 1e-6, "potentials y")


# -- jit, vmap, float32 ------------------------------------------------------------------------


def test_jax_vmap_of_implicit_gradients_under_jit():
    """``jax.jit(jax.vmap(jax.grad))`` over a batch of point clouds, implicit mode (the
    custom linear solve is batched): each item equals its own NumPy gradient."""
    import jax
    import jax.numpy as jnp

    case = CASES["unbalanced"]
    rng = np.random.default_rng(11)
    xs = case.x[None] + 0.2 * rng.normal(size=(3, *case.x.shape))
    kw = case.kwargs(use_danskin=False)

    def grad_one(x, y, a, b):
        return jax.grad(lambda x, a: ot.reg_ot_cost(x, y, a, b, **kw), argnums=(0, 1))(x, a)

    batched = jax.jit(jax.vmap(grad_one, in_axes=(0, None, None, None)))
    gx, ga = batched(jnp.asarray(xs), *(jnp.asarray(t) for t in case.args[1:]))
    assert gx.shape == xs.shape and ga.shape == (3, case.a.size)
    for i in range(3):
        rx, ra = ot.grad(ot.reg_ot_cost, argnums=(0, 2))(xs[i], *case.args[1:], **kw)
        assert_rel(np.asarray(gx[i]), rx, 1e-8, f"x[{i}]")
        assert_rel(np.asarray(ga[i]), ra, 1e-8, f"a[{i}]")
    assert np.abs(np.asarray(gx[0] - gx[1])).max() > 1e-2  # the items really differ


@pytest.mark.parametrize("use_danskin", [True, False], ids=["danskin", "implicit"])
def test_float32_gradients_are_finite_float32_and_accurate(xp, use_danskin):
    case = CASES["unbalanced"]
    kw = case.kwargs(threshold=1e-5, use_danskin=use_danskin)
    args32 = [v.astype(np.float32) for v in case.args]
    be32 = _Float32(xp)
    grads = backend_grad(be32, ot.reg_ot_cost, args32, ARGNUMS, **kw)
    for name, g, ref in zip(NAMES, grads, numpy_grad(case.name)):
        assert g.dtype == np.float32, (name, g.dtype)
        # float32 and a 1e-5 marginal threshold: ~1e-5 relative; a wrong rule is O(1)
        assert_rel(g, ref, 2e-4, name)


class _Float32:
    """A conftest ``Backend`` whose conversions keep float32."""

    def __init__(self, be):
        self._be = be
        self.name = be.name

    def to_xp(self, arr):
        out = self._be.to_xp(arr, dtype=np.float32)
        assert out.dtype == self._be.float32
        return out

    def to_np(self, arr):
        return self._be.to_np(arr)

    def __getattr__(self, item):
        return getattr(self._be, item)


# -- torch gradcheck / gradgradcheck ---------------------------------------------------------

SMALL = dict(epsilon=0.3, threshold=1e-14, max_iterations=5000)


def small_problem():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(size=(4, 2)), rng.uniform(size=(3, 2))
    a, b = rng.uniform(0.3, 1.0, 4), rng.uniform(0.3, 1.0, 3)
    return x, y, a / a.sum(), b / b.sum()


def test_torch_gradcheck_reg_ot_cost_implicit():
    import torch
    from torch.autograd import gradcheck, gradgradcheck

    x, y, a, b = (torch.asarray(t) for t in small_problem())
    X, Y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)

    def balanced(x, y):
        return ot.reg_ot_cost(x, y, a, b, use_danskin=False, **SMALL)

    assert gradcheck(balanced, (X, Y), eps=1e-6, atol=1e-9, rtol=1e-6)
    assert gradgradcheck(balanced, (X, Y), eps=1e-6, atol=1e-8, rtol=1e-5)

    A, B = a.clone().requires_grad_(True), (1.2 * b).requires_grad_(True)

    def unbalanced(x, a, b):
        return ot.reg_ot_cost(x, y, a, b, tau_a=0.9, tau_b=0.8, use_danskin=False, **SMALL)

    assert gradcheck(unbalanced, (X, A, B), eps=1e-6, atol=1e-9, rtol=1e-6)
    assert gradgradcheck(unbalanced, (X, A, B), eps=1e-6, atol=1e-8, rtol=1e-5)


def test_torch_gradcheck_potentials():
    import torch
    from torch.autograd import gradcheck, gradgradcheck

    x, y, a, b = (torch.asarray(t) for t in small_problem())
    X, A = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
    kw = dict(threshold=SMALL["threshold"], max_iterations=SMALL["max_iterations"])
    geom = functools.partial(ot.PointCloud, epsilon=SMALL["epsilon"])

    def unbalanced_f(x, a):
        return ot.solve(geom(x, y), a, b, tau_a=0.9, tau_b=0.8, **kw).f

    def balanced_gauge_free(x):  # (f + c, g - c) is the same solution: remove c
        out = ot.solve(geom(x, y), a, b, **kw)
        return torch.cat([out.f - out.f.mean(), out.g - out.g.mean()])

    assert gradcheck(unbalanced_f, (X, A), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert gradgradcheck(unbalanced_f, (X, A), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradcheck(balanced_gauge_free, (X,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert gradgradcheck(balanced_gauge_free, (X,), eps=1e-6, atol=1e-7, rtol=1e-5)


# -- error paths -------------------------------------------------------------------------------


def np_problem():
    case = CASES["balanced"]
    return case.x, case.y, case.a, case.b


def test_grad_of_a_lambda_on_numpy_names_the_entry_points():
    x, y, _, _ = np_problem()
    with pytest.raises(TypeError, match=r"otcore\.reg_ot_cost, otcore\.reg_ot_cost_matrix"):
        ot.grad(lambda x, y: ot.reg_ot_cost(x, y))(x, y)
    with pytest.raises(TypeError, match=r"pass one of otcore's entry points.*otcore\.reg_ot_cost"):
        ot.hvp(lambda x, y: ot.reg_ot_cost(x, y))(x, y)
    with pytest.raises(
        UnsupportedDerivativeError, match=r"ot\.hvp of reg_ot_cost_matrix on numpy.*order 2"
    ):
        ot.hvp(ot.reg_ot_cost_matrix)(ot.PointCloud(x, y).cost_matrix)


@pytest.mark.parametrize("transform", ["grad", "hvp", "hessian"])
def test_argnums_pointing_at_a_missing_argument(transform):
    x, y, _, b = np_problem()
    fn = getattr(ot, transform)(ot.reg_ot_cost, argnums=2)
    with pytest.raises(ValueError, match=r"argnums.*2"):
        fn(x, y, None, b)  # a is None
    with pytest.raises(ValueError, match=r"argnums.*2"):
        fn(x, y)  # not given at all


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_grad_of_a_non_scalar_output(backend):
    be = make_backend(backend)
    x, y, _, _ = np_problem()
    xs = be.to_xp(np.stack([x, x + 0.1]))  # a batch of two problems: output shape (2,)
    with pytest.raises(TypeError, match=r"scalar output.*2"):
        ot.grad(ot.reg_ot_cost)(xs, be.to_xp(y), epsilon=EPS)


@pytest.mark.parametrize("transform", ["hvp", "hessian"])
@pytest.mark.parametrize("argnums", [(0,), (0, 1), True])
def test_second_order_needs_one_int_argnum(transform, argnums):
    x, y, _, _ = np_problem()
    with pytest.raises(TypeError, match="argnums must be one int"):
        getattr(ot, transform)(ot.reg_ot_cost, argnums=argnums)(x, y)


@pytest.mark.parametrize("transform", ["hvp", "hessian"])  # first order: manual unrolled rule
def test_unrolled_mode_on_numpy_is_not_implemented(transform):
    x, y, _, _ = np_problem()
    with pytest.raises(NotImplementedError, match="implicit_diff=None"):
        getattr(ot, transform)(ot.reg_ot_cost)(x, y, epsilon=EPS, implicit_diff=None)


def test_user_callable_cost_has_no_manual_rules_on_numpy():
    x, y, _, _ = np_problem()

    def l1(x, y):
        import array_api_compat

        xp = array_api_compat.array_namespace(x, y)
        return xp.sum(xp.abs(x - y), axis=-1)

    assert np.isfinite(ot.reg_ot_cost(x, y, cost=l1, epsilon=EPS))  # the value works
    with pytest.raises(NotImplementedError, match="manual"):
        ot.hvp(ot.reg_ot_cost)(x, y, cost=l1, epsilon=EPS)
    with pytest.raises(NotImplementedError, match="manual derivative rule"):
        ot.grad(ot.reg_ot_cost)(x, y, cost=l1, epsilon=EPS)
