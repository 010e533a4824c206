"""The gradient test matrix: entry point × geometry × mode × backend, against finite differences.

Every cell of

* entry point: ``reg_ot_cost`` (of ``ot.solve``; on NumPy ``ot.reg_ot_cost`` /
  ``ot.reg_ot_cost_matrix``), the potentials ``f, g`` of ``ot.solve`` (through
  ``<v, f> + <u, g>``), ``ot.sinkhorn_divergence`` / ``ot.sinkhorn_divergence_costs``,
  ``ot.barycenter`` (through ``<v, barycenter>``);
* geometry: dense ``ot.Geometry(C)``, ``ot.PointCloud(x, y)``, online
  ``ot.PointCloud(x, y, batch_size=2)``, 1-D ``ot.Grid(axes=[ax])``, 2-D
  ``ot.Grid(axes=[ax0, ax1])`` and ``ot.Grid(shape=(4, 3))`` bound to the weights;
* mode: envelope (``use_danskin=True``, the default), implicit (``ImplicitDiff()`` with
  ``use_danskin=False``), unrolled (``implicit_diff=None``);
* backend: NumPy (``ot.grad``/``ot.vjp``, the manual rules), JAX (``jax.grad``), PyTorch
  (``torch.autograd.grad``)

is filled: a supported cell differentiates w.r.t. every array the entry point takes (weights,
histograms, and the geometry's arrays: cost matrices, points, grid axes) and checks each
directional derivative ``<∇F, d>`` against float64 central finite differences of the values
(NumPy, solved to ``threshold=1e-12``) along a fixed random direction ``d`` (tangent to the
simplex for balanced weights and histograms, symmetric for self-transport costs); cotangents
are fixed random vectors that do not depend on the inputs. An unsupported cell asserts its
clear error (``pytest.raises(..., match=...)``), and where no NumPy entry point takes a
geometry's arrays the documented ``None`` cotangent of ``ot.vjp`` is asserted.

Also: the issue's exact Grid reproducers (PyTorch potentials and ``use_danskin=False`` on
``Grid(shape=(4, 3))``; JAX grid-axes gradients with ``use_danskin=False``) and second
order (``jax.hessian`` / ``torch.autograd.functional.hessian`` of ``reg_ot_cost`` w.r.t. the
weights on a Grid, against finite differences of NumPy's manual gradient).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _diff_cases import central_fd, simplex_directions
from _helpers import make_backend

import otcore as ot
from otcore.errors import UnsupportedDerivativeError

EPS = 0.1
THRESHOLD = 1e-12
MAX_ITER = 5000
SOLVE = dict(threshold=THRESHOLD, max_iterations=MAX_ITER)
H = 1e-5  # finite-difference step: O(h²) ≈ 1e-10 truncation, 1e-12/h ≈ 1e-7 solution noise
RTOL = 1e-6  # on |<∇F, d> - FD| / (|∇F| |d|): a wrong term is O(1)

ENTRIES = ("cost", "potentials", "divergence", "barycenter")
GEOMS = ("dense", "pointcloud", "online", "grid1d", "grid2d", "gridshape")
MODES = ("envelope", "implicit", "unrolled")
BACKENDS = ("numpy", "jax", "torch")
GRIDS = ("grid1d", "grid2d", "gridshape")

# -- data ---------------------------------------------------------------------------------


def _simplex(rng, n):
    w = rng.uniform(0.3, 1.0, n)
    return w / w.sum()


def _geometry_data(kind, entry):
    """``(geometry arrays {name: array}, n, m)`` of one geometry (NumPy float64)."""
    rng = np.random.default_rng(GEOMS.index(kind))
    if kind == "dense":
        if entry == "divergence":  # three cost matrices; the self costs are symmetric
            x, y = rng.uniform(size=(6, 2)), rng.uniform(size=(5, 2)) + 0.2
            sq = lambda u, v: np.sum((u[:, None] - v[None]) ** 2, -1)  # noqa: E731
            return {"Cxy": sq(x, y), "Cxx": sq(x, x), "Cyy": sq(y, y)}, 6, 5
        return {"C": rng.uniform(0.0, 1.0, size=(6, 5))}, 6, 5
    if kind in ("pointcloud", "online"):
        return {"x": rng.uniform(size=(6, 2)), "y": rng.uniform(size=(5, 2)) + 0.2}, 6, 5
    if kind == "grid1d":
        return {"ax": np.sort(rng.uniform(size=5))}, 5, 5
    if kind == "grid2d":
        axes = {"ax0": np.sort(rng.uniform(size=4)), "ax1": np.sort(rng.uniform(size=3))}
        return axes, 12, 12
    return {}, 12, 12  # gridshape


def make_geometry(kind, arrays, entry=None):
    """The geometry ``kind`` on the backend of ``arrays`` (a dict as in ``_geometry_data``)."""
    if kind == "dense":
        return ot.Geometry(arrays["C"], epsilon=EPS)
    if kind in ("pointcloud", "online"):
        bs = 2 if kind == "online" else None
        return ot.PointCloud(arrays["x"], arrays["y"], epsilon=EPS, batch_size=bs)
    if kind == "grid1d":
        return ot.Grid(axes=[arrays["ax"]], epsilon=EPS)
    if kind == "grid2d":
        return ot.Grid(axes=[arrays["ax0"], arrays["ax1"]], epsilon=EPS)
    return ot.Grid(shape=(4, 3), epsilon=EPS)


@functools.cache
def problem(entry, kind):
    """``(arrays, tangent kinds, cotangents)``: the NumPy inputs of one (entry, geometry)
    cell in argument order, how each may be perturbed, and fixed random cotangents."""
    geom_arrays, n, m = _geometry_data(kind, entry)
    rng = np.random.default_rng(100 + 10 * ENTRIES.index(entry) + GEOMS.index(kind))
    arrays, tangents = dict(geom_arrays), {k: "free" for k in geom_arrays}
    if entry == "divergence" and kind == "dense":
        tangents.update(Cxx="sym", Cyy="sym")
    if entry == "barycenter":
        A = np.stack([_simplex(rng, n), _simplex(rng, n)], axis=1)
        arrays.update(A=A, weights=np.array([0.3, 0.7]))
        tangents.update(A="columns", weights="simplex")
        cot = {"v": rng.normal(size=m)}
    else:
        b_size = n if (entry == "divergence" and kind in GRIDS) else m
        arrays.update(a=_simplex(rng, n), b=_simplex(rng, b_size))
        tangents.update(a="simplex", b="simplex")
        v, u = rng.normal(size=n), rng.normal(size=m)
        u = u + (v.sum() - u.sum()) / m  # Σv = Σu: <v, f> + <u, g> is gauge invariant
        cot = {"v": v, "u": u}
    return arrays, tangents, cot


def direction(shape, tangent, seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=shape)
    if tangent == "simplex":
        d = d - d.mean()
    elif tangent == "columns":
        d = d - d.mean(axis=0, keepdims=True)
    elif tangent == "sym":
        d = d + d.T
    return d


# -- the entry points, as functions of their arrays (any backend) ---------------------------

MODE_KW = {
    "envelope": {},
    "implicit": {"implicit_diff": ot.ImplicitDiff(), "use_danskin": False},
    "unrolled": {"implicit_diff": None},
}
BARY_MODE_KW = {
    "envelope": {"use_danskin": True},
    "implicit": {"implicit_diff": ot.ImplicitDiff()},
    "unrolled": {"implicit_diff": None},
}


def _like(ref, value):
    import array_api_compat

    xp = array_api_compat.array_namespace(ref)
    return xp.asarray(value, dtype=ref.dtype, device=array_api_compat.device(ref))


def entry_function(entry, kind, mode):
    """``F(*arrays) -> scalar`` of one cell (arrays in the order of ``problem``)."""
    names = list(problem(entry, kind)[0])
    cot = problem(entry, kind)[2]
    kw = dict(SOLVE)
    geom_names = [k for k in names if k not in ("a", "b", "A", "weights")]

    def split(args):
        d = dict(zip(names, args))
        return d, {k: d[k] for k in geom_names}

    if entry in ("cost", "potentials"):

        def fun(*args):
            d, g_arr = split(args)
            out = ot.solve(make_geometry(kind, g_arr), d["a"], d["b"], **kw, **MODE_KW[mode])
            if entry == "cost":
                return out.reg_ot_cost
            return _sum(out.f * _like(out.f, cot["v"])) + _sum(out.g * _like(out.g, cot["u"]))

    elif entry == "divergence":

        def fun(*args):
            d, g_arr = split(args)
            opts = dict(**kw, **MODE_KW[mode])
            if kind in ("pointcloud", "online"):
                bs = 2 if kind == "online" else None
                return ot.sinkhorn_divergence(
                    d["x"], d["y"], d["a"], d["b"], epsilon=EPS, batch_size=bs, **opts
                )
            if kind == "dense":
                return ot.sinkhorn_divergence_costs(
                    d["Cxy"], d["Cxx"], d["Cyy"], d["a"], d["b"], epsilon=EPS, **opts
                )
            grid = make_geometry(kind, g_arr)
            return ot.sinkhorn_divergence_costs(grid, grid, grid, d["a"], d["b"], **opts)

    else:

        def fun(*args):
            d, g_arr = split(args)
            geom = make_geometry(kind, g_arr)
            hist = ot.barycenter(d["A"], geom, d["weights"], **kw, **BARY_MODE_KW[mode])
            return _sum(hist * _like(hist, cot["v"]))

    return fun


def _sum(x):
    import array_api_compat

    return array_api_compat.array_namespace(x).sum(x)


# -- finite differences (NumPy values) ------------------------------------------------------


@functools.cache
def fd_reference(entry, kind):
    """``{name: (direction, FD of F along it)}`` for every array of the cell (NumPy)."""
    arrays, tangents, _ = problem(entry, kind)
    mode = "implicit" if entry == "barycenter" else "envelope"  # values do not depend on it
    fun = entry_function(entry, kind, mode)
    names = list(arrays)
    out = {}
    for i, name in enumerate(names):
        d = direction(arrays[name].shape, tangents[name], seed=1000 + i)

        def along(t, i=i, d=d):
            args = [arrays[k] for k in names]
            args[i] = args[i] + t * d
            return float(fun(*args))

        out[name] = (d, float(central_fd(along, np.zeros(()), H, np.ones((1,)))[0]))
    return out


def check_against_fd(entry, kind, grads, backend, partial=False):
    """``grads`` (``{name: NumPy gradient}``) against ``fd_reference`` (all of its arrays
    unless ``partial``)."""
    ref = fd_reference(entry, kind)
    if not partial:
        assert set(grads) == set(ref), (sorted(grads), sorted(ref))
    for name, g in grads.items():
        d, fd = ref[name]
        g = np.asarray(g)
        assert g.shape == d.shape, (name, g.shape, d.shape)
        assert np.all(np.isfinite(g)), f"{backend}: d/d{name} is not finite: {g}"
        scale = np.linalg.norm(g) * np.linalg.norm(d)
        err = abs(float(np.sum(g * d)) - fd)
        assert err <= RTOL * max(scale, abs(fd)), (
            f"{backend} {entry}/{kind}: <d/d{name}, d> = {np.sum(g * d):.12g}, "
            f"FD = {fd:.12g}, relative error {err / max(scale, abs(fd)):.2e}"
        )


# -- gradients on each backend --------------------------------------------------------------


def autodiff_grads(backend, entry, kind, mode):
    """``{name: gradient}`` of the cell's scalar w.r.t. every array (JAX or PyTorch)."""
    arrays = problem(entry, kind)[0]
    names = list(arrays)
    fun = entry_function(entry, kind, mode)
    be = make_backend(backend)
    xs = [be.to_xp(arrays[k]) for k in names]
    if backend == "jax":
        import jax

        grads = jax.grad(fun, argnums=tuple(range(len(xs))))(*xs)
    else:
        import torch

        for t in xs:
            t.requires_grad_(True)
        value = fun(*xs)
        grads = torch.autograd.grad(value, xs)
    return {k: be.to_np(g) for k, g in zip(names, grads)}


