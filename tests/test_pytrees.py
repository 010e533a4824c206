"""Geometries, problems and outputs are JAX pytrees: they pass through ``jax.jit``,
``jax.vmap`` and ``lax.scan`` as arguments and results (float64, tiny sizes).

References: the same computation run eagerly (a Python loop for ``vmap`` and ``scan``) and,
for gradients, central finite differences of the jitted function.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
lax = jax.lax

import otcore as ot  # noqa: E402
from otcore._lib import pytree as _pytree  # noqa: E402

TOL = 1e-12
TH = 1e-11  # Sinkhorn threshold of every solve here


def _close(got, want, tol=TOL):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 2)))
    y = jnp.asarray(rng.normal(size=(4, 2)))
    c = jnp.asarray(rng.uniform(size=(5, 4)))
    return x, y, c


def _grid_axes():
    return [jnp.linspace(0.0, 1.0, 3), jnp.asarray([0.0, 0.3, 1.0])]


# name -> (factory, number of leaves): the leaves are the data arrays, an array ε, array
# statistics (1/scale of a scale_cost name, the statistic of a default or relative ε)
GEOMETRIES = {
    "dense": (lambda: ot.Geometry(_data()[2]), 2),
    "dense-scale-mean": (lambda: ot.Geometry(_data()[2], epsilon=0.1, scale_cost="mean"), 2),
    "pointcloud": (lambda: ot.PointCloud(*_data()[:2]), 3),
    "pointcloud-y-is-x": (lambda: ot.PointCloud(_data()[0]), 2),
    "pointcloud-array-relative-eps": (
        lambda: ot.PointCloud(
            *_data()[:2],
            epsilon=jnp.asarray(0.3),
            relative_epsilon="mean",
            scale_cost="max_cost",
        ),
        5,
    ),
    "pointcloud-online": (lambda: ot.PointCloud(*_data()[:2], batch_size=2, scale_cost="mean"), 4),
    "grid": (lambda: ot.Grid(axes=_grid_axes(), epsilon=0.5, relative_epsilon="std"), 3),
    "grid-from-shape": (lambda: ot.Grid(shape=(3, 2), epsilon=0.1, like=jnp.zeros(1)), 2),
}


def _solve(geom, *args, **kwargs):
    return ot.solve(geom, *args, threshold=TH, **kwargs)


# -- flatten / unflatten ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_round_trip(name):
    make, n_leaves = GEOMETRIES[name]
    geom = make()
    leaves, treedef = jax.tree_util.tree_flatten(geom)
    assert len(leaves) == n_leaves
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is type(geom)
    for u, v in zip(back.differentiable_arrays(), geom.differentiable_arrays(), strict=True):
        assert u is v
    assert back.shape == geom.shape and back.batch_shape == geom.batch_shape
    _close(back.epsilon, geom.epsilon)
    _close(back.inv_scale_cost, geom.inv_scale_cost)
    _close(back.cost_matrix, geom.cost_matrix)
    # a geometry built again with the same options has the same structure (and hash)
    again = jax.tree_util.tree_structure(make())
    assert again == treedef and hash(again) == hash(treedef)
    # JAX rebuilds trees on placeholders (object(), None, axis numbers): the structure of
    # the rebuilt object must not depend on what its leaves are
    for fill in (object, lambda: None, lambda: 0):
        dummies = [fill() for _ in leaves]
        dummy = jax.tree_util.tree_unflatten(treedef, dummies)
        got, treedef2 = jax.tree_util.tree_flatten(dummy, is_leaf=lambda v: v is None)
        assert treedef2 == treedef
        assert all(u is v for u, v in zip(got, dummies, strict=True))


def test_structure_follows_the_options():
    x, y, _ = _data()

    def structure(**kw):
        return jax.tree_util.tree_structure(ot.PointCloud(x, y, **kw))

    assert structure() == structure()
    assert structure(epsilon=0.5) != structure(epsilon=0.25)  # a float ε is static
    assert structure(cost="euclidean") != structure()
    assert structure(batch_size=2) != structure()
    assert jax.tree_util.tree_structure(ot.PointCloud(x)) != structure()  # y is x


def test_sharing_geometry_round_trip():
    x, y, _ = _data()
    geom = ot.PointCloud(x, y).sharing(jnp.asarray(0.4), jnp.asarray(0.5))
    leaves, treedef = jax.tree_util.tree_flatten(geom)
    assert len(leaves) == 4  # x, y, the shared ε and scale (nothing of its own)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    _close(back.epsilon, 0.4)
    _close(back.inv_scale_cost, 0.5)
    _close(back.cost_matrix, geom.cost_matrix)


def test_problem_and_output_round_trip():
    x, y, _ = _data()
    a = jnp.asarray([0.1, 0.2, 0.3, 0.2, 0.2])
    prob = ot.LinearProblem(ot.PointCloud(x, y, epsilon=0.5), a=a, tau_b=0.8)
    out = ot.Sinkhorn(threshold=TH)(prob)
    for obj in (prob, out):
        leaves, treedef = jax.tree_util.tree_flatten(obj)
        back = jax.tree_util.tree_unflatten(treedef, leaves)
        assert type(back) is type(obj)
        for fill in (object, lambda: None, lambda: 0):
            dummy = jax.tree_util.tree_unflatten(treedef, [fill() for _ in leaves])
            assert jax.tree_util.tree_structure(dummy, is_leaf=lambda v: v is None) == treedef
    back = jax.tree_util.tree_map(lambda v: v, out)
    assert back.prob.tau_b == 0.8 and back.prob.batch_shape == ()
    assert back.solver is out.solver
    _close(back.reg_ot_cost, out.reg_ot_cost)
    _close(back.matrix, out.matrix)


def test_unflatten_carries_no_stale_cache():
    x, y, _ = _data()
    geom = ot.PointCloud(x, y, epsilon=0.5)
    _ = geom.cost_matrix
    leaves, treedef = jax.tree_util.tree_flatten(geom)
    moved = jax.tree_util.tree_unflatten(treedef, [leaves[0] + 1.0, leaves[1]])
    _close(moved.cost_matrix, ot.PointCloud(x + 1.0, y, epsilon=0.5).cost_matrix)

    out = _solve(geom)
    _ = out.reg_ot_cost, out.matrix, out.marginal(1)
    leaves, treedef = jax.tree_util.tree_flatten(out)
    assert leaves[0] is out.f
    shifted = jax.tree_util.tree_unflatten(treedef, [leaves[0] + 0.1, *leaves[1:]])
    want = ot.SinkhornOutput(
        out.f + 0.1, out.g, out.prob, out.errors, out.n_iters, out.converged, out.diverged,
        out.solver,
    )  # fmt: skip
    _close(shifted.reg_ot_cost, want.reg_ot_cost)
    _close(shifted.matrix, want.matrix)
    _close(shifted.marginal(1), want.marginal(1))
    assert abs(float(shifted.reg_ot_cost - out.reg_ot_cost)) > 1e-3


# -- jit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dense", "pointcloud", "pointcloud-online", "grid"])
def test_jit_geometry_argument_and_output_result(name):
    geom = GEOMETRIES[name][0]()
    eager = _solve(geom)
    out = jax.jit(_solve)(geom)
    assert type(out) is ot.SinkhornOutput and type(out.geom) is type(geom)
    for field in ("f", "g", "errors", "n_iters", "converged", "diverged"):
        _close(getattr(out, field), getattr(eager, field))
    assert bool(out.converged)
    _close(out.geom.epsilon, eager.geom.epsilon)
    _close(out.reg_ot_cost, eager.reg_ot_cost)
    _close(out.matrix, eager.matrix)
    _close(jax.jit(lambda g: _solve(g).reg_ot_cost)(geom), eager.reg_ot_cost)


def test_jit_problem_argument():
    x, y, _ = _data()
    a = jnp.asarray([0.1, 0.2, 0.3, 0.2, 0.2])
    prob = ot.LinearProblem(ot.PointCloud(x, y, epsilon=0.5), a=a, tau_b=0.8)
    solver = ot.Sinkhorn(threshold=TH)
    eager = solver(prob)
    out = jax.jit(solver)(prob)
    _close(out.f, eager.f)
    _close(out.g, eager.g)
    _close(out.reg_ot_cost, eager.reg_ot_cost)
    assert out.prob.tau_b == 0.8


def test_jit_compiles_once_for_equal_options():
    x, y, _ = _data()
    traces = []

    @jax.jit
    def total(obj):
        traces.append(None)
        return jax.tree_util.tree_reduce(lambda s, v: s + jnp.sum(v), obj, 0.0)

    total(ot.PointCloud(x, y))
    total(ot.PointCloud(x + 1.0, y))  # new geometry, same options: no new trace
    assert len(traces) == 1
    total(ot.PointCloud(x, y, cost="euclidean"))
    assert len(traces) == 2
    out = _solve(ot.PointCloud(x, y, epsilon=0.5))
    total(out)
    total(_solve(ot.PointCloud(x + 1.0, y, epsilon=0.5)))  # a new, equal Sinkhorn
    assert len(traces) == 3
    total(ot.solve(ot.PointCloud(x, y, epsilon=0.5), threshold=1e-3))
    assert len(traces) == 4


def test_jit_other_outputs():
    x, y, _ = _data()

    def divergence(x, y):
        return ot.sinkhorn_divergence(x, y, epsilon=0.5, threshold=TH, return_output=True)[1]

    eager, out = divergence(x, y), jax.jit(divergence)(x, y)
    assert type(out) is ot.DivergenceOutput and out.outputs[2] is not None
    _close(out.divergence, eager.divergence)
    for o, e in zip(out.outputs, eager.outputs, strict=True):
        _close(o.f, e.f)
        _close(o.reg_ot_cost, e.reg_ot_cost)

    rng = np.random.default_rng(1)
    hists = jnp.asarray(rng.uniform(0.5, 1.0, size=(5, 3)))
    hists = hists / jnp.sum(hists, axis=0)
    _, _, c = _data()

    def bary(hists, c):
        return ot.barycenter(hists, c, epsilon=0.1, threshold=TH, return_output=True)

    eager, out = bary(hists, c), jax.jit(bary)(hists, c)
    assert type(out) is ot.BarycenterOutput
    assert out.debiasing is None and out.epsilon == 0.1  # static, not turned into arrays
    for field in ("histogram", "f", "g", "n_iters", "converged"):
        _close(getattr(out, field), getattr(eager, field))

    ys = [x, y]

    def free(ys):
        return ot.free_barycenter(ys, n_points=3, epsilon=0.5, max_iterations=4, return_output=True)

    eager, out = free(ys), jax.jit(free)(ys)
    assert type(out) is ot.FreeBarycenterOutput and out.epsilon == 0.5
    for field in ("points", "weights", "costs", "errors", "n_iters"):
        _close(getattr(out, field), getattr(eager, field))


# -- vmap -----------------------------------------------------------------------------------
def _cost(geom):
    return _solve(geom).reg_ot_cost


def test_vmap_over_batched_point_clouds_equals_a_loop():
    rng = np.random.default_rng(2)
    xb = jnp.asarray(rng.normal(size=(2, 5, 2)))
    yb = jnp.asarray(rng.normal(size=(2, 4, 2)))
    loop = [_solve(ot.PointCloud(xb[i], yb[i])) for i in range(2)]
    want = jnp.stack([out.reg_ot_cost for out in loop])
    batch = ot.PointCloud(xb, yb)  # default ε: its statistic is batched, (2,)
    _close(jax.vmap(_cost)(batch), want)
    outs = jax.vmap(_solve)(batch)
    assert outs.f.shape == (2, 5) and outs.prob.batch_shape == (2,)
    _close(outs.reg_ot_cost, want)  # the batched output, evaluated eagerly
    for i in range(2):
        _close(outs.f[i], loop[i].f)
        _close(outs.g[i], loop[i].g)


def test_vmap_in_axes_tree_maps_some_leaves():
    rng = np.random.default_rng(3)
    xb = jnp.asarray(rng.normal(size=(3, 5, 2)))
    x, y, _ = _data()
    batch = ot.PointCloud(xb, y)  # y shared by the batch
    treedef = jax.tree_util.tree_structure(batch)
    in_axes = jax.tree_util.tree_unflatten(treedef, [0, None, 0])  # x, y, ε statistic
    got = jax.vmap(_cost, in_axes=(in_axes,))(batch)
    _close(got, jnp.stack([_cost(ot.PointCloud(xb[i], y)) for i in range(3)]))

    ab = jnp.asarray(rng.uniform(0.5, 1.0, size=(3, 5)))
    ab = ab / jnp.sum(ab, axis=-1, keepdims=True)
    prob = ot.LinearProblem(ot.PointCloud(x, y, epsilon=0.5), a=ab)
    treedef = jax.tree_util.tree_structure(prob)
    in_axes = jax.tree_util.tree_unflatten(treedef, [None, None, 0, None])  # x, y, a, b

    def solve_prob(p):
        return ot.Sinkhorn(threshold=TH)(p).reg_ot_cost

    got = jax.vmap(solve_prob, in_axes=(in_axes,))(prob)
    want = [
        solve_prob(ot.LinearProblem(ot.PointCloud(x, y, epsilon=0.5), a=ab[i])) for i in range(3)
    ]
    _close(got, jnp.stack(want))


# -- scan -----------------------------------------------------------------------------------
def _descent_step(geom):
    """One gradient step of the points ``x`` on ``reg_ot_cost``."""

    def cost(xx):
        return _cost(geom.with_arrays((xx, geom.y)))

    value, gx = jax.value_and_grad(cost)(geom.x)
    return geom.with_arrays((geom.x - 0.5 * gx, geom.y)), value


def test_scan_carrying_a_geometry_equals_a_loop():
    x, y, _ = _data()
    geom = ot.PointCloud(x, y)
    final, values = lax.scan(lambda g, _: _descent_step(g), geom, None, length=2)
    g, want = geom, []
    for _ in range(2):
        g, v = _descent_step(g)
        want.append(v)
    _close(values, jnp.stack(want))
    _close(final.x, g.x)
    _close(final.epsilon, geom.epsilon)  # the statistic of the carry stays the first one


def test_scan_carrying_an_output_rebuilt_each_step():
    x, y, _ = _data()

    def step(out):
        geom = ot.PointCloud(out.geom.x * 0.9, out.geom.y)  # a new geometry and solver
        new = _solve(geom, init=(out.f, out.g))
        return new, new.reg_ot_cost

    first = _solve(ot.PointCloud(x, y))
    final, values = lax.scan(lambda o, _: step(o), first, None, length=2)
    out, want = first, []
    for _ in range(2):
        out, v = step(out)
        want.append(v)
    _close(values, jnp.stack(want))
    _close(final.f, out.f)
    _close(final.geom.x, out.geom.x)


# -- grad -----------------------------------------------------------------------------------
GRAD_GEOMETRIES = {
    "pointcloud": lambda: ot.PointCloud(*_data()[:2], epsilon=0.5),
    "dense": lambda: ot.Geometry(_data()[2], epsilon=0.2),
    "grid": lambda: ot.Grid(axes=_grid_axes(), epsilon=0.1),
}


@pytest.mark.parametrize("name", list(GRAD_GEOMETRIES))
def test_grad_of_jitted_function_of_a_geometry(name):
    geom = GRAD_GEOMETRIES[name]()
    n, m = geom.shape
    a = jnp.linspace(1.0, 2.0, n) / jnp.sum(jnp.linspace(1.0, 2.0, n))
    b = jnp.linspace(2.0, 1.0, m) / jnp.sum(jnp.linspace(2.0, 1.0, m))

    def fun(g):
        return ot.solve(g, a, b, threshold=1e-13).reg_ot_cost

    jitted = jax.jit(fun)
    arrays = geom.differentiable_arrays()
    eager = jax.grad(lambda arr: fun(geom.with_arrays(arr)))(arrays)
    through_jit = jax.grad(lambda arr: jitted(geom.with_arrays(arr)))(arrays)
    cotangent = jax.grad(jitted)(geom)  # a geometry of cotangents
    assert type(cotangent) is type(geom)
    for e, j, t in zip(eager, through_jit, cotangent.differentiable_arrays(), strict=True):
        _close(j, e, 1e-11)
        _close(t, e, 1e-11)
    # central finite differences of the jitted function (compiled once)
    h = 1e-5
    for k, arr in enumerate(arrays):
        flat = np.asarray(arr).ravel()
        fd = np.empty_like(flat)
        for i in range(flat.size):
            step = np.zeros_like(flat)
            step[i] = h

            def at(sign, k=k, arr=arr, step=step):
                moved = list(arrays)
                moved[k] = arr + sign * jnp.asarray(step.reshape(arr.shape))
                return float(jitted(geom.with_arrays(tuple(moved))))

            fd[i] = (at(1.0) - at(-1.0)) / (2 * h)
        np.testing.assert_allclose(np.asarray(through_jit[k]).ravel(), fd, rtol=1e-6, atol=1e-8)


# -- the registry ---------------------------------------------------------------------------
def test_every_public_pytree_class_is_registered():
    classes = (
        ot.Geometry,
        ot.PointCloud,
        ot.Grid,
        ot.LinearProblem,
        ot.SinkhornOutput,
        ot.BarycenterOutput,
        ot.DivergenceOutput,
        ot.FreeBarycenterOutput,
    )
    for cls in classes:
        assert cls in _pytree.registered()
    x, y, _ = _data()
    geom = ot.PointCloud(x, y, epsilon=0.5)
    assert jax.tree_util.tree_leaves(geom) == [x, y]
    assert jax.tree_util.tree_leaves(ot.LinearProblem(geom))[:2] == [x, y]


def test_a_class_registered_later_is_registered_with_jax():
    import otcore.backends.jax  # noqa: F401  (registers the callback)

    @_pytree.register
    class Late:
        def __init__(self, u, v):
            self.u, self.v = u, v

        def tree_flatten(self):
            return (self.u, self.v), None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls(*children)

    back = jax.tree_util.tree_map(lambda t: t * 2.0, Late(1.0, jnp.ones(2)))
    assert type(back) is Late and back.u == 2.0


def test_register_needs_both_methods():
    with pytest.raises(TypeError, match="must define tree_flatten and tree_unflatten"):

        @_pytree.register
        class Incomplete:
            def tree_flatten(self):
                return (), None


def test_static_compares_options_by_value():
    S = _pytree.Static
    assert S(ot.Sinkhorn()) == S(ot.Sinkhorn())
    assert hash(S(ot.Sinkhorn())) == hash(S(ot.Sinkhorn()))
    assert S(ot.Sinkhorn()) != S(ot.Sinkhorn(threshold=1e-4))
    tight = ot.ImplicitDiff(solver_kwargs={"rtol": 1e-8})
    assert S(ot.Sinkhorn(implicit_diff=tight)) != S(ot.Sinkhorn())
    assert S(ot.costs.PNorm(1.5)) == S(ot.costs.PNorm(1.5)) != S(ot.costs.PNorm(3.0))

    def user_cost(x, y):
        return ((x - y) ** 2).sum(-1)

    assert S(ot.costs.get_cost(user_cost)) == S(ot.costs.get_cost(user_cost))
    assert S(ot.costs.get_cost(user_cost)) != S(ot.costs.get_cost(lambda x, y: user_cost(x, y)))
    assert S(1) != S(1.0) and S(True) != S(1)


def test_geometry_from_jax_arrays_is_a_pytree_in_a_fresh_interpreter():
    """``import otcore`` imports no framework; the first JAX array registers the pytrees."""
    code = (
        "import sys\n"
        "import otcore as ot\n"
        "assert 'jax' not in sys.modules\n"
        "import jax, jax.numpy as jnp\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "assert 'otcore.backends.jax' not in sys.modules\n"
        "g = ot.PointCloud(jnp.asarray([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]), epsilon=0.5)\n"
        "f = lambda g: ot.solve(g, threshold=1e-11).reg_ot_cost\n"
        "print(float(jax.jit(f)(g) - f(g)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert abs(float(res.stdout.strip())) < TOL
