"""Grids: separable costs and per-axis operators against the materialised dense geometry.

References are computed here, independently of :mod:`otcore.geometry.grid`: the grid points come
from NumPy's ``meshgrid`` (C order, last axis fastest) and the cost matrices from SciPy's
``cdist`` or explicit per-axis sums; the dense :class:`otcore.Geometry` on that matrix
(its own code path) is the reference for operators, ε, scaling, solves, barycenters and
divergences; closed forms (statistics of the cost, a zero divergence) and central finite
differences in float64 check the rest.
"""

from __future__ import annotations

import functools

import array_api_compat
import numpy as np
import pytest
from _helpers import jax_subset, to_numpy
from scipy.spatial.distance import cdist

import otcore as ot

# -- references -------------------------------------------------------------------------------


def grid_points(axes):
    """``(N, d)`` points of the product grid, C order (last axis fastest)."""
    mesh = np.meshgrid(*[np.asarray(a, float) for a in axes], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def asym_cost(x, y):
    """A non-symmetric user cost (array API): ``2(x−y)`` if ``x > y`` else ``(y−x)²``.

    With it ``C ≠ Cᵀ``, so an operator reducing over the wrong axis, or applying a
    per-axis matrix untransposed, is caught (symmetric costs would hide it).
    """
    xp = array_api_compat.array_namespace(x, y)
    d = x - y
    return xp.sum(xp.where(d > 0, 2.0 * d, d * d), axis=-1)


def separable_reference(costs, axes):
    """``C_ij = Σ_k c_k(x_k[i_k], x_k[j_k])`` by brute force over the flattened points."""
    pts = grid_points(axes)
    total = 0.0
    for k, cost in enumerate(costs):
        total = total + _axis_pair_cost(cost, pts[:, k][:, None] - pts[:, k][None, :])
    return total


def _axis_pair_cost(cost, d):
    """One axis's cost of the coordinate differences ``d = x − y``."""
    if cost == "sqeuclidean":
        return d * d
    if cost == "euclidean":
        return np.abs(d)
    if cost == "pnorm1.5":
        return np.abs(d) ** 1.5
    return np.where(d > 0, 2.0 * d, d * d)  # "asym"


OT_COSTS = {
    "sqeuclidean": "sqeuclidean",
    "euclidean": "euclidean",
    "pnorm1.5": ot.costs.PNorm(1.5),
    "asym": asym_cost,
}


def rel_err(x, ref):
    x, ref = np.asarray(to_numpy(x), float), np.asarray(ref, float)
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def assert_rel(x, ref, tol, what=""):
    """``max|x − ref| ≤ tol · max|ref|`` (and equal shapes)."""
    x = np.asarray(to_numpy(x))
    assert x.shape == np.shape(ref), (what, x.shape, np.shape(ref))
    err = rel_err(x, ref)
    assert err <= tol, (what, err)


@pytest.fixture
def axes3():
    """Non-uniform, unsorted coordinates of a 3-D grid ``(3, 4, 5)``, N = 60."""
    rng = np.random.default_rng(11)
    return [rng.uniform(-0.5, 1.5, size=n) for n in (3, 4, 5)]


# -- 1. cost matrices -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
def test_cost_matrix_is_squared_distance_of_meshgrid_points(xp, shape):
    like = xp.to_xp(np.zeros(1))
    grid = ot.Grid(shape=shape, epsilon=0.1, like=like)
    pts = grid_points([np.linspace(0, 1, n) for n in shape])
    C = grid.cost_matrix
    assert isinstance(C, xp.array_type)
    n = int(np.prod(shape))
    assert grid.shape == (n, n) and grid.grid_shape == shape
    np.testing.assert_allclose(xp.to_np(C), cdist(pts, pts, "sqeuclidean"), rtol=0, atol=1e-15)
    assert isinstance(grid.axes[0], xp.array_type)


def test_cost_matrix_of_user_axes_per_axis_costs(xp, axes3):
    ax = [xp.to_xp(a) for a in axes3]
    pts = grid_points(axes3)
    grid = ot.Grid(axes=ax, epsilon=0.1)
    np.testing.assert_allclose(
        xp.to_np(grid.cost_matrix), cdist(pts, pts, "sqeuclidean"), rtol=0, atol=1e-14
    )
    grid = ot.Grid(axes=ax[:2], cost=["sqeuclidean", "euclidean"], epsilon=0.1)
    p2 = grid_points(axes3[:2])
    ref = cdist(p2[:, :1], p2[:, :1], "sqeuclidean") + cdist(p2[:, 1:], p2[:, 1:], "cityblock")
    np.testing.assert_allclose(xp.to_np(grid.cost_matrix), ref, rtol=0, atol=1e-14)
    grid = ot.Grid(axes=ax, cost=ot.costs.PNorm(1.5), epsilon=0.1)
    ref = cdist(pts, pts, "minkowski", p=1.5) ** 1.5  # Σ_k |Δx_k|^1.5
    np.testing.assert_allclose(xp.to_np(grid.cost_matrix), ref, rtol=1e-13, atol=1e-14)
    grid = ot.Grid(axes=ax, cost=["sqeuclidean", asym_cost, ot.costs.PNorm(1.5)])
    ref = separable_reference(["sqeuclidean", "asym", "pnorm1.5"], axes3)
    np.testing.assert_allclose(xp.to_np(grid.cost_matrix), ref, rtol=1e-13, atol=1e-14)


def test_scale_cost_float_divides_the_cost():
    grid = ot.Grid(shape=(3, 4), scale_cost=4.0, epsilon=0.1)
    pts = grid_points([np.linspace(0, 1, 3), np.linspace(0, 1, 4)])
    np.testing.assert_allclose(
        grid.cost_matrix, cdist(pts, pts, "sqeuclidean") / 4.0, rtol=0, atol=1e-16
    )


# -- 2. operators -----------------------------------------------------------------------------

GRID_CASES = {
    # (costs per axis, use random non-uniform axes)
    "linspace-sq": (["sqeuclidean"] * 3, False),
    "user-axes-mixed": (["sqeuclidean", "asym", "pnorm1.5"], True),
}


def _grid_and_dense(xp, case, axes3, eps=0.3):
    costs, user = GRID_CASES[case]
    axes = axes3 if user else [np.linspace(0.0, 1.0, len(a)) for a in axes3]
    C = separable_reference(costs, axes)
    grid = ot.Grid(axes=[xp.to_xp(a) for a in axes], cost=[OT_COSTS[c] for c in costs])
    dense = ot.Geometry(xp.to_xp(C))
    return grid, dense, C


def numpy_all(backend_name, keep):
    """The full parametrisation on NumPy; a representative part elsewhere (run time)."""
    if backend_name != "numpy" and not keep:
        pytest.skip("the other backends run a representative subset of this parametrisation")


def _maybe_jit(xp, fn):
    """``fn`` itself, or on JAX ``jax.jit(fn)``: one compilation instead of eager tracing
    of every operation (the same otcore code runs; checks on concrete values are skipped)."""
    if xp.name.startswith("jax"):
        import jax

        return jax.jit(fn)
    return fn


@pytest.mark.parametrize("case", list(GRID_CASES))
def test_operators_equal_dense(xp, axes3, case):
    jax_subset(xp.name, case == "user-axes-mixed")
    grid, dense, C = _grid_and_dense(xp, case, axes3)
    eps = 0.3
    if case == "user-axes-mixed":
        assert not np.allclose(C, C.T)  # the asymmetric axis is in play
    n = C.shape[0]
    rng = np.random.default_rng(5)
    u = rng.normal(size=(2, 3, n))
    fe = 0.5 * rng.normal(size=(2, 3, n))
    ge = 0.5 * rng.normal(size=(2, 3, n))
    vec = rng.normal(size=(2, 3, n))  # signed
    s = rng.uniform(0.1, 1.0, size=(2, 3, n))

    def results(u, fe, ge, vec, s, ratio):
        """``{name: (grid value, dense value)}`` for every operator, both axes."""
        out = {}
        for name, geom in (("grid", grid), ("dense", dense)):
            ops, kops = geom.operators(eps), geom.operators(eps, kernel=True)
            for axis in (0, 1):
                for r_name, r in (("none", None), ("float", 0.7), ("array", ratio)):
                    out[name, "lse", axis, r_name] = ops.apply_lse(u, axis, ratio=r)
                for v_name, v in (("pos", s), ("signed", vec)):
                    out[name, "kernel", axis, v_name] = ops.apply_kernel(v, axis)
                    out[name, "kernel=True", axis, v_name] = kops.apply_kernel(v, axis)
                out[name, "plan_apply", axis] = ops.plan_apply(fe, ge, vec, axis)
            p_op, pt_op = ops.plan_operator(fe, ge)
            out[name, "plan_operator", 1] = p_op(vec)
            out[name, "plan_operator", 0] = pt_op(u)
            out[name, "plan_dot_cost"] = ops.plan_dot_cost(fe, ge)
            out[name, "plan"] = ops.plan(fe, ge)
        return out

    args = [xp.to_xp(v) for v in (u, fe, ge, vec, s, np.asarray(1.3))]
    out = _maybe_jit(xp, results)(*args)
    keys = [k[1:] for k in out if k[0] == "grid"]
    assert len(keys) == 20
    for key in keys:
        g, d = out[("grid",) + key], out[("dense",) + key]
        assert isinstance(g, xp.array_type) and g.dtype == d.dtype
        assert_rel(g, xp.to_np(d), 1e-12, key)
    assert tuple(out["grid", "plan_dot_cost"].shape) == (2, 3)
    # the dense reference itself, from NumPy: P = exp(fe ⊕ ge − C/ε)
    P = np.exp(fe[..., :, None] + ge[..., None, :] - C / eps)
    assert_rel(out["grid", "plan"], P, 1e-12, "plan vs numpy")
    assert_rel(out["grid", "plan_dot_cost"], np.sum(P * C, axis=(-2, -1)), 1e-12)
    assert_rel(out["grid", "plan_apply", 1], (P @ vec[..., None])[..., 0], 1e-12)
    assert_rel(out["grid", "plan_apply", 0], (vec[..., None, :] @ P)[..., 0, :], 1e-12)
    lse_ref = np.log(np.sum(np.exp(u[..., None, :] - 0.7 * C / eps), axis=-1))
    assert_rel(out["grid", "lse", 1, "float"], lse_ref, 1e-12, "lse vs numpy")
    # the grid's per-axis operators are used, not a materialised matrix
    assert not any(isinstance(v, np.ndarray) and v.size >= n * n for v in vars(grid).values())


def test_operators_with_array_epsilon(xp, axes3):
    jax_subset(xp.name, False)  # JAX: an array ratio is covered in test_operators_equal_dense
    grid, dense, _ = _grid_and_dense(xp, "user-axes-mixed", axes3)
    eps = xp.to_xp(np.asarray(0.25))
    go, do = grid.operators(eps), dense.operators(eps)
    u = xp.to_xp(np.random.default_rng(1).normal(size=(4, 60)))
    for axis in (0, 1):
        assert_rel(go.apply_lse(u, axis), xp.to_np(do.apply_lse(u, axis)), 1e-12)


def test_operators_default_epsilon_is_the_grids(axes3):
    grid, dense, _ = _grid_and_dense(np_backend(), "linspace-sq", axes3)
    assert grid.operators().eps == grid.epsilon
    u = np.random.default_rng(2).normal(size=60)
    assert_rel(
        grid.operators().apply_lse(u, 0), dense.operators(grid.epsilon).apply_lse(u, 0), 1e-12
    )


def np_backend():
    from _helpers import make_backend

    return make_backend("numpy")


# -- 3. ε and scaling -------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(GRID_CASES))
def test_default_and_relative_epsilon_and_scaling_equal_dense(xp, axes3, case):
    jax_subset(xp.name, case == "user-axes-mixed")
    costs, user = GRID_CASES[case]
    axes = axes3 if user else [np.linspace(0.0, 1.0, len(a)) for a in axes3]
    C = separable_reference(costs, axes)
    ax = [xp.to_xp(a) for a in axes]
    cost = [OT_COSTS[c] for c in costs]

    def both(**kw):
        return ot.Grid(axes=ax, cost=cost, **kw), ot.Geometry(xp.to_xp(C), **kw)

    g, d = both()
    # closed form: 0.05 · std over all N² pairs (NumPy, population std)
    assert abs(float(g.epsilon) / (0.05 * np.std(C)) - 1) < 1e-12
    assert abs(float(g.epsilon) / float(d.epsilon) - 1) < 1e-12
    for eps in (None, 0.1):
        g, d = both(epsilon=eps, relative_epsilon="mean")
        assert abs(float(g.epsilon) / ((eps or 0.05) * np.mean(C)) - 1) < 1e-12
        assert abs(float(g.epsilon) / float(d.epsilon) - 1) < 1e-12
    for scale, stat in (("max_cost", np.max(C)), ("mean", np.mean(C))):
        g, d = both(scale_cost=scale)
        assert abs(float(g.inv_scale_cost) * stat - 1) < 1e-12
        assert abs(float(g.inv_scale_cost) / float(d.inv_scale_cost) - 1) < 1e-12
        assert abs(float(g.epsilon) / float(d.epsilon) - 1) < 1e-12
        np.testing.assert_allclose(xp.to_np(g.cost_matrix), C / stat, rtol=1e-13, atol=1e-15)
        u = xp.to_xp(np.random.default_rng(0).normal(size=(2, C.shape[0])))
        for axis in (0, 1) if xp.name != "jax" else ():
            assert_rel(
                g.operators().apply_lse(u, axis), xp.to_np(d.operators().apply_lse(u, axis)), 1e-12
            )
        g, d = both(scale_cost=scale, epsilon=0.1, relative_epsilon="std")
        assert abs(float(g.epsilon) / float(d.epsilon) - 1) < 1e-12


def test_median_scale_cost_is_refused():
    with pytest.raises(ValueError, match=r"scale_cost='median' is not available for a Grid"):
        ot.Grid(shape=(3, 4), scale_cost="median")
    with pytest.raises(ValueError, match=r"scale_cost must be a positive float or one of"):
        ot.Grid(shape=(3, 4), scale_cost="medium")


# -- 4. solves --------------------------------------------------------------------------------


def _hists(n, seed=0, count=2):
    rng = np.random.default_rng(seed)
    out = rng.uniform(0.1, 1.0, size=(count, n))
    return out / out.sum(-1, keepdims=True)


@pytest.mark.parametrize("lse_mode", [True, False])
@pytest.mark.parametrize("tau_a", [1.0, 0.8])
def test_solve_equals_dense(xp, axes3, lse_mode, tau_a):
    jax_subset(xp.name, lse_mode and tau_a == 0.8)
    numpy_all(xp.name, lse_mode == (tau_a == 0.8))
    grid, _, C = _grid_and_dense(xp, "user-axes-mixed", axes3)
    grid = ot.Grid(axes=grid.axes, cost=grid._cost_spec, epsilon=0.2)
    dense = ot.Geometry(xp.to_xp(C), epsilon=0.2)
    a, b = (xp.to_xp(h) for h in _hists(C.shape[0]))
    fields = ("f", "g", "reg_ot_cost", "primal_cost", "n_iters", "converged", "matrix")

    def run(a, b):
        solver = ot.Sinkhorn(lse_mode=lse_mode, threshold=1e-12)
        og = ot.solve(grid, a, b, tau_a=tau_a, lse_mode=lse_mode, threshold=1e-12)
        og2 = solver(ot.LinearProblem(grid, a, b, tau_a=tau_a))
        od = solver(ot.LinearProblem(dense, a, b, tau_a=tau_a))
        return [[getattr(o, k) for k in fields] for o in (og, og2, od)]

    outs = _maybe_jit(xp, run)(a, b)
    outs = [dict(zip(fields, map(xp.to_np, o))) for o in outs]
    *grid_outs, od = outs
    for out in grid_outs:
        assert bool(out["converged"]) and int(out["n_iters"]) == int(od["n_iters"])
        assert_rel(out["f"], od["f"], 1e-12, "f")
        assert_rel(out["g"], od["g"], 1e-12, "g")
        assert_rel(out["matrix"], od["matrix"], 1e-12, "matrix")
        for name in ("reg_ot_cost", "primal_cost"):
            v, ref = float(out[name]), float(od[name])
            assert abs(v - ref) <= 1e-12 * abs(ref), (name, v, ref)


def test_batched_solve_equals_dense(axes3):
    grid, dense, C = _grid_and_dense(np_backend(), "user-axes-mixed", axes3)
    grid = ot.Grid(axes=grid.axes, cost=grid._cost_spec, epsilon=0.2)
    dense = ot.Geometry(C, epsilon=0.2)
    a = _hists(C.shape[0], 1, count=6).reshape(2, 3, -1)
    b = _hists(C.shape[0], 2)[0]
    og = ot.solve(grid, a, b, threshold=1e-12)
    od = ot.solve(dense, a, b, threshold=1e-12)
    assert og.f.shape == (2, 3, 60)
    assert_rel(og.f, od.f, 1e-12)
    assert_rel(og.reg_ot_cost, od.reg_ot_cost, 1e-12)


# -- 5. gradients -----------------------------------------------------------------------------

SHAPE2 = (5, 6)
EPS = 0.05


def _axes2():
    rng = np.random.default_rng(4)
    return [np.sort(rng.uniform(0, 1, size=n)) for n in SHAPE2]


def _points_xp(xp, ax0, ax1):
    """Grid points ``(N, 2)`` in the backend, differentiable in the axes (C order)."""
    n0, n1 = ax0.shape[0], ax1.shape[0]
    p0 = xp.reshape(xp.broadcast_to(ax0[:, None], (n0, n1)), (n0 * n1,))
    p1 = xp.reshape(xp.broadcast_to(ax1[None, :], (n0, n1)), (n0 * n1,))
    return xp.stack([p0, p1], axis=1)


def _fd_axis0(ax0, ax1, a, b, d, h=1e-6):
    def value(t):
        grid = ot.Grid(axes=[t, ax1], epsilon=EPS)
        return float(ot.solve(grid, a, b, threshold=1e-13).reg_ot_cost)

    return (value(ax0 + h * d) - value(ax0 - h * d)) / (2 * h)


@functools.lru_cache(maxsize=1)
def _reg_cost_references():
    """NumPy references: the dense (point-cloud) manual rule for ``d/da`` on the linspace
    grid, and a central finite difference along ``d`` for the first axis of user axes."""
    ax0, ax1 = _axes2()
    a, b = _hists(30, 3)
    pts = grid_points([np.linspace(0, 1, n) for n in SHAPE2])
    ga = ot.grad(ot.reg_ot_cost, argnums=2)(pts, None, a, b, epsilon=EPS, threshold=1e-13)
    d = np.random.default_rng(8).normal(size=ax0.shape)
    fd = _fd_axis0(ax0, ax1, a, b, d)
    return ax0, ax1, a, b, np.asarray(ga), d, fd


def test_jax_gradients_equal_dense_and_finite_differences():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    ax0, ax1, a, b, ga_ref, d, fd = _reg_cost_references()
    kw = dict(threshold=1e-13)

    def via_grid_a(a_):  # a grid from a shape, bound to the traced weights
        return ot.solve(ot.Grid(shape=SHAPE2, epsilon=EPS), a_, jnp.asarray(b), **kw).reg_ot_cost

    ga = jax.jit(jax.grad(via_grid_a))(jnp.asarray(a))  # jit: one compile, not eager tracing
    assert ga.dtype == jnp.float64
    assert_rel(ga, ga_ref, 1e-10, "d/da vs dense manual rule")

    def via_grid_ax(t):
        grid = ot.Grid(axes=[t, jnp.asarray(ax1)], epsilon=EPS)
        return ot.solve(grid, jnp.asarray(a), jnp.asarray(b), **kw).reg_ot_cost

    g_ax = np.asarray(jax.jit(jax.grad(via_grid_ax))(jnp.asarray(ax0)))
    assert abs(g_ax @ d - fd) <= 1e-8 * abs(fd), (g_ax @ d, fd)


def test_torch_gradients_equal_dense_and_finite_differences():
    torch = pytest.importorskip("torch")
    ax0, ax1, a, b, ga_ref, d, fd = _reg_cost_references()
    kw = dict(threshold=1e-13)
    tb = torch.tensor(b)

    ta = torch.tensor(a, requires_grad=True)
    (ga,) = torch.autograd.grad(
        ot.solve(ot.Grid(shape=SHAPE2, epsilon=EPS), ta, tb, **kw).reg_ot_cost, ta
    )
    dense = ot.Geometry(torch.tensor(_linspace_cost_of(SHAPE2)), epsilon=EPS)
    (ga_d,) = torch.autograd.grad(ot.solve(dense, ta, tb, **kw).reg_ot_cost, ta)
    assert ga.dtype == torch.float64
    assert_rel(ga, ga_d.numpy(), 1e-11, "d/da vs torch dense")
    assert_rel(ga, ga_ref, 1e-10, "d/da vs dense manual rule")

    t0 = torch.tensor(ax0, requires_grad=True)
    t1 = torch.tensor(ax1)
    grid = ot.Grid(axes=[t0, t1], epsilon=EPS)
    (g_ax,) = torch.autograd.grad(ot.solve(grid, torch.tensor(a), tb, **kw).reg_ot_cost, t0)
    cloud = ot.PointCloud(_points_xp(torch, t0, t1), epsilon=EPS)
    (g_cl,) = torch.autograd.grad(ot.solve(cloud, torch.tensor(a), tb, **kw).reg_ot_cost, t0)
    assert_rel(g_ax, g_cl.numpy(), 1e-10, "d/dax0 grid vs point cloud")
    assert abs(g_ax.numpy() @ d - fd) <= 1e-8 * abs(fd), (g_ax.numpy() @ d, fd)


BARY_SHAPE = (6, 7)
_COT = np.random.default_rng(7).normal(size=int(np.prod(BARY_SHAPE)))  # fixed cotangent


def _bary_problem():
    rng = np.random.default_rng(0)
    n = int(np.prod(BARY_SHAPE))
    A = rng.uniform(0.1, 1.0, size=(n, 3))
    A /= A.sum(0)
    w = rng.uniform(0.2, 1.0, size=3)
    pts = grid_points([np.linspace(0, 1, k) for k in BARY_SHAPE])
    return A, cdist(pts, pts, "sqeuclidean"), w / w.sum()


@pytest.mark.parametrize("lse_mode", [True, False])
@pytest.mark.parametrize("debiased", [False, True])
def test_barycenter_equals_dense(xp, lse_mode, debiased):
    if xp.name in ("jax", "torch"):
        pytest.skip("JAX/PyTorch values: test_barycenter_gradients_equal_numpy_manual_rule")
    A, C, w = _bary_problem()
    eps = 0.02
    kw = dict(lse_mode=lse_mode, debiased=debiased, threshold=1e-11, return_output=True)
    og = ot.barycenter(xp.to_xp(A), ot.Grid(shape=BARY_SHAPE, epsilon=eps), xp.to_xp(w), **kw)
    od = ot.barycenter(xp.to_xp(A), ot.Geometry(xp.to_xp(C), epsilon=eps), xp.to_xp(w), **kw)
    assert bool(og.converged) and int(og.n_iters) == int(od.n_iters)
    assert isinstance(og.histogram, xp.array_type)
    assert_rel(og.histogram, xp.to_np(od.histogram), 1e-12, "histogram")
    assert_rel(og.g, xp.to_np(od.g), 1e-11, "g")


@pytest.mark.parametrize("lse_mode", [True, False])
@pytest.mark.parametrize("debiased", [False, True])
def test_barycenter_gradients_equal_numpy_manual_rule(lse_mode, debiased):
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jnp = jax.numpy
    A, C, w = _bary_problem()
    eps = 0.02  # debiased: C ∈ [0, 2], so ε is small against the cost
    kw = dict(lse_mode=lse_mode, debiased=debiased, threshold=1e-10)
    b_np, pull = ot.vjp(ot.barycenter, A, C, w, epsilon=eps, **kw)
    gA_np, _, gw_np = pull(_COT)
    with_jax = lse_mode == debiased  # JAX on two of the four (compile time)

    def via_grid(A_, w_):
        return ot.barycenter(A_, ot.Grid(shape=BARY_SHAPE, epsilon=eps), w_, **kw)

    results = []  # (value, dA, dw) per framework
    if with_jax:  # jit-compiled once (eager tracing of the loop is slow); same code path
        jvjp = jax.jit(lambda A_, w_, c: (lambda o: (o[0], o[1](c)))(jax.vjp(via_grid, A_, w_)))
        b_j, (gA_j, gw_j) = jvjp(jnp.asarray(A), jnp.asarray(w), jnp.asarray(_COT))
        results.append((b_j, gA_j, gw_j))
    tA, tw = torch.tensor(A, requires_grad=True), torch.tensor(w, requires_grad=True)
    b_t = via_grid(tA, tw)
    results.append((b_t, *torch.autograd.grad(b_t, (tA, tw), torch.tensor(_COT))))
    for b, gA, gw in results:
        assert_rel(b, b_np, 1e-12, "value")
        assert_rel(gA, gA_np, 1e-10, "dA")
        assert_rel(gw, gw_np, 1e-10, "dw")
    # the NumPy manual rule on the grid itself (A and weights) agrees too
    _, pull_g = ot.vjp(ot.barycenter, A, ot.Grid(shape=BARY_SHAPE, epsilon=eps), w, **kw)
    gA_g, g_geom, gw_g = pull_g(_COT)
    assert g_geom is None
    assert_rel(gA_g, gA_np, 1e-10, "dA numpy grid")
    assert_rel(gw_g, gw_np, 1e-10, "dw numpy grid")


# -- 6. divergence ----------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.8])
def test_divergence_equals_dense_and_vanishes_on_equal_histograms(xp, axes3, tau):
    jax_subset(xp.name, tau == 1.0)
    numpy_all(xp.name, (tau == 1.0) == (xp.name == "jax"))
    C = separable_reference(["sqeuclidean"] * 3, [np.linspace(0, 1, len(t)) for t in axes3])
    grid = ot.Grid(axes=[xp.to_xp(np.linspace(0, 1, len(t))) for t in axes3], epsilon=0.1)
    kw = dict(tau_a=tau, tau_b=tau, threshold=1e-12)

    def run(a, b, Cx):
        return (
            ot.sinkhorn_divergence_costs(grid, grid, grid, a, b, **kw),
            ot.sinkhorn_divergence_costs(Cx, Cx, Cx, a, b, epsilon=0.1, **kw),
            ot.sinkhorn_divergence_costs(grid, grid, grid, a, a, **kw),
        )

    a, b = (xp.to_xp(h) for h in _hists(C.shape[0], 6))
    vg, vd, v0 = _maybe_jit(xp, run)(a, b, xp.to_xp(C))
    assert isinstance(vg, xp.array_type)
    assert float(vd) > 1e-3
    assert abs(float(vg) - float(vd)) <= 1e-12 * abs(float(vd)), (float(vg), float(vd))
    assert abs(float(v0)) < 1e-13


# -- 7. binding to the histograms' framework --------------------------------------------------


def _bound_results(A_, a_, b_, grid, types):
    """Barycenter, solve and divergence on a grid made from a shape, with histograms of
    another framework; checks (also while tracing) that the grid took their framework."""
    array_type, dt = types
    out = ot.barycenter(A_, grid, threshold=1e-6)
    prob = ot.LinearProblem(grid, a_, b_)
    assert isinstance(prob.geom.axes[0], array_type) and prob.geom.dtype == dt
    sol = ot.Sinkhorn(threshold=1e-6)(prob)
    div = ot.sinkhorn_divergence_costs(grid, grid, grid, a_, b_, threshold=1e-6)
    return out, sol.f, sol.reg_ot_cost, div


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_shape_grid_binds_to_torch_and_jax(dtype):
    torch = pytest.importorskip("torch")
    backends = [("torch", torch.asarray, torch.Tensor, getattr(torch, dtype), None)]
    if dtype == "float32":  # JAX float64 results: the gradient tests
        jax = pytest.importorskip("jax")
        backends.append(("jax", jax.numpy.asarray, jax.Array, jax.numpy.float32, jax.jit))
    A, C, _ = _bary_problem()
    a, b = _hists(A.shape[0], 9)
    tol = 1e-12 if dtype == "float64" else 2e-5
    b_ref = ot.barycenter(A, C, epsilon=0.05, threshold=1e-6)
    s_ref = ot.solve(ot.Geometry(C, epsilon=0.05), a, b, threshold=1e-6)
    d_ref = ot.sinkhorn_divergence_costs(C, C, C, a, b, epsilon=0.05, threshold=1e-6)
    for name, conv, array_type, dt, jit in backends:
        grid = ot.Grid(shape=BARY_SHAPE, epsilon=0.05)  # NumPy float64 until used
        fn = functools.partial(_bound_results, grid=grid, types=(array_type, dt))
        fn = fn if jit is None else jit(fn)  # JAX: also binds to tracers
        outs = fn(*(conv(v.astype(dtype)) for v in (A, a, b)))
        for out in outs:
            assert isinstance(out, array_type) and out.dtype == dt, (name, out.dtype)
        bary, f, cost, div = outs
        assert_rel(bary, b_ref, tol, (name, "barycenter"))
        assert_rel(f, s_ref.f, 10 * tol, (name, "f"))
        assert abs(float(cost) - float(s_ref.reg_ot_cost)) <= 10 * tol * abs(float(cost))
        assert abs(float(div) - float(d_ref)) <= 100 * tol * abs(float(d_ref)), name
        # the grid object itself is unchanged (still NumPy)
        assert isinstance(grid.axes[0], np.ndarray)


def test_like_makes_axes_in_that_framework():
    torch = pytest.importorskip("torch")
    grid = ot.Grid(shape=(3, 4), epsilon=0.1, like=torch.zeros(1, dtype=torch.float32))
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in grid.axes)
    assert grid.dtype == torch.float32 and isinstance(grid.cost_matrix, torch.Tensor)
    np.testing.assert_allclose(grid.axes[1].numpy(), np.linspace(0, 1, 4), rtol=0, atol=1e-7)
    # an integer `like` keeps its library but gets the default floating dtype
    grid = ot.Grid(shape=(3,), epsilon=0.1, like=torch.zeros(1, dtype=torch.int64))
    assert isinstance(grid.axes[0], torch.Tensor) and grid.axes[0].is_floating_point()
    # a bound grid does not rebind: mixing it with NumPy weights is an error
    grid = ot.Grid(shape=(3, 4), epsilon=0.1, like=torch.zeros(1, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"different array libraries|geometry arrays"):
        ot.LinearProblem(grid, np.full(12, 1 / 12), None)


def test_float32_operators_keep_dtype(xp):
    grid = ot.Grid(shape=(3, 4), epsilon=0.1, like=xp.to_xp(np.zeros(1), dtype=np.float32))
    assert grid.dtype == xp.to_xp(np.zeros(1), dtype=np.float32).dtype
    u = xp.to_xp(np.random.default_rng(0).normal(size=(2, 12)), dtype=np.float32)
    ops = grid.operators()
    for out in (ops.apply_lse(u, 0), ops.apply_kernel(u, 1), ops.plan_apply(u, u, u, 0)):
        assert out.dtype == u.dtype and isinstance(out, xp.array_type)
    dense = ot.Geometry(xp.to_xp(_linspace_cost_of((3, 4))), epsilon=0.1).operators()
    assert_rel(
        ops.apply_lse(u, 0),
        xp.to_np(dense.apply_lse(xp.to_xp(xp.to_np(u).astype(np.float64)), 0)),
        1e-6,
    )


def _linspace_cost_of(shape):
    pts = grid_points([np.linspace(0, 1, n) for n in shape])
    return cdist(pts, pts, "sqeuclidean")


# -- 8. no N × N matrix -----------------------------------------------------------------------


def test_large_grid_barycenter_never_forms_the_dense_matrix():
    import tracemalloc

    n = 128
    t = np.linspace(0, 1, n)
    X, Y = np.meshgrid(t, t, indexing="ij")
    A = np.stack(
        [
            np.exp(-((X - 0.3) ** 2 + (Y - 0.3) ** 2) / 0.01).ravel(),
            np.exp(-((X - 0.7) ** 2 + (Y - 0.6) ** 2) / 0.02).ravel(),
        ],
        axis=1,
    )
    A /= A.sum(0)
    grid = ot.Grid(shape=(n, n), epsilon=0.01)
    tracemalloc.start()
    try:
        out = ot.barycenter(A, grid, lse_mode=False, threshold=1e-4, return_output=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bool(out.converged) and out.histogram.shape == (n * n,)
    assert abs(float(out.histogram.sum()) - 1.0) < 1e-3
    # an N × N float64 matrix is 2 GiB; the iterations hold O(N·k) vectors
    assert peak < 64 * 2**20, peak
    # the mean moves half way between the inputs (symmetric weights)
    mean_x = float(X.ravel() @ out.histogram)
    assert abs(mean_x - 0.5) < 1e-2


# -- 9. errors --------------------------------------------------------------------------------


def test_errors():
    torch = pytest.importorskip("torch")
    t = np.linspace(0, 1, 4)
    with pytest.raises(ValueError, match="give exactly one of shape"):
        ot.Grid()
    with pytest.raises(ValueError, match="give exactly one of shape"):
        ot.Grid(shape=(3, 4), axes=[t, t])
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        ot.Grid(shape=(3, 2.5))
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        ot.Grid(shape=4)
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        ot.Grid(shape=(3, True))
    with pytest.raises(ValueError, match=r"shape entries must be an integer >= 1"):
        ot.Grid(shape=(3, 0))
    with pytest.raises(ValueError, match=r"axes must hold at least one 1-D array"):
        ot.Grid(axes=[])
    with pytest.raises(ValueError, match=r"axes\[1\] must be 1-D, got shape \(2, 2\)"):
        ot.Grid(axes=[t, np.zeros((2, 2))])
    with pytest.raises(TypeError, match=r"all arrays must share one floating dtype.*float32"):
        ot.Grid(axes=[t, t.astype(np.float32)])
    with pytest.raises(TypeError, match=r"axes\[0\] must have a real floating dtype"):
        ot.Grid(axes=[np.arange(3), t])
    with pytest.raises(TypeError, match=r"axes\[0\].*axes\[1\]|different array libraries"):
        ot.Grid(axes=[t, torch.tensor(t)])
    with pytest.raises(ValueError, match=r"per-axis costs of a Grid must be non-negative"):
        ot.Grid(axes=[t, t], cost=lambda x, y: (x - y)[..., 0])
    with pytest.raises(ValueError, match=r"cost must be one cost or one per axis \(2\), got 3"):
        ot.Grid(axes=[t, t], cost=["sqeuclidean"] * 3)
    with pytest.raises(ValueError, match=r"axes\[1\] contains NaN or infinite values"):
        ot.Grid(axes=[t, np.array([0.0, np.nan, 1.0])])
    with pytest.raises(ValueError, match=r"axes\[0\] contains NaN or infinite values"):
        ot.Grid(axes=[np.array([0.0, np.inf])])
    with pytest.raises(ValueError, match="epsilon must be a positive finite number"):
        ot.Grid(shape=(3,), epsilon=-1.0)
    grid = ot.Grid(shape=(3, 4), epsilon=0.1)
    with pytest.raises(ValueError, match=r"a must have length 12"):
        ot.LinearProblem(grid, np.full(11, 1 / 11))
    with pytest.raises(ValueError, match="relative epsilon is 0"):
        _ = ot.Grid(shape=(1, 1)).epsilon


def test_array_epsilon_fixes_the_framework_of_a_shape_grid():
    torch = pytest.importorskip("torch")
    grid = ot.Grid(shape=(3, 4), epsilon=torch.tensor(0.1, dtype=torch.float64))
    assert isinstance(grid.axes[0], torch.Tensor)
    numpy_grid = ot.Grid(shape=(3, 4), epsilon=np.asarray(0.1))
    with pytest.raises(TypeError, match="same array library"):
        ot.LinearProblem(numpy_grid, torch.full((12,), 1 / 12, dtype=torch.float64))