def _no_rule(fun_name="solve"):
    return pytest.raises(
        UnsupportedDerivativeError, match=rf"ot\.vjp of {fun_name} on numpy arrays.*not supported"
    )


def numpy_cell(entry, kind, mode):
    """The NumPy cell (manual rules): its gradients, or the clear error it raises."""
    arrays, _, cot = problem(entry, kind)
    d = dict(arrays)
    kw = dict(SOLVE, **MODE_KW[mode])
    if entry == "potentials" or (entry == "cost" and kind in GRIDS):
        # ot.solve returns an output object, not an array: there is no rule to bind, on
        # any geometry; a Grid's reg_ot_cost has no array entry point on NumPy
        geom = make_geometry(kind, {k: d[k] for k in d if k not in ("a", "b")})
        with _no_rule():
            ot.vjp(ot.solve, geom, d["a"], d["b"], **kw)
        return None
    if entry == "cost":
        if kind == "dense":
            g = ot.grad(ot.reg_ot_cost_matrix, argnums=(0, 1, 2))(
                d["C"], d["a"], d["b"], epsilon=EPS, **kw
            )
            return dict(zip(("C", "a", "b"), g))
        bs = 2 if kind == "online" else None
        g = ot.grad(ot.reg_ot_cost, argnums=(0, 1, 2, 3))(
            d["x"], d["y"], d["a"], d["b"], epsilon=EPS, batch_size=bs, **kw
        )
        return dict(zip(("x", "y", "a", "b"), g))
    if entry == "divergence":
        if kind in ("pointcloud", "online"):
            bs = 2 if kind == "online" else None
            args = (d["x"], d["y"], d["a"], d["b"])
            call = functools.partial(
                ot.grad(ot.sinkhorn_divergence, argnums=(0, 1, 2, 3)),
                *args,
                epsilon=EPS,
                batch_size=bs,
                **kw,
            )
            if mode == "unrolled":
                with pytest.raises(
                    UnsupportedDerivativeError, match=r"unrolled mode, order 1.*not supported"
                ):
                    call()
                return None
            return dict(zip(("x", "y", "a", "b"), call()))
        if kind == "dense":
            costs = (d["Cxy"], d["Cxx"], d["Cyy"])
            eps_kw = {"epsilon": EPS}
        else:
            grid = make_geometry(kind, {k: d[k] for k in d if k not in ("a", "b")})
            costs = (grid, grid, grid)
            eps_kw = {}
        call = functools.partial(
            ot.vjp, ot.sinkhorn_divergence_costs, *costs, d["a"], d["b"], **eps_kw, **kw
        )
        if mode == "unrolled":
            with pytest.raises(
                UnsupportedDerivativeError, match=r"unrolled mode, order 1.*not supported"
            ):
                call()
            return None
        if mode == "implicit":
            with pytest.raises(
                UnsupportedDerivativeError,
                match=r"implicit mode, order 1: not supported .*envelope",
            ):
                call()
            return None
        _, pull = call()
        g = pull(np.asarray(1.0))
        if kind == "dense":
            return dict(zip(("Cxy", "Cxx", "Cyy", "a", "b"), g))
        # a geometry argument is held fixed by ot.vjp: its axes have no NumPy entry point
        assert g[:3] == (None, None, None)
        return {"a": g[3], "b": g[4], **_unreachable(kind)}
    # barycenter
    bkw = dict(SOLVE, **BARY_MODE_KW[mode])
    geom_arg = d["C"] if kind == "dense" else make_geometry(kind, d)
    if kind == "dense":
        bkw["epsilon"] = EPS  # the ε that make_geometry gives the dense geometry
    if mode == "envelope":
        with pytest.raises(TypeError, match=r"unexpected keyword argument.*use_danskin"):
            ot.vjp(ot.barycenter, d["A"], geom_arg, d["weights"], **bkw)
        return None
    _, pull = ot.vjp(ot.barycenter, d["A"], geom_arg, d["weights"], **bkw)
    g_A, g_geom, g_w = pull(np.asarray(cot["v"]))
    if kind == "dense":
        return {"A": g_A, "C": g_geom, "weights": g_w}
    assert g_geom is None  # a geometry argument is held fixed by ot.vjp
    return {"A": g_A, "weights": g_w, **_unreachable(kind)}


