"""The Sinkhorn divergence: values, options, error paths, and second order on the seed setup.

Values (NumPy, float64): ``S(α, α) = 0``, ``S ≥ 0``, the decomposition into three
``reg_ot_cost`` solves plus the mass term, symmetric self solves, ``static_b``, the
cost-matrix entry point.

Second order on the setup of OTT-JAX's tutorial "Sinkhorn Divergence Hessians" (``n = 17``,
``m = 15``, ``d = 3``, ``use_danskin=False``, threshold 1e-9, ε fixed at the default
``0.05·std(C_xy)`` of the base point): the NumPy (analytic rules), JAX (``jax.hessian``) and
PyTorch (``torch.autograd.functional.hessian``) Hessians w.r.t. ``a`` and ``x`` agree with
each other and with ``jax.hessian`` of OTT-JAX's ``sinkhorn_divergence``; ``ot.hvp``
matches ``H v``; the gradients agree across backends.

A balanced problem is only defined on the simplex: its Hessians in ``a`` are compared on
the tangent space ``{Σδ = 0}``, i.e. as ``P H P`` with ``P = I - 11ᵀ/n``. (Removing the row
means only, ``H P``, keeps a term ``1vᵀ`` that depends on each implementation's convention
off the simplex: 0.14 between otcore and OTT-JAX here.)

Each JAX program is compiled once per module with XLA's optimisations off (the options of
``jax_disable_most_optimizations``): compilation dominates, the programs run in ms.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import otcore as ot

THRESHOLD = 1e-9
FAST_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# the default implicit solver (CG with rtol 1e-13 and an absolute floor atol 1e-15 in float64)
IMPLICIT = ot.ImplicitDiff()


def sample(seed: int, n: int = 17, m: int = 15, d: int = 3):
    """The seed's sampler (NumPy): ``x, y ~ U[0,1]^d``, ``a, b = U + 0.1`` normalised."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d))
    y = rng.uniform(size=(m, d))
    a = rng.uniform(size=n) + 0.1
    b = rng.uniform(size=m) + 0.1
    return x, y, a / a.sum(), b / b.sum()


def sqeuclidean(x, y):
    return np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)


def centre(h):
    """``P H P``: a weight Hessian on the simplex's tangent space."""
    return h - h.mean(axis=0, keepdims=True) - h.mean(axis=1, keepdims=True) + h.mean()


def comparable(arg, h):
    return centre(np.asarray(h)) if arg == "a" else np.asarray(h)


def max_abs(u, v):
    return float(np.max(np.abs(np.asarray(u) - np.asarray(v))))


# -- values (NumPy) -------------------------------------------------------------------
# A moderate ε for the tests that run *standard* Sinkhorn updates on a self-transport
# problem (the x-y term of S(α, α), reg_ot_cost(x, x), symmetric_sinkhorn=False): at the
# default ε (0.019 here) those converge extremely slowly (marginal error 3e-7 after 20000
# iterations, as with a plain NumPy Sinkhorn), while the symmetric updates take ~20.
EPS = 0.1


