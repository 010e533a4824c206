"""Issue 11 (reliability), input validation and error messages: items 2, 5, 13 and 14.

Each test is named after the issue's item. Bad input gets a ``ValueError``/``TypeError``
that names the argument (and its shape, dtype, device or the closest valid keyword), on
every backend, before anything is computed; the checks that depend on shapes and dtypes
only also hold under ``jax.jit``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import make_backend

import otcore as ot

N, M, D = 5, 4, 2
EPS = 0.1


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(N, D))
    y = rng.uniform(size=(M, D))
    b = rng.uniform(0.5, 1.0, size=M)
    return x, y, np.full(N, 1.0 / N), b / b.sum(), rng.uniform(size=(N, M))


def _histograms():
    t = np.linspace(0.0, 1.0, 6)
    A = np.stack([np.exp(-((t - 0.3) ** 2) / 0.02), np.exp(-((t - 0.7) ** 2) / 0.02)], 1)
    return A / A.sum(0), (t[:, None] - t[None, :]) ** 2


# -- item 2: empty arrays -------------------------------------------------------------------------


def _empty_cases(xp):
    x, y, _a, _b, C = (xp.to_xp(v) for v in _data())
    z = xp.to_xp(np.zeros((0, D)))
    A, Cb = (xp.to_xp(v) for v in _histograms())
    return [
        (lambda: ot.reg_ot_cost(x, z, epsilon=EPS), r"^y must not be empty: got shape \(0, 2\)"),
        (lambda: ot.reg_ot_cost(z, y, epsilon=EPS), r"^x must not be empty: got shape \(0, 2\)"),
        (
            lambda: ot.reg_ot_cost(xp.to_xp(np.zeros((N, 0))), xp.to_xp(np.zeros((M, 0)))),
            r"^x must not be empty: got shape \(5, 0\)",
        ),
        (
            lambda: ot.solve(xp.to_xp(np.zeros((3, 0))), epsilon=EPS),
            r"^cost_matrix must not be empty: got shape \(3, 0\)",
        ),
        (
            lambda: ot.reg_ot_cost_matrix(xp.to_xp(np.zeros((0, 3))), epsilon=EPS),
            r"^cost_matrix must not be empty: got shape \(0, 3\)",
        ),
        (
            lambda: ot.solve(C, xp.to_xp(np.zeros((0, N))), epsilon=EPS),
            r"^a must not be empty: got shape \(0, 5\)",
        ),
        (
            lambda: ot.LinearProblem(ot.Geometry(C, epsilon=EPS), None, xp.to_xp(np.zeros(0))),
            r"^b must not be empty: got shape \(0,\)",
        ),
        (lambda: ot.sinkhorn_divergence(x, z, epsilon=EPS), r"^y must not be empty"),
        (
            lambda: ot.sinkhorn_divergence_costs(
                C, xp.to_xp(np.zeros((0, 0))), xp.to_xp(np.zeros((M, M))), epsilon=EPS
            ),
            r"^cost_matrix must not be empty: got shape \(0, 0\)",
        ),
        (lambda: ot.Geometry(xp.to_xp(np.zeros((0, 0)))), r"^cost_matrix must not be empty"),
        (lambda: ot.PointCloud(x, z), r"^y must not be empty"),
        (
            lambda: ot.Grid(axes=[xp.to_xp(np.zeros(0))], epsilon=EPS),
            r"^axes\[0\] must not be empty: got shape \(0,\)",
        ),
        (lambda: ot.barycenter(A[:, :0], Cb, epsilon=EPS), r"^A must not be empty: got shape"),
        (
            lambda: ot.barycenter(A[:0, :], xp.to_xp(np.zeros((0, 6))), epsilon=EPS),
            r"^C_or_geometry must not be empty: got shape \(0, 6\)",
        ),
        (lambda: ot.free_barycenter([y, z], n_points=2), r"^ys\[1\] must not be empty"),
        (
            lambda: ot.free_barycenter([y], [xp.to_xp(np.zeros(0))], n_points=2),
            r"^bs\[0\] must not be empty",
        ),
    ]


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "jax", "torch"])
def test_case_02_empty_arrays_are_refused_by_name_and_shape(backend):
    xp = make_backend(backend)
    for call, match in _empty_cases(xp):
        with pytest.raises(ValueError, match=match):
            call()


def test_case_02_empty_arrays_are_refused_under_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, y, *_ = _data()
    x, y = jnp.asarray(x), jnp.asarray(y)
    with pytest.raises(ValueError, match=r"^y must not be empty: got shape \(0, 2\)"):
        jax.jit(lambda x, y: ot.reg_ot_cost(x, y, epsilon=EPS))(x, y[:0])
    with pytest.raises(ValueError, match=r"^cost_matrix must not be empty: got shape \(3, 0\)"):
        jax.jit(lambda c: ot.solve(c, epsilon=EPS).reg_ot_cost)(jnp.zeros((3, 0)))
    with pytest.raises(ValueError, match=r"^x must not be empty: got shape \(5, 0\)"):
        jax.jit(jax.grad(lambda x: ot.reg_ot_cost(x, epsilon=EPS)))(jnp.zeros((N, 0)))


# -- item 5: unclear errors -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_case_05a_tau_whose_rho_underflows_is_refused(backend):
    xp = make_backend(backend)
    x, y, *_ = (xp.to_xp(v) for v in _data())
    # ε/ρ = (1 - τ)/τ overflows float64 (was: "iterates became NaN", or a ZeroDivisionError
    # in the implicit system under jax.grad)
    with pytest.raises(ValueError, match=r"^tau_a=5e-324 is too small for .*float64"):
        ot.reg_ot_cost(x, y, epsilon=EPS, tau_a=5e-324)
    with pytest.raises(ValueError, match=r"^tau_b=5e-324 is too small"):
        ot.solve(ot.PointCloud(x, y, epsilon=EPS), tau_b=5e-324)
    # ρ = ε τ/(1 - τ) = 1e-39 underflows float32 (smallest normal 1.18e-38)
    x32, y32 = (xp.to_xp(v, dtype=np.float32) for v in _data()[:2])
    with pytest.raises(ValueError, match=r"^tau_a=1e-38 is too small for epsilon=0.1 .*underflow"):
        ot.reg_ot_cost(x32, y32, epsilon=EPS, tau_a=1e-38)
    # the same tau is fine in float64 and at a larger ε: the bound is the dtype's and ε's
    ot.LinearProblem(ot.PointCloud(x, y, epsilon=EPS), tau_a=1e-38)
    ot.LinearProblem(ot.PointCloud(x32, y32, epsilon=1e3), tau_a=1e-38)


def test_case_05a_jax_grad_with_tiny_tau_raises_value_error():
    jax = pytest.importorskip("jax")
    x, y, *_ = (jax.numpy.asarray(v) for v in _data())
    for eps in (EPS, None):  # a float ε, and the default (a tracer under jax.grad)
        with pytest.raises(ValueError, match=r"^tau_a=5e-324 is too small"):
            jax.grad(ot.reg_ot_cost)(x, y, epsilon=eps, tau_a=5e-324)
    with pytest.raises(ValueError, match=r"^tau_a=5e-324 is too small"):
        jax.jit(jax.grad(lambda x: ot.reg_ot_cost(x, y, epsilon=EPS, tau_a=5e-324)))(x)


def test_case_05a_small_but_valid_tau_still_solves():
    """The refusal is not a blanket one: tau = 1e-6 is solved, and agrees with POT's
    unbalanced Sinkhorn on the plan (ρ = ε τ/(1 - τ))."""
    ot_pot = pytest.importorskip("ot")
    x, y, a, b, _ = _data()
    tau = 1e-6
    out = ot.solve(ot.PointCloud(x, y, epsilon=EPS), a, b, tau_a=tau, tau_b=tau, threshold=1e-9)
    assert bool(out.converged) and not bool(out.diverged)
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    rho = EPS * tau / (1 - tau)
    ref = ot_pot.unbalanced.sinkhorn_unbalanced(
        a, b, C, EPS, rho, reg_type="kl", method="sinkhorn", numItermax=10000, stopThr=1e-15
    )
    np.testing.assert_allclose(np.asarray(out.matrix), ref, rtol=1e-6, atol=1e-12)


def test_case_05b_meta_tensors_are_refused_naming_argument_and_device():
    torch = pytest.importorskip("torch")
    x, y, a, _, C = (torch.asarray(v) for v in _data())
    meta = torch.empty((M, D), dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match=r"^x is on the 'meta' device, which holds shapes but no"):
        ot.reg_ot_cost(meta, epsilon=EPS)
    with pytest.raises(ValueError, match=r"^y is on the 'meta' device"):
        ot.reg_ot_cost(x, meta, epsilon=EPS)
    with pytest.raises(ValueError, match=r"^a is on the 'meta' device"):
        ot.reg_ot_cost(x, y, a.to("meta"), epsilon=EPS)
    with pytest.raises(ValueError, match=r"^cost_matrix is on the 'meta' device"):
        ot.solve(C.to("meta"), epsilon=EPS)
    with pytest.raises(ValueError, match=r"^epsilon is on the 'meta' device"):
        ot.PointCloud(x, y, epsilon=torch.tensor(EPS, dtype=torch.float64, device="meta"))


# -- item 13: unknown keywords --------------------------------------------------------------------


def _keyword_entry_points(xp):
    x, y, _a, _b, C = (xp.to_xp(v) for v in _data())
    A, Cb = (xp.to_xp(v) for v in _histograms())
    Cxx = ot.PointCloud(x).cost_matrix
    Cyy = ot.PointCloud(y).cost_matrix
    return {
        "solve": lambda **kw: ot.solve(C, epsilon=EPS, **kw),
        "reg_ot_cost": lambda **kw: ot.reg_ot_cost(x, y, **kw),
        "reg_ot_cost_matrix": lambda **kw: ot.reg_ot_cost_matrix(C, **kw),
        "sinkhorn_divergence": lambda **kw: ot.sinkhorn_divergence(x, y, **kw),
        "sinkhorn_divergence_costs": lambda **kw: ot.sinkhorn_divergence_costs(C, Cxx, Cyy, **kw),
        "barycenter": lambda **kw: ot.barycenter(A, Cb, **kw),
        "free_barycenter": lambda **kw: ot.free_barycenter([x, y], n_points=3, **kw),
        "Sinkhorn": lambda **kw: ot.Sinkhorn(**kw),
    }


_TYPOS = [
    ("reg", "epsilon", r"POT's reg"),
    ("eps", "epsilon", r"entropic regularisation"),
    ("blur", "epsilon", r"GeomLoss's blur is not ε: .* epsilon=2\*σ\*\*2"),
    ("treshold", "threshold", r""),
]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("key, target, note", _TYPOS, ids=[t[0] for t in _TYPOS])
def test_case_13_unknown_keywords_name_the_function_and_suggest(backend, key, target, note):
    entries = _keyword_entry_points(make_backend(backend))
    for name, call in entries.items():
        head = rf"^{name}\(\) got an unexpected keyword argument '{key}'; did you mean '{target}'"
        with pytest.raises(TypeError, match=head + r".*" + note):
            call(**{key: 0.01})
    # ε is not an option of Sinkhorn: the message says where it goes
    with pytest.raises(TypeError, match=r"'reg'; did you mean 'epsilon'\? .*set on the geometry"):
        ot.Sinkhorn(reg=0.01)


def test_case_13_unknown_keywords_in_nested_options_and_derivatives():
    x, y, *_ = _data()
    with pytest.raises(
        TypeError,
        match=r"^free_barycenter\(\) got an unexpected keyword argument 'treshold' in "
        r"sinkhorn_kwargs \(options of ot.Sinkhorn\); did you mean 'threshold'\?",
    ):
        ot.free_barycenter([x, y], n_points=3, sinkhorn_kwargs={"treshold": 1e-6})
    with pytest.raises(TypeError, match=r"'reg' in sinkhorn_kwargs .*'epsilon', an argument of"):
        ot.free_barycenter([x, y], n_points=3, sinkhorn_kwargs={"reg": 1e-6})
    with pytest.raises(
        TypeError,
        match=r"^sinkhorn_divergence\(\) got unexpected keyword arguments 'epsilom', 'max_iter'; "
        r"for 'epsilom': did you mean 'epsilon'\?; for 'max_iter': did you mean 'max_iterations'",
    ):
        ot.sinkhorn_divergence(x, y, epsilom=0.1, max_iter=10)
    # the manual rules of otcore.grad (NumPy) check the keywords the same way
    with pytest.raises(TypeError, match=r"^reg_ot_cost\(\) got .* 'reg'; did you mean 'epsilon'"):
        ot.grad(ot.reg_ot_cost)(x, y, reg=0.1)
    # a keyword with no close match is still named
    with pytest.raises(
        TypeError, match=r"^reg_ot_cost\(\) got an unexpected keyword argument 'zz'$"
    ):
        ot.reg_ot_cost(x, y, zz=1)


def test_case_13_divergence_options_are_passed_explicitly():
    """``_options(locals())`` is gone: every option still reaches the solves (values
    against the three reg_ot_cost terms computed separately)."""
    x, y, *_ = _data()
    kw = dict(epsilon=EPS, threshold=1e-10)
    value, out = ot.sinkhorn_divergence(
        x, y, tau_a=0.9, tau_b=0.8, static_b=True, offset_static_b=0.25, return_output=True, **kw
    )
    assert out.outputs[2] is None
    assert out.outputs[0].prob.tau_a == 0.9 and out.outputs[0].prob.tau_b == 0.8
    assert out.outputs[1].prob.tau_b == 0.9
    assert out.outputs[0].solver.threshold == 1e-10
    xy = ot.reg_ot_cost(x, y, tau_a=0.9, tau_b=0.8, **kw)
    xx = out.outputs[1].reg_ot_cost
    gap = (1.0 - 1.0) ** 2  # uniform weights: equal masses
    np.testing.assert_allclose(value, xy - 0.5 * xx - 0.5 * 0.25 + 0.5 * EPS * gap, rtol=1e-12)


# -- item 14 --------------------------------------------------------------------------------------


def test_case_14a_nan_threshold_is_refused_by_every_entry_point():
    x, y, _a, _b, C = _data()
    A, Cb = _histograms()
    Cxx, Cyy = ot.PointCloud(x).cost_matrix, ot.PointCloud(y).cost_matrix
    calls = {
        "Sinkhorn": lambda t: ot.Sinkhorn(threshold=t),
        "solve": lambda t: ot.solve(C, epsilon=EPS, threshold=t),
        "reg_ot_cost": lambda t: ot.reg_ot_cost(x, y, epsilon=EPS, threshold=t),
        "reg_ot_cost_matrix": lambda t: ot.reg_ot_cost_matrix(C, epsilon=EPS, threshold=t),
        "sinkhorn_divergence": lambda t: ot.sinkhorn_divergence(x, y, threshold=t),
        "sinkhorn_divergence_costs": lambda t: ot.sinkhorn_divergence_costs(
            C, Cxx, Cyy, threshold=t
        ),
        "barycenter": lambda t: ot.barycenter(A, Cb, epsilon=EPS, threshold=t),
        "free_barycenter": lambda t: ot.free_barycenter([x, y], n_points=3, threshold=t),
        "free_barycenter sinkhorn_kwargs": lambda t: ot.free_barycenter(
            [x, y], n_points=3, sinkhorn_kwargs={"threshold": t}
        ),
        "grad": lambda t: ot.grad(ot.reg_ot_cost)(x, y, epsilon=EPS, threshold=t),
    }
    for _name, call in calls.items():
        for bad in (float("nan"), np.float64("nan"), float("inf"), -1e-3):
            with pytest.raises(ValueError, match=r"threshold must be a finite number >= 0, got"):
                call(bad)


_HALF = [
    ("numpy", "float16"),
    ("jax", "float16"),
    ("jax", "bfloat16"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
]


@pytest.mark.parametrize("backend, dtype_name", _HALF)
def test_case_14b_half_precision_is_refused(backend, dtype_name):
    xp = make_backend(backend)
    ns = xp.adapter.xp
    half = getattr(ns, dtype_name)
    x, y, a, _b, C = (ns.astype(xp.to_xp(v), half) for v in _data())
    A, Cb = (ns.astype(xp.to_xp(v), half) for v in _histograms())
    x64 = xp.to_xp(_data()[0])
    msg = rf"has dtype {'torch.' if backend == 'torch' else ''}{dtype_name}, which otcore does "
    cases = {
        "x": lambda: ot.reg_ot_cost(x, y, epsilon=EPS),
        "cost_matrix": lambda: ot.solve(C, epsilon=EPS),
        "C_or_geometry": lambda: ot.barycenter(A, Cb, epsilon=EPS),
        "A": lambda: ot.barycenter(A, ot.Grid(shape=(6,), like=x64), epsilon=None),
        "ys\\[0\\]": lambda: ot.free_barycenter([x, y], n_points=2),
        "axes\\[0\\]": lambda: ot.Grid(axes=[x[:, 0]], epsilon=EPS),
    }
    for name, call in cases.items():
        with pytest.raises(TypeError, match=rf"^{name} {msg}.*convert {name} to float32"):
            call()
    # weights and an array ε alone in half precision: named too
    with pytest.raises(TypeError, match=rf"^a {msg}"):
        ot.reg_ot_cost(x64, x64, a, epsilon=EPS)
    with pytest.raises(TypeError, match=rf"^epsilon {msg}"):
        ot.PointCloud(x64, epsilon=ns.astype(xp.to_xp(np.asarray(EPS)), half))


def _batched_output(xp):
    x, y, _a, _b, _ = _data()
    xs = np.stack([x, x + 0.5, 2.0 * x])  # (3, n, d)
    out = ot.solve(ot.PointCloud(xp.to_xp(xs), xp.to_xp(y), epsilon=EPS), threshold=1e-10)
    return out, xs


def test_case_14c_apply_checks_its_vector(xp):
    out, _ = _batched_output(xp)
    ones = np.ones(N)
    with pytest.raises(TypeError, match=r"^vec must be an array .* got list"):
        out.apply([1.0] * N)
    if xp.framework != "numpy":
        with pytest.raises(TypeError, match=r"same array library.*vec: numpy"):
            out.apply(ones)
    with pytest.raises(TypeError, match=r"^vec must have a real floating dtype"):
        out.apply(xp.to_xp(np.ones(N, dtype=np.int64)))
    with pytest.raises(TypeError, match=r"one floating dtype.*vec: .*float32"):
        out.apply(xp.to_xp(ones, dtype=np.float32))
    with pytest.raises(
        ValueError, match=r"^the batch axes of vec \(2,\) do not broadcast .* \(3,\)"
    ):
        out.apply(xp.to_xp(np.ones((2, N))))
    with pytest.raises(ValueError, match=r"^vec contains NaN or infinite values"):
        out.apply(xp.to_xp(np.array([1.0, np.nan, 0.0, 0.0, 1.0])))
    with pytest.raises(ValueError, match=r"^vec must have length 4 on its last axis for axis=1"):
        out.apply(xp.to_xp(ones), axis=1)


def test_case_14c_apply_values_with_broadcast_batch_axes(xp):
    """Accepted vectors give Pᵀv and Pv from the materialised plan (batch axes broadcast)."""
    out, _ = _batched_output(xp)
    P = xp.to_np(out.matrix)  # (3, n, m)
    rng = np.random.default_rng(1)
    v, w = rng.normal(size=N), rng.normal(size=(3, M))
    np.testing.assert_allclose(
        xp.to_np(out.apply(xp.to_xp(v), axis=0)), np.einsum("kij,i->kj", P, v), rtol=1e-12
    )
    np.testing.assert_allclose(
        xp.to_np(out.apply(xp.to_xp(w), axis=1)), np.einsum("kij,kj->ki", P, w), rtol=1e-12
    )


def test_case_14c_apply_refuses_another_device():
    torch = pytest.importorskip("torch")
    x, y, *_ = (torch.asarray(v) for v in _data())
    out = ot.solve(ot.PointCloud(x, y, epsilon=EPS))
    with pytest.raises(ValueError, match=r"^vec is on the 'meta' device"):
        out.apply(torch.ones(N, dtype=torch.float64, device="meta"))


def test_case_14c_apply_under_jit_checks_shapes_not_values():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, y, *_ = (jnp.asarray(v) for v in _data())
    out = ot.solve(ot.PointCloud(x, y, epsilon=EPS), threshold=1e-10)
    f = jax.jit(lambda v: out.apply(v))
    np.testing.assert_allclose(f(jnp.ones(N)), np.asarray(out.matrix).sum(0), rtol=1e-12)
    with pytest.raises(ValueError, match=r"^vec must have length 5"):
        f(jnp.ones(M))


def test_case_14d_jit_with_closed_over_arrays():
    """A jitted function that closes over concrete jnp arrays (points and weights) traces
    and gives the eager value and gradient (docs/backends.md used to warn it failed)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, y, a, b, _ = (jnp.asarray(v) for v in _data())
    kw = dict(epsilon=EPS, threshold=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eager = float(ot.reg_ot_cost(x, y, a, b, **kw))
        jitted = jax.jit(lambda x: ot.reg_ot_cost(x, y, None, b, **kw))
        np.testing.assert_allclose(float(jitted(x)), eager, rtol=1e-12)
        closed_x = jax.jit(lambda w: ot.reg_ot_cost(x, y, w, b, **kw))
        np.testing.assert_allclose(float(closed_x(a)), eager, rtol=1e-12)
        g_eager = jax.grad(lambda x: ot.reg_ot_cost(x, y, a, b, **kw))(x)
        g_jit = jax.jit(jax.grad(lambda x: ot.reg_ot_cost(x, y, None, b, **kw)))(x)
        np.testing.assert_allclose(np.asarray(g_jit), np.asarray(g_eager), rtol=1e-10)
        flags = jax.jit(lambda x: ot.solve(ot.PointCloud(x, y, epsilon=EPS), None, b).converged)
        assert bool(flags(x))