def _unreachable(kind):
    """Geometry arrays that no NumPy entry point takes (a geometry object is passed): a
    ``None`` cotangent, asserted in ``test_cell``."""
    return {k: None for k in _geometry_data(kind, None)[0]}


# -- the matrix -----------------------------------------------------------------------------


def _autodiff_unsupported(entry, mode):
    """The clear error of an autodiff cell that does not exist, or None."""
    if entry == "barycenter" and mode == "envelope":
        # a barycenter is a histogram, not an optimal value: no envelope theorem applies
        return pytest.raises(TypeError, match=r"unexpected keyword argument.*use_danskin")
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", GEOMS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_cell(entry, kind, mode, backend):
    if backend == "numpy":
        grads = numpy_cell(entry, kind, mode)
        if grads is None:
            return  # the cell's clear error was asserted
        unreachable = sorted(k for k, g in grads.items() if g is None)
        grads = {k: g for k, g in grads.items() if g is not None}
        # exactly the arrays of a geometry passed as an object lack a cotangent
        held = kind in GRIDS or (entry == "barycenter" and kind != "dense")
        assert unreachable == (sorted(_geometry_data(kind, None)[0]) if held else [])
        ref = fd_reference(entry, kind)
        assert set(grads) | set(unreachable) == set(ref)
        check_against_fd(entry, kind, grads, backend, partial=True)
        return
    pytest.importorskip(backend)
    err = _autodiff_unsupported(entry, mode)
    if err is not None:
        with err:
            autodiff_grads(backend, entry, kind, mode)
        return
    check_against_fd(entry, kind, autodiff_grads(backend, entry, kind, mode), backend)