@pytest.mark.parametrize("tau", [1.0, 0.8], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divergence_of_a_measure_with_itself_is_zero(seed, tau):
    x, _, a, _ = sample(seed)
    mass = 1.0 if tau == 1.0 else 1.7
    kw = {"tau_a": tau, "tau_b": tau, "epsilon": EPS, "threshold": THRESHOLD}
    value = ot.sinkhorn_divergence(x, x, mass * a, mass * a, **kw)
    assert abs(float(value)) < 1e-10


@pytest.mark.parametrize("tau", [1.0, 0.8], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divergence_is_positive(seed, tau):
    x, y, a, b = sample(seed)
    a2 = a
    if tau < 1.0:
        a, b, a2 = 1.3 * a, 0.6 * b, 1.3 * a * (1 + 1e-3)  # different masses
    kw = {"tau_a": tau, "tau_b": tau, "epsilon": EPS, "threshold": THRESHOLD}
    value = ot.sinkhorn_divergence(x, y, a, b, **kw)
    near = ot.sinkhorn_divergence(x, x + 1e-3, a, a2, **kw)  # nearly identical measures
    assert float(value) > 1e-2
    assert 0 < float(near) < 1e-5


@pytest.mark.parametrize("tau_a, tau_b", [(1.0, 1.0), (0.8, 0.6)], ids=["balanced", "unbalanced"])
def test_equals_combination_of_reg_ot_costs(tau_a, tau_b):
    x, y, a, b = sample(3)
    if tau_a < 1.0:
        a, b = 1.2 * a, 0.7 * b
    kw = {"threshold": 1e-11}
    eps = EPS  # shared by the three terms (the default would be that of the x-y cost)
    value = ot.sinkhorn_divergence(x, y, a, b, tau_a=tau_a, tau_b=tau_b, epsilon=eps, **kw)
    xy = ot.reg_ot_cost(x, y, a, b, tau_a=tau_a, tau_b=tau_b, epsilon=eps, **kw)
    xx = ot.reg_ot_cost(x, x, a, a, tau_a=tau_a, tau_b=tau_a, epsilon=eps, **kw)
    yy = ot.reg_ot_cost(y, y, b, b, tau_a=tau_b, tau_b=tau_b, epsilon=eps, **kw)
    mass_term = 0.5 * eps * (a.sum() - b.sum()) ** 2
    expected = xy - 0.5 * (xx + yy) + mass_term
    assert float(value) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
    if tau_a < 1.0:  # the mass term matters at this tolerance
        assert mass_term > 1e-3 * abs(float(value))


def test_symmetric_self_solves_take_fewer_iterations():
    x, y, a, b = sample(0)
    kw = {"epsilon": EPS, "threshold": THRESHOLD, "inner_iterations": 1, "return_output": True}
    _, out = ot.sinkhorn_divergence(x, y, a, b, **kw)
    _, plain = ot.sinkhorn_divergence(x, y, a, b, symmetric_sinkhorn=False, **kw)
    n_xy, n_xx, n_yy = (int(k) for k in out.n_iters)
    assert bool(out.converged) and bool(plain.converged)
    assert n_xx < n_xy and n_yy < n_xy
    # the averaged updates are what saves iterations on the self terms
    assert n_xx < int(plain.n_iters[1]) and n_yy < int(plain.n_iters[2])


@pytest.mark.parametrize("tau", [1.0, 0.8], ids=["balanced", "unbalanced"])
def test_static_b_with_offset_equals_full_value(tau):
    x, y, a, b = sample(4)
    kw = {"tau_a": tau, "tau_b": tau, "threshold": THRESHOLD}
    full, out = ot.sinkhorn_divergence(x, y, a, b, return_output=True, **kw)
    offset = out.outputs[2].reg_ot_cost
    static, out_s = ot.sinkhorn_divergence(
        x, y, a, b, static_b=True, offset_static_b=offset, return_output=True, **kw
    )
    assert float(static) == pytest.approx(float(full), rel=1e-13, abs=1e-15)
    assert out_s.outputs[2] is None and out_s.n_iters[2] is None
    no_offset = ot.sinkhorn_divergence(x, y, a, b, static_b=True, **kw)
    assert float(no_offset) == pytest.approx(float(full) + 0.5 * float(offset), rel=1e-12)
    # the cost-matrix entry point: cost_yy may be omitted with static_b
    c_xy, c_xx = sqeuclidean(x, y), sqeuclidean(x, x)
    from_costs = ot.sinkhorn_divergence_costs(
        c_xy, c_xx, None, a, b, static_b=True, offset_static_b=offset, **kw
    )
    assert float(from_costs) == pytest.approx(float(full), rel=1e-10)


@pytest.mark.parametrize("tau", [1.0, 0.7], ids=["balanced", "unbalanced"])
def test_costs_entry_point_equals_point_clouds(tau):
    x, y, a, b = sample(5)
    kw = {"tau_a": tau, "tau_b": tau, "threshold": THRESHOLD}
    points = ot.sinkhorn_divergence(x, y, a, b, **kw)
    costs = ot.sinkhorn_divergence_costs(
        sqeuclidean(x, y), sqeuclidean(x, x), sqeuclidean(y, y), a, b, **kw
    )
    assert float(costs) == pytest.approx(float(points), rel=1e-10)


# -- error paths ------------------------------------------------------------------------
def test_costs_without_cost_yy_need_static_b():
    x, y, a, b = sample(0)
    with pytest.raises(ValueError, match="cost_yy"):
        ot.sinkhorn_divergence_costs(sqeuclidean(x, y), sqeuclidean(x, x), None, a, b)


@pytest.mark.parametrize("case", ["non-square", "tau_a != tau_b"])
def test_symmetric_solve_needs_a_symmetric_problem(case):
    x, y, a, b = sample(0)
    if case == "non-square":
        prob = ot.LinearProblem(ot.Geometry(sqeuclidean(x, y), epsilon=0.1), a, b)
    else:
        prob = ot.LinearProblem(ot.Geometry(sqeuclidean(x, x), epsilon=0.1), a, a, tau_a=0.9)
    with pytest.raises(ValueError, match="symmetric"):
        ot.Sinkhorn()(prob, symmetric=True)


# -- second order on the seed setup ----------------------------------------------------
@pytest.fixture(scope="module")
def seed_setup():
    x, y, a, b = sample(0)
    eps = float(ot.PointCloud(x, y).epsilon)
    # ε held fixed: the default recomputes it from x, which derivatives treat as constant
    kwargs = {"epsilon": eps, "threshold": THRESHOLD, "use_danskin": False}
    return {"x": x, "y": y, "a": a, "b": b, "eps": eps, "kwargs": kwargs}


@pytest.fixture(scope="module")
def numpy_second_order(seed_setup):
    s = seed_setup
    x, y, a, b = s["x"], s["y"], s["a"], s["b"]
    kw = dict(s["kwargs"], implicit_diff=IMPLICIT)
    value, (gx, ga) = ot.value_and_grad(ot.sinkhorn_divergence, argnums=(0, 2))(x, y, a, b, **kw)
    return {
        "value": float(value),
        "grad_a": ga,
        "grad_x": gx,
        "a": ot.hessian(ot.sinkhorn_divergence, argnums=2)(x, y, a, b, **kw),
        "x": ot.hessian(ot.sinkhorn_divergence, argnums=0)(x, y, a, b, **kw),
    }


@contextlib.contextmanager
def one_torch_thread(torch):
    """Tiny problems: more intra-op threads only add overhead (and fight other processes)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def torch_second_order(seed_setup):
    torch = pytest.importorskip("torch")
    s = seed_setup
    x, y, a, b = (torch.tensor(s[k], dtype=torch.float64) for k in "xyab")
    kw = dict(s["kwargs"], implicit_diff=IMPLICIT)
    with one_torch_thread(torch):
        value, (gx, ga) = ot.value_and_grad(ot.sinkhorn_divergence, argnums=(0, 2))(
            x, y, a, b, **kw
        )
        ha = ot.hessian(ot.sinkhorn_divergence, argnums=2)(x, y, a, b, **kw)
        hx = ot.hessian(ot.sinkhorn_divergence, argnums=0)(x, y, a, b, **kw)
    out = {"value": float(value), "grad_a": ga, "grad_x": gx, "a": ha, "x": hx}
    return {k: v if isinstance(v, float) else v.detach().numpy() for k, v in out.items()}


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def compile_fast(jax, fn, *args):
    """``jax.jit(fn)`` compiled once for ``args`` without XLA optimisations."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_XLA)


@pytest.fixture(scope="module")
def jax_second_order(seed_setup):
    """Value, ``ot.grad`` and ``jax.hessian`` w.r.t. ``(a, x)``: one jitted program."""
    jax = _jax()
    jnp = jax.numpy
    s = seed_setup
    y, b = jnp.asarray(s["y"]), jnp.asarray(s["b"])
    kw = dict(s["kwargs"], implicit_diff=IMPLICIT)

    def loss(a, x):
        return ot.sinkhorn_divergence(x, y, a, b, **kw)

    def everything(a, x):
        value, (gx, ga) = ot.value_and_grad(ot.sinkhorn_divergence, argnums=(0, 2))(
            x, y, a, b, **kw
        )
        (haa, _), (_, hxx) = jax.hessian(loss, argnums=(0, 1))(a, x)
        return value, ga, gx, haa, hxx

    a, x = jnp.asarray(s["a"]), jnp.asarray(s["x"])
    out = [np.asarray(t) for t in compile_fast(jax, everything, a, x)(a, x)]
    return dict(zip(("value", "grad_a", "grad_x", "a", "x"), [float(out[0]), *out[1:]]))


@pytest.fixture(scope="module")
def ott_hessians(seed_setup):
    """``jax.hessian`` of OTT-JAX's divergence, same inputs, same ε, implicit diff."""
    jax = _jax()
    pytest.importorskip("ott")
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence as sd

    jnp = jax.numpy
    s = seed_setup
    y, b = jnp.asarray(s["y"]), jnp.asarray(s["b"])

    def loss(a, x):
        out = sd.sinkhorn_divergence(
            pointcloud.PointCloud,
            x,
            y,
            a=a,
            b=b,
            epsilon=s["eps"],
            solve_kwargs={"threshold": THRESHOLD, "use_danskin": False},
        )
        return out[0] if isinstance(out, tuple) else out.divergence  # 0.6: (div, output)

    def hessians(a, x):
        (haa, _), (_, hxx) = jax.hessian(loss, argnums=(0, 1))(a, x)
        return haa, hxx

    a, x = jnp.asarray(s["a"]), jnp.asarray(s["x"])
    haa, hxx = compile_fast(jax, hessians, a, x)(a, x)
    return {"a": np.asarray(haa), "x": np.asarray(hxx)}


@pytest.fixture(scope="module")
def second_order(request):
    """``{backend: results}`` for the installed backends."""
    out = {"numpy": request.getfixturevalue("numpy_second_order")}
    for name in ("jax", "torch"):
        try:
            out[name] = request.getfixturevalue(f"{name}_second_order")
        except pytest.skip.Exception:
            pass
    return out


def _pairs(results):
    names = sorted(results)
    pairs = [(p, q) for i, p in enumerate(names) for q in names[i + 1 :]]
    if not pairs:
        pytest.skip("needs two backends")
    return pairs


@pytest.mark.parametrize("arg", ["a", "x"])
def test_hessians_agree_across_backends(second_order, arg):
    for p, q in _pairs(second_order):
        hp, hq = (comparable(arg, second_order[k][arg]) for k in (p, q))
        assert max_abs(hp, hq) < 1e-7, (p, q)


@pytest.mark.parametrize("arg", ["a", "x"])
def test_hessians_match_ott_jax(second_order, ott_hessians, arg):
    ref = comparable(arg, ott_hessians[arg])
    assert np.max(np.abs(ref)) > 0.1  # a real reference, not zeros
    for name, res in second_order.items():
        assert max_abs(comparable(arg, res[arg]), ref) < 1e-6, name


def test_weight_hessian_is_positive_definite_on_the_simplex(numpy_second_order):
    h = numpy_second_order["a"]
    n = h.shape[0]
    q = np.linalg.qr(np.eye(n) - 1.0 / n)[0][:, : n - 1]  # orthonormal basis of Σδ = 0
    eig = np.linalg.eigvalsh(q.T @ (0.5 * (h + h.T)) @ q)
    assert eig[0] > 1e-2
    assert max_abs(h, h.T) < 1e-8


def test_gradients_agree_across_backends(second_order):
    for p, q in _pairs(second_order):
        rp, rq = second_order[p], second_order[q]
        assert rp["value"] == pytest.approx(rq["value"], rel=1e-12), (p, q)
        assert max_abs(rp["grad_x"], rq["grad_x"]) < 1e-9, (p, q)
        ga_p, ga_q = (r["grad_a"] - r["grad_a"].mean() for r in (rp, rq))  # tangent space
        assert max_abs(ga_p, ga_q) < 1e-9, (p, q)


def _direction(arg, s):
    rng = np.random.default_rng(7)
    if arg == "a":
        v = rng.uniform(size=s["a"].shape) - 0.5
        return v - v.mean()
    return rng.uniform(size=s["x"].shape) - 0.5


def _product(h, v):
    return np.tensordot(h, v, axes=v.ndim)


@pytest.mark.parametrize("arg", ["a", "x"])
@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_hvp_matches_hessian(seed_setup, second_order, backend, arg):
    if backend not in second_order:
        pytest.skip(f"{backend} not installed")
    s = seed_setup
    kw = dict(s["kwargs"], implicit_diff=IMPLICIT)
    argnum = 2 if arg == "a" else 0
    v = _direction(arg, s)
    if backend == "numpy":
        hv = ot.hvp(ot.sinkhorn_divergence, argnums=argnum)(s["x"], s["y"], s["a"], s["b"], **kw)(v)
    elif backend == "torch":
        import torch

        t = {k: torch.tensor(s[k], dtype=torch.float64) for k in "xyab"}
        with one_torch_thread(torch):
            product = ot.hvp(ot.sinkhorn_divergence, argnums=argnum)(
                t["x"], t["y"], t["a"], t["b"], **kw
            )
            hv = product(torch.tensor(v, dtype=torch.float64)).numpy()
    else:
        jax = _jax()
        jnp = jax.numpy
        args = (jnp.asarray(s[k]) for k in "xyab")
        product = ot.hvp(ot.sinkhorn_divergence, argnums=argnum)(*args, **kw)
        old = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", True)  # ot.hvp jits inside
        try:
            hv = np.asarray(product(jnp.asarray(v)))
        finally:
            jax.config.update("jax_disable_most_optimizations", old)
    expected = _product(second_order[backend][arg], v)
    if arg == "a":  # the tangent-space part
        hv, expected = hv - hv.mean(), expected - expected.mean()
    # implicit second order is accurate to ~1e-9 here (CG at rounding level)
    assert max_abs(hv, expected) < 1e-8 * np.max(np.abs(expected))


def test_default_cg_tolerance_gives_accurate_hessians(seed_setup):
    torch = pytest.importorskip("torch")
    s = seed_setup
    kw = dict(s["kwargs"], threshold=1e-12)  # default ImplicitDiff()
    # NumPy's analytic rules equal the unrolled JAX Hessian to 7e-12 here
    reference = ot.hessian(ot.sinkhorn_divergence, argnums=2)(s["x"], s["y"], s["a"], s["b"], **kw)
    t = {k: torch.tensor(s[k], dtype=torch.float64) for k in "xyab"}
    with one_torch_thread(torch):
        h = ot.hessian(ot.sinkhorn_divergence, argnums=2)(t["x"], t["y"], t["a"], t["b"], **kw)
    assert max_abs(centre(h.numpy()), centre(reference)) < 1e-8
