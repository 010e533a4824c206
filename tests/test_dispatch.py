"""The one framework dispatcher (``otcore.backends.REGISTRY``) and the declared adapter hooks.

Every hook an adapter may supply is declared on :class:`otcore.backends.base.Adapter` with
its contract; a concrete adapter either implements it or inherits the portable version on
purpose, and the autodiff hooks it cannot supply fail with an error naming the backend.
The autodiff adapters' hooks are checked against closed-form derivatives.
"""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
from _helpers import make_backend

from otcore import backends
from otcore.backends import REGISTRY, BackendEntry, adapter_by_name, adapter_for, backend_names
from otcore.backends.base import Adapter

HOOKS = (
    "while_loop",
    "while_loop_differentiable",
    "fori_loop",
    "jit",
    "stop_gradient",
    "envelope",
    "is_concrete",
    "is_differentiating",
    "vjp",
    "hvp",
    "hessian",
    "implicit_potentials",
    "fixed_point_output",
    "cost_vjp",
    "full_precision",
    "quiet_float_errors",
    "logsumexp",
    "training",
)
# the hooks an autodiff framework must supply itself (the base versions are eager-only)
AUTODIFF_HOOKS = (
    "vjp",
    "hvp",
    "hessian",
    "implicit_potentials",
    "fixed_point_output",
    "stop_gradient",
    "envelope",
    "is_differentiating",
    "training",
)
CPU_NAMES = ("numpy", "array_api_strict", "jax", "torch")


def _adapter(name):
    """The installed backend ``name``'s adapter (skip when the framework is missing)."""
    make_backend(name)  # skips the test when the library is not installed
    return adapter_by_name(name)


def test_base_declares_every_hook_with_a_contract():
    for hook in HOOKS:
        fn = getattr(Adapter, hook)
        assert callable(fn), hook
        assert fn.__doc__ and len(fn.__doc__.split()) >= 5, f"{hook} has no contract"


@pytest.mark.parametrize("name", CPU_NAMES)
def test_adapters_declare_nothing_the_base_does_not(name):
    """No hook lives only on one adapter: every public method is declared on the base."""
    cls = type(_adapter(name))
    public = {k for k, v in inspect.getmembers(cls) if callable(v) and not k.startswith("_")}
    assert public <= set(HOOKS), public - set(HOOKS)


@pytest.mark.parametrize("name", CPU_NAMES)
def test_each_adapter_implements_or_inherits_each_hook(name):
    ad = _adapter(name)
    cls = type(ad)
    overridden = {h for h in HOOKS if getattr(cls, h) is not getattr(Adapter, h)}
    if ad.has_autodiff:
        missing = set(AUTODIFF_HOOKS) - overridden
        assert not missing, f"{name} inherits eager-only hooks {missing}"
    else:
        # eager backends without autodiff deliberately inherit the portable versions
        assert overridden <= {"logsumexp", "full_precision", "quiet_float_errors", "cost_vjp"}, (
            overridden
        )


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_eager_backend_refuses_autodiff_hooks_naming_itself(name):
    ad = _adapter(name)
    x = ad.xp.asarray([1.0, 2.0])

    def fun(t):
        return ad.xp.sum(t * t)

    for hook, call in [
        ("vjp", lambda: ad.vjp(fun, (x,), {})),
        ("hvp", lambda: ad.hvp(fun, 0, (x,), {})),
        ("hessian", lambda: ad.hessian(fun, 0, (x,), {})),
    ]:
        with pytest.raises(NotImplementedError, match=rf"the {name} backend .* supply {hook}"):
            call()
    with pytest.raises(TypeError, match=rf"the {name} backend has no automatic differentiation"):
        ad.training()