# -- the issue's reproducers ----------------------------------------------------------------


def _shape_grid_weights():
    return np.full(12, 1.0 / 12)


def _fd_on_simplex(fun, w, h=H):
    """Central differences of ``fun`` at ``w`` along the zero-sum directions."""
    dirs = simplex_directions(w)
    return dirs, central_fd(fun, w, h, dirs)


def test_issue_torch_shape_grid_potentials_gradient():
    """``torch.autograd.grad(out.f.sum(), a)`` on ``Grid(shape=(4, 3))``: finite, = FD.

    ``f.sum()`` alone is not gauge invariant (``(f + c, g - c)`` is the same plan), so its
    derivative along the simplex is what FD sees only up to the solver's gauge; the
    comparison is on ``<v, f> + <u, g>`` with ``Σv = Σu`` (gauge invariant) as well."""
    torch = pytest.importorskip("torch")
    a = torch.full((12,), 1 / 12, dtype=torch.float64, requires_grad=True)
    out = ot.solve(ot.Grid(shape=(4, 3), epsilon=0.1), a, a.detach(), threshold=1e-12)
    (ga,) = torch.autograd.grad(out.f.sum(), a)
    assert torch.all(torch.isfinite(ga))
    w = _shape_grid_weights()
    rng = np.random.default_rng(5)
    v = rng.normal(size=12)
    u = rng.normal(size=12)
    u = u + (v.sum() - u.sum()) / 12

    def loss_np(a_np):
        o = ot.solve(ot.Grid(shape=(4, 3), epsilon=0.1), a_np, w, threshold=1e-12)
        return float(v @ o.f + u @ o.g)

    a = torch.full((12,), 1 / 12, dtype=torch.float64, requires_grad=True)
    out = ot.solve(ot.Grid(shape=(4, 3), epsilon=0.1), a, a.detach(), threshold=1e-12)
    loss = torch.sum(out.f * torch.asarray(v)) + torch.sum(out.g * torch.asarray(u))
    (ga,) = torch.autograd.grad(loss, a)
    dirs, fd = _fd_on_simplex(loss_np, w)
    np.testing.assert_allclose(dirs @ ga.numpy(), fd, rtol=0, atol=1e-6 * np.abs(fd).max())


