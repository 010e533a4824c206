"""Unrolled gradients (``implicit_diff=None``) on NumPy: the manual reverse recursion of
:mod:`otcore.autodiff.sinkhorn_unrolled_rules` against JAX and PyTorch autodiff through the same
iterations, central finite differences at a fixed iteration count, and the limit of many
iterations (the implicit gradient).

Cotangents are fixed numbers, never derived from the inputs. JAX runs under ``jax.jit``
(one compilation per configuration, so it checks a subset covering every option; PyTorch
checks every configuration).
"""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot

N, M, D = 6, 5, 2
EPS = 0.3
UNBALANCED = {"tau_a": 0.7, "tau_b": 0.9}
FIXED = {"threshold": 0.0, "inner_iterations": 1}  # + min/max_iterations = T
ignore_convergence = pytest.mark.filterwarnings("ignore::otcore.ConvergenceWarning")


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    y = rng.normal(size=(M, D)) + 0.5
    a = rng.uniform(0.5, 1.5, N)
    a[2] = 0.0  # a zero weight
    a /= a.sum()
    b = rng.uniform(0.5, 1.5, M)
    b /= b.sum()
    c = rng.uniform(size=(N, M))
    return x, y, a, b, c


def _args(kind, seed=0):
    x, y, a, b, c = _problem(seed)
    if kind == "points":
        return ot.reg_ot_cost, (x, y, a, b)
    if kind == "shared":  # y = None: both point slots are x
        return ot.reg_ot_cost, (x, None, a, a)
    if kind == "batch":
        xb = np.stack([x, x[::-1], x + 0.3])
        ab = np.stack([a, np.roll(a, 1), a])
        return ot.reg_ot_cost, (xb, y, ab, b)
    return ot.reg_ot_cost_matrix, (c, a, b)


def _cotangent(value_shape):
    return 1.3 + 0.25 * np.arange(int(np.prod(value_shape))).reshape(value_shape)


def numpy_vjp(fun, args, kw):
    value, pullback = ot.vjp(fun, *args, **kw)
    return [g for g in pullback(_cotangent(np.shape(value))) if g is not None]


def jax_vjp(fun, args, kw):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    present = [i for i, v in enumerate(args) if v is not None]

    def pulled(*arrays):
        def f(*xs):
            full = list(args)
            for i, v in zip(present, xs):
                full[i] = v
            return fun(*full, **kw)

        value, pullback = jax.vjp(f, *arrays)
        return pullback(jnp.asarray(_cotangent(value.shape)))

    grads = jax.jit(pulled)(*[jnp.asarray(args[i]) for i in present])
    return [np.asarray(g) for g in grads]


def torch_vjp(fun, args, kw):
    torch = pytest.importorskip("torch")
    ts = [None if v is None else torch.tensor(v, requires_grad=True) for v in args]
    value = fun(*ts, **kw)
    present = [t for t in ts if t is not None]
    grads = torch.autograd.grad(value, present, torch.tensor(_cotangent(tuple(value.shape))))
    return [g.numpy() for g in grads]