@pytest.mark.parametrize("name", CPU_NAMES)
def test_portable_hooks_run_on_every_backend(name):
    ad = _adapter(name)
    xp = ad.xp
    out = ad.while_loop(lambda s: s[0] < 5, lambda s: (s[0] + 1, s[1] * 2.0), (0, xp.asarray(1.0)))
    assert int(out[0]) == 5 and float(out[1]) == 32.0
    assert float(ad.fori_loop(4, lambda i, s: s + i, xp.asarray(0.0))) == 6.0
    x = xp.asarray([[0.0, -np.inf], [1000.0, 1000.0], [-np.inf, -np.inf]], dtype=xp.float64)
    lse = make_backend(name).to_np(ad.logsumexp(x, 1))
    np.testing.assert_allclose(lse, [0.0, 1000.0 + np.log(2.0), -np.inf], rtol=1e-15)
    assert float(ad.jit(lambda t: t * 3.0)(xp.asarray(2.0))) == 6.0
    assert float(ad.stop_gradient(xp.asarray(1.5))) == 1.5
    assert ad.is_concrete(xp.asarray(1.0)) and not ad.is_differentiating(xp.asarray(1.0))
    with ad.full_precision():
        pass


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_autodiff_hooks_give_closed_form_derivatives(name):
    """f(x) = Σ x_i³ + x_0 x_1: gradient 3x² + (x_1, x_0), Hessian diag(6x) + [[0,1],[1,0]]."""
    ad = _adapter(name)
    xp = ad.xp
    x_np = np.array([0.5, -1.25])
    x = xp.asarray(x_np, dtype=xp.float64)

    def f(t, scale=1.0):
        return scale * (xp.sum(t**3) + t[0] * t[1])

    grad = 3 * x_np**2 + x_np[::-1]
    hess = np.diag(6 * x_np) + np.array([[0.0, 1.0], [1.0, 0.0]])
    value, pull = ad.vjp(f, (x,), {"scale": 2.0})
    np.testing.assert_allclose(float(value), 2.0 * (np.sum(x_np**3) + x_np[0] * x_np[1]))
    (g,) = pull(xp.asarray(0.75, dtype=xp.float64))
    np.testing.assert_allclose(make_backend(name).to_np(g), 0.75 * 2.0 * grad, rtol=1e-14)
    v = np.array([0.3, -0.7])
    hv = ad.hvp(f, 0, (x,), {})(xp.asarray(v, dtype=xp.float64))
    np.testing.assert_allclose(make_backend(name).to_np(hv), hess @ v, rtol=1e-14)
    h = ad.hessian(f, 0, (x,), {})
    np.testing.assert_allclose(make_backend(name).to_np(h), hess, rtol=1e-14)
    ops = ad.training()
    assert ops.name == name and ops.xp is ad.xp
    assert ops.is_native(x) and not ops.is_native(x_np)
    np.testing.assert_allclose(ops.to_numpy(ops.input_grad(lambda t: t**3, x)), 3 * x_np**2)


# -- the registry -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CPU_NAMES)
def test_registry_finds_each_installed_framework(name):
    backend = make_backend(name)
    arr = backend.to_xp(np.ones(3))
    ad = adapter_for(arr, None, arr)
    assert ad.name == name and type(ad) is type(adapter_by_name(name))
    assert REGISTRY[name].recognise(arr)
    assert [n for n, e in REGISTRY.items() if e.recognise(arr)] == [name]  # exactly one
    # the namespace of adapter_by_name makes arrays that dispatch back to the same backend
    assert adapter_for(adapter_by_name(name).xp.asarray([1.0])).name == name


def test_registry_lists_the_frameworks():
    assert backend_names() == ("numpy", "array_api_strict", "jax", "torch", "cupy")


def test_registry_refuses_mixed_and_unknown_arrays():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"same array library \(got x: numpy.ndarray, y: torch"):
        adapter_for(np.ones(2), torch.ones(2), names=["x", "y"])
    with pytest.raises(TypeError, match=r"x must be an array .* got list"):
        adapter_for([1.0, 2.0], names=["x"])
    with pytest.raises(TypeError, match="at least one array"):
        adapter_for(None)
    with pytest.raises(TypeError, match=r"no otcore backend handles .*_Foreign arrays"):
        adapter_for(_Foreign())
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'; registered backends: num"):
        adapter_by_name("tensorflow")


class _Foreign:
    """An array-API object of a library otcore has no backend for."""

    shape, ndim, dtype = (2,), 1, None

    def __array_namespace__(self, api_version=None):
        return types.SimpleNamespace(__name__="foreign")


def test_adding_a_backend_is_one_registry_line(monkeypatch):
    """A new framework needs an adapter class and one entry; adapter_for then finds it."""
    entry = BackendEntry(
        "foreign", lambda x: isinstance(x, _Foreign), "otcore.backends.numpy:GenericAdapter", "math"
    )
    monkeypatch.setitem(backends.REGISTRY, "foreign", entry)
    ad = adapter_for(_Foreign())
    assert ad.name == "foreign" and isinstance(ad, Adapter)
    assert "foreign" in backend_names() and adapter_by_name("foreign").name == "foreign"