def test_issue_torch_shape_grid_reg_ot_cost_without_danskin():
    torch = pytest.importorskip("torch")
    w = _shape_grid_weights()
    a = torch.asarray(w).requires_grad_(True)
    out = ot.solve(
        ot.Grid(shape=(4, 3), epsilon=0.1), a, a.detach(), threshold=1e-12, use_danskin=False
    )
    (ga,) = torch.autograd.grad(out.reg_ot_cost, a)

    def cost_np(a_np):
        return float(
            ot.solve(ot.Grid(shape=(4, 3), epsilon=0.1), a_np, w, threshold=1e-12).reg_ot_cost
        )

    dirs, fd = _fd_on_simplex(cost_np, w)
    assert np.all(np.isfinite(ga.numpy()))
    np.testing.assert_allclose(dirs @ ga.numpy(), fd, rtol=0, atol=1e-6 * np.abs(fd).max())


def _grid_axes_cost_np(ax0, ax1, w):
    g = ot.Grid(axes=[ax0, ax1], epsilon=0.1)
    return float(ot.solve(g, w, w, threshold=1e-12).reg_ot_cost)


def test_issue_jax_grid_axes_gradient_without_danskin():
    """``use_danskin=False`` gave NaN w.r.t. the axes (log of an empty negative part)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    ax0, ax1 = np.linspace(0, 1, 4), np.linspace(0, 1, 3)
    w = _shape_grid_weights()

    def cost(ax0, ax1):
        g = ot.Grid(axes=[ax0, ax1], epsilon=0.1)
        return ot.solve(g, jnp.asarray(w), jnp.asarray(w), threshold=1e-12, use_danskin=False)

    g0, g1 = jax.grad(lambda u, v: cost(u, v).reg_ot_cost, argnums=(0, 1))(
        jnp.asarray(ax0), jnp.asarray(ax1)
    )
    fd0 = central_fd(lambda t: _grid_axes_cost_np(t, ax1, w), ax0, H)
    fd1 = central_fd(lambda t: _grid_axes_cost_np(ax0, t, w), ax1, H)
    for g, fd in ((g0, fd0), (g1, fd1)):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g), fd, rtol=0, atol=1e-6 * np.abs(fd).max())


# -- second order on a Grid ------------------------------------------------------------------


def _grid2d_case():
    rng = np.random.default_rng(11)
    ax0, ax1 = np.sort(rng.uniform(size=4)), np.sort(rng.uniform(size=3))
    return ax0, ax1, _simplex(rng, 12), _simplex(rng, 12)


@functools.cache
def _grid_hessian_reference():
    """``Dᵀ H D`` by central differences of NumPy's manual gradient (``reg_ot_cost_matrix``
    on the grid's cost matrix: an independent code path), ``D`` the zero-sum directions."""
    ax0, ax1, a, b = _grid2d_case()
    C = np.asarray(ot.Grid(axes=[ax0, ax1]).cost_matrix)
    dirs = simplex_directions(a)

    def grad_a(a_):
        return ot.grad(ot.reg_ot_cost_matrix, argnums=1)(C, a_, b, epsilon=EPS, **SOLVE)

    cols = [(grad_a(a + 1e-5 * d) - grad_a(a - 1e-5 * d)) / 2e-5 for d in dirs]
    return dirs, np.stack([dirs @ c for c in cols])