def rel_err(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_grads_equal(actual, expected, rtol, what):
    assert len(actual) == len(expected), what
    for k, (g, r) in enumerate(zip(actual, expected)):
        assert g.shape == r.shape, (what, k, g.shape, r.shape)
        err = rel_err(g, r)
        assert err <= rtol, f"{what}: argument {k} off by {err:.2e} (relative)"


# -- the same gradients as autodiff -------------------------------------------------------

STOP = {"threshold": 1e-3}  # the forward stopping rule sets the number of iterations

CONFIGS = {
    "log": {},
    "kernel": {"lse_mode": False},
    "log-unbalanced": UNBALANCED,
    "kernel-unbalanced": {"lse_mode": False, **UNBALANCED},
    "log-parallel": {"parallel_dual_updates": True},
    "kernel-parallel-unbalanced": {"lse_mode": False, "parallel_dual_updates": True, **UNBALANCED},
    "log-momentum": {"momentum": 1.3},
    "kernel-momentum-unbalanced": {"lse_mode": False, "momentum": 1.3, **UNBALANCED},
    "log-schedule": {"epsilon_schedule": (8.0, 0.7)},
    "log-fixed-T": {**FIXED, "min_iterations": 3, "max_iterations": 3},
    "kernel-parallel-momentum-fixed-T": {
        "lse_mode": False,
        "parallel_dual_updates": True,
        "momentum": 0.8,
        **FIXED,
        "min_iterations": 9,
        "max_iterations": 9,
    },
}
TORCH_CASES = [(c, k) for c in CONFIGS for k in ("points", "matrix")] + [
    ("log", "shared"),
    ("kernel-unbalanced", "batch"),
    ("log-unbalanced", "online"),
]
# one jit compilation each (seconds): every option at least once, points and matrix
JAX_CASES = [
    ("log", "points"),
    ("kernel-parallel-unbalanced", "points"),
    ("log-momentum", "matrix"),
    ("kernel-momentum-unbalanced", "matrix"),
    ("log-parallel", "matrix"),
    ("log-unbalanced", "points"),
]


def _case(config, kind):
    kw = {"epsilon": EPS, "implicit_diff": None, **STOP, **CONFIGS[config]}
    if kind == "online":
        kw["batch_size"] = 2
        kind = "points"
    fun, args = _args(kind)
    return fun, args, kw


@ignore_convergence
@pytest.mark.parametrize(("config", "kind"), TORCH_CASES, ids=[f"{c}-{k}" for c, k in TORCH_CASES])
def test_numpy_unrolled_equals_torch_autograd(config, kind):
    fun, args, kw = _case(config, kind)
    expected = torch_vjp(fun, args, kw)
    actual = numpy_vjp(fun, args, kw)
    assert_grads_equal(actual, expected, 1e-10, f"{config}-{kind}")
    # the recursion matters: the envelope gradient differs (not converged / few steps)
    if "fixed-T" in config:
        envelope = numpy_vjp(fun, args, {**kw, "use_danskin": True})
        assert max(rel_err(g, r) for g, r in zip(envelope, expected)) > 1e-3


@ignore_convergence
@pytest.mark.parametrize(("config", "kind"), JAX_CASES, ids=[f"{c}-{k}" for c, k in JAX_CASES])
def test_numpy_unrolled_equals_jax_vjp(config, kind):
    fun, args, kw = _case(config, kind)
    expected = jax_vjp(fun, args, kw)
    actual = numpy_vjp(fun, args, kw)
    assert_grads_equal(actual, expected, 1e-10, f"{config}-{kind}")


def test_zero_weight_derivative_of_kernel_mode_matches_autodiff():
    """Kernel mode keeps ``u_i = a_i / (Kv)_i`` differentiable at ``a_i = 0`` (log mode
    has ``f_i = -inf`` there): the manual rule follows each mode's own map."""
    fun, args, kw = _case("kernel", "points")
    expected = torch_vjp(fun, args, kw)[2]
    actual = numpy_vjp(fun, args, kw)[2]
    log_mode = numpy_vjp(*_case("log", "points"))[2]
    assert abs(actual[2] - expected[2]) <= 1e-10 * np.max(np.abs(expected))
    assert abs(actual[2] - log_mode[2]) > 1e-6  # the two maps differ at a zero weight


# -- finite differences at a fixed number of iterations ------------------------------------


def _fd(fun, arg, direction, h=1e-5):
    return (fun(arg + h * direction) - fun(arg - h * direction)) / (2 * h)


FD_CONFIGS = {
    "log": {},
    "kernel-unbalanced": {"lse_mode": False, **UNBALANCED},
    "log-parallel-unbalanced": {"parallel_dual_updates": True, **UNBALANCED},
    "log-momentum": {"momentum": 1.3},
}


@ignore_convergence
@pytest.mark.parametrize("config", list(FD_CONFIGS))
def test_unrolled_gradients_match_finite_differences(config):
    T = 8
    kw = {
        "epsilon": EPS,
        "implicit_diff": None,
        **FIXED,
        "min_iterations": T,
        "max_iterations": T,
        **FD_CONFIGS[config],
    }
    x, y, a, b, c = _problem()
    rng = np.random.default_rng(3)
    ct = 1.7
    # a: any direction (T fixed; not in the simplex's tangent), zero at the zero weight
    da = rng.normal(size=N) * (a > 0)
    db = rng.normal(size=M)
    dc = rng.normal(size=(N, M))
    dx = rng.normal(size=(N, D))
    _, pull = ot.vjp(ot.reg_ot_cost_matrix, c, a, b, **kw)
    gc, ga, gb = pull(np.asarray(ct))
    _, pull = ot.vjp(ot.reg_ot_cost, x, y, a, b, **kw)
    gx = pull(np.asarray(ct))[0]

    def cost_c(cc):
        return ct * float(ot.reg_ot_cost_matrix(cc, a, b, **kw))

    def cost_a(aa):
        return ct * float(ot.reg_ot_cost_matrix(c, aa, b, **kw))

    def cost_b(bb):
        return ct * float(ot.reg_ot_cost_matrix(c, a, bb, **kw))

    def cost_x(xx):
        return ct * float(ot.reg_ot_cost(xx, y, a, b, **kw))

    for name, g, fn, arg, d in (
        ("a", ga, cost_a, a, da),
        ("b", gb, cost_b, b, db),
        ("C", gc, cost_c, c, dc),
        ("x", gx, cost_x, x, dx),
    ):
        analytic = float(np.sum(g * d))
        numeric = _fd(fn, arg, d)
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (name, analytic, numeric)


# -- many iterations: the implicit gradient ------------------------------------------------


@ignore_convergence
@pytest.mark.parametrize("tau", [{}, UNBALANCED], ids=["balanced", "unbalanced"])
def test_unrolled_tends_to_implicit_as_iterations_grow(tau):
    x, y, a, b, _ = _problem()
    implicit = ot.grad(ot.reg_ot_cost, argnums=(0, 1, 2, 3))(
        x, y, a, b, epsilon=EPS, threshold=1e-13, max_iterations=5000, **tau
    )
    pos = a > 0

    def view(k, g):  # balanced weights: gradients are defined up to a constant
        if k < 2 or tau:
            return g
        mask = pos if k == 2 else np.ones(M, dtype=bool)
        return np.where(mask, g - g[mask].mean(), 0.0)

    errors = []
    for T in (5, 20, 160):
        kw = {"epsilon": EPS, "implicit_diff": None, **FIXED, "min_iterations": T}
        unrolled = ot.grad(ot.reg_ot_cost, argnums=(0, 1, 2, 3))(
            x, y, a, b, max_iterations=T, **kw, **tau
        )
        errors.append(
            max(rel_err(view(k, u), view(k, i)) for k, (u, i) in enumerate(zip(unrolled, implicit)))
        )
    # far at a few iterations, closer with more, equal (to rounding) near the fixed point
    assert errors[0] > max(errors[1], 1e-4), errors
    assert errors[2] < 1e-8, errors


# -- what stays unsupported ---------------------------------------------------------------


@pytest.mark.parametrize("transform", ["hvp", "hessian"])
def test_unrolled_second_derivatives_on_numpy_raise(transform):
    x, y, a, b, _ = _problem()
    with pytest.raises(NotImplementedError, match=r"reg_ot_cost on numpy.*unrolled mode, order 2"):
        getattr(ot, transform)(ot.reg_ot_cost)(x, y, a, b, epsilon=EPS, implicit_diff=None)


def test_unrolled_divergence_on_numpy_raises():
    x, y, a, b, _ = _problem()
    with pytest.raises(
        NotImplementedError, match=r"sinkhorn_divergence on numpy.*unrolled mode, order 1"
    ):
        ot.grad(ot.sinkhorn_divergence)(x, y, a, b, epsilon=EPS, implicit_diff=None)


def test_unrolled_envelope_option_gives_the_danskin_gradient():
    """``use_danskin=True`` with ``implicit_diff=None``: potentials held constant in the cost,
    on NumPy as on the autodiff backends."""
    fun, args, kw = _case("log-unbalanced", "points")
    kw = {**kw, "use_danskin": True}
    assert_grads_equal(numpy_vjp(fun, args, kw), torch_vjp(fun, args, kw), 1e-10, "danskin")