@pytest.mark.parametrize("mode", ["envelope", "implicit"])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_grid_hessian_wrt_weights_equals_finite_differences(backend, mode):
    """Second order is exact in either first-order mode: the envelope (Danskin) gradient,
    differentiated again, must see how the potentials move (DESIGN §3.2.5)."""
    pytest.importorskip(backend)
    ax0, ax1, a, b = _grid2d_case()
    be = make_backend(backend)
    kw = dict(SOLVE, **MODE_KW[mode])

    def cost(a_, ax0_, ax1_, b_):
        return ot.solve(ot.Grid(axes=[ax0_, ax1_], epsilon=EPS), a_, b_, **kw).reg_ot_cost

    args = [be.to_xp(v) for v in (a, ax0, ax1, b)]
    if backend == "jax":
        import jax

        hess = jax.jit(jax.hessian(cost))(*args)
    else:
        import torch

        hess = torch.autograd.functional.hessian(lambda t: cost(t, *args[1:]), args[0])
    hess = be.to_np(hess)
    dirs, ref = _grid_hessian_reference()
    assert np.all(np.isfinite(hess)), hess
    np.testing.assert_allclose(dirs @ hess @ dirs.T, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_grid_plan_apply_derivatives_on_one_signed_vectors_equal_dense(backend):
    """``P v`` on a grid splits ``v`` into log-positive and log-negative parts; for a
    one-signed ``v`` (and rows of zero weight) one part is empty in whole slices, whose
    log-sum-exp must have zero, not NaN, derivatives. Reference: the dense operators."""
    pytest.importorskip(backend)
    be = make_backend(backend)
    ax0, ax1, _, _ = _grid2d_case()
    rng = np.random.default_rng(3)
    fe, ge = rng.normal(size=12), rng.normal(size=12)
    fe[[0, 5]] = -np.inf  # zero weights
    vecs = {"positive": rng.uniform(0.1, 1.0, 12), "negative": -rng.uniform(0.1, 1.0, 12)}
    ct = rng.normal(size=12)

    def apply(geom_kind, fe_, ge_, v_, axis):
        grid = ot.Grid(axes=[be.to_xp(ax0), be.to_xp(ax1)], epsilon=EPS)
        geom = grid if geom_kind == "grid" else ot.Geometry(grid.cost_matrix, epsilon=EPS)
        out = geom.operators().plan_apply(fe_, ge_, v_, axis)
        keep = be.to_xp(np.isfinite(fe) if axis == 1 else np.ones(12, bool))
        return _sum(be.where(keep, out, 0.0 * out) * be.to_xp(ct))

    for name, v in vecs.items():
        for axis in (0, 1):
            grads = {}
            for geom_kind in ("grid", "dense"):
                args = [be.to_xp(ge), be.to_xp(v)]
                if backend == "jax":
                    import jax

                    g = jax.grad(
                        lambda ge_, v_, k=geom_kind, ax=axis: apply(k, be.to_xp(fe), ge_, v_, ax),
                        argnums=(0, 1),
                    )(*args)
                else:
                    import torch

                    for t in args:
                        t.requires_grad_(True)
                    g = torch.autograd.grad(apply(geom_kind, be.to_xp(fe), *args, axis), args)
                grads[geom_kind] = [be.to_np(t) for t in g]
            for which, g_grid, g_dense in zip(("ge", "v"), grads["grid"], grads["dense"]):
                assert np.all(np.isfinite(g_grid)), (name, axis, which, g_grid)
                np.testing.assert_allclose(
                    g_grid, g_dense, rtol=0, atol=1e-12 * np.abs(g_dense).max()
                )
