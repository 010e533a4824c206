"""Framework-neutral differentiation of otcore's entry points.

``vjp``, ``grad`` and ``value_and_grad`` dispatch on the arguments' framework: JAX
transforms for JAX arrays, autograd for PyTorch tensors, and otcore's manual rules for
arrays without autodiff (NumPy, CuPy, array_api_strict). On those, pass an otcore entry
point itself (e.g. ``ot.reg_ot_cost``), not a lambda around it: without a tracer there is
no way to see inside the user's function.
"""

from __future__ import annotations

from collections.abc import Sequence

import array_api_compat

from otcore._lib import xp as _xp
from otcore.autodiff import capabilities as _capabilities
from otcore.autodiff.registry import Call, manual_rules
from otcore.backends import adapter_for

__all__ = ["grad", "value_and_grad", "vjp"]


def _arrays(args):
    return [a for a in args if a is not None and array_api_compat.is_array_api_obj(a)]


def vjp(fun, *args, **kwargs):
    """``(fun(*args, **kwargs), vjp_fn)``, where ``vjp_fn(cotangent)`` returns one
    cotangent per positional argument (``None`` for ``None`` arguments), like ``jax.vjp``.

    Example:
        >>> import numpy as np, otcore as ot
        >>> x = np.random.default_rng(0).normal(size=(6, 2)); y = x + 1.0
        >>> value, pullback = ot.vjp(ot.reg_ot_cost, x, y, epsilon=1.0)
        >>> dx, dy = pullback(np.asarray(1.0))
        >>> dx.shape, dy.shape
        ((6, 2), (6, 2))
    """
    return _vjp(fun, args, kwargs, "vjp")


def _vjp(fun, args, kwargs, transform):
    arrays = _arrays(args)
    if not arrays:
        raise TypeError(f"{transform} needs at least one array among the positional arguments")
    adapter = adapter_for(*arrays)
    call = _checked_call(fun, args, kwargs, adapter, 1, transform)
    if adapter.has_autodiff:
        return _autodiff_vjp(adapter, fun, args, kwargs)
    rules = manual_rules()
    return _manual_rule(rules.vjp, rules, fun, adapter, "derivative")(call)


def _checked_call(fun, args, kwargs, adapter, order, transform):
    """``fun``'s call bound to its signature (``None`` for a function otcore does not
    know, e.g. a lambda on JAX), after its capability table accepted it."""
    if _capabilities.table(fun) is None:
        return None
    call = Call(fun, args, kwargs)
    _capabilities.check(fun, call.arguments, adapter, order, transform)
    return call


def _autodiff_vjp(adapter, fun, args, kwargs):
    """The framework's VJP w.r.t. the array arguments; other positional arguments (a
    geometry, ``None``) are held fixed and get ``None``, as in the manual rules."""
    where = [
        i for i, a in enumerate(args) if a is not None and array_api_compat.is_array_api_obj(a)
    ]

    def of_arrays(*arrays):
        full = list(args)
        for i, a in zip(where, arrays):
            full[i] = a
        return fun(*full, **kwargs)

    value, pull = adapter.vjp(of_arrays, tuple(args[i] for i in where), {})

    def vjp_fn(cotangent):
        grads = [None] * len(args)
        for i, g in zip(where, pull(cotangent)):
            grads[i] = g
        return tuple(grads)

    return value, vjp_fn


def _manual_rule(table, rules, fun, adapter, kind):
    """The manual rule of ``fun`` for a backend without autodiff, or a clear TypeError
    (an entry point with a capability table was already checked against it)."""
    rule = table.get(fun)
    if rule is None:
        raise TypeError(
            f"no {kind} rule for {getattr(fun, '__name__', fun)!r} on {adapter.name} arrays: "
            f"pass one of otcore's entry points directly ({rules.names()}), or use JAX/PyTorch "
            "arrays"
        )
    return rule


def value_and_grad(fun, argnums: int | Sequence[int] = 0):
    """``fun``'s value and gradient w.r.t. the positional arguments ``argnums``.

    ``fun`` must return a scalar. Returns a function of ``(*args, **kwargs)`` giving
    ``(value, grad)``, with ``grad`` a tuple when ``argnums`` is a sequence.

    Example:
        >>> import numpy as np, otcore as ot
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
        >>> a, b = np.full(5, 0.2), np.full(4, 0.25)
        >>> val, (gx, ga) = ot.value_and_grad(ot.reg_ot_cost, argnums=(0, 2))(x, y, a, b)
        >>> gx.shape, ga.shape
        ((5, 2), (5,))
    """
    many = not isinstance(argnums, int)
    nums = tuple(argnums) if many else (argnums,)

    def wrapped(*args, **kwargs):
        for k in nums:
            if not 0 <= k < len(args) or args[k] is None:
                raise ValueError(
                    f"argnums={argnums!r}: positional argument {k} must be given as an array "
                    f"to differentiate with respect to it (got {len(args)} positional arguments)"
                )
        value, pullback = _vjp(fun, args, kwargs, "grad")
        if getattr(value, "ndim", None) != 0:
            raise TypeError(
                f"grad needs a scalar output, got shape {getattr(value, 'shape', None)}; "
                "use otcore.vjp for vector outputs"
            )
        xp = adapter_for(value).xp
        cotangents = pullback(xp.ones_like(value))
        grads = tuple(cotangents[k] for k in nums)
        return value, grads if many else grads[0]

    return wrapped


def grad(fun, argnums: int | Sequence[int] = 0):
    """Gradient of scalar ``fun`` w.r.t. positional ``argnums`` (see :func:`value_and_grad`).

    Example:
        >>> import numpy as np, otcore as ot
        >>> x = np.random.default_rng(0).normal(size=(5, 2))
        >>> ot.grad(ot.reg_ot_cost)(x, x + 1.0).shape
        (5, 2)
    """
    vg = value_and_grad(fun, argnums)

    def wrapped(*args, **kwargs):
        return vg(*args, **kwargs)[1]

    return wrapped


def _single_argnum(argnums, args):
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise TypeError(f"argnums must be one int for second derivatives, got {argnums!r}")
    if not 0 <= argnums < len(args) or args[argnums] is None:
        raise ValueError(
            f"argnums={argnums}: positional argument {argnums} must be given as an array "
            f"(got {len(args)} positional arguments)"
        )
    return argnums


def hvp(fun, argnums: int = 0):
    """Hessian-vector products of scalar ``fun`` w.r.t. positional argument ``argnums``.

    ``hvp(fun, argnums)(*args, **kwargs)`` solves once at that point and returns the
    linear map ``v -> H v`` (``v`` shaped like the argument). JAX: forward-over-reverse;
    PyTorch: double backward; NumPy/CuPy: otcore's analytic rules (one linear solve of the
    implicit system per product).

    Example:
        >>> import numpy as np, otcore as ot
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
        >>> hv = ot.hvp(ot.reg_ot_cost)(x, y, epsilon=1.0)
        >>> hv(np.ones((5, 2))).shape
        (5, 2)
    """

    def wrapped(*args, **kwargs):
        k = _single_argnum(argnums, args)
        adapter = adapter_for(*_arrays(args))
        call = _checked_call(fun, args, kwargs, adapter, 2, "hvp")
        if adapter.has_autodiff:
            return adapter.hvp(fun, k, args, kwargs)
        rules = manual_rules()
        return _manual_rule(rules.hvp, rules, fun, adapter, "second-order")(call, k)[1]

    return wrapped


def hessian(fun, argnums: int = 0):
    """Hessian of scalar ``fun`` w.r.t. positional argument ``argnums``.

    Returns an array of shape ``arg.shape + arg.shape``. JAX: ``jax.hessian``; PyTorch:
    ``torch.autograd.functional.hessian``; NumPy/CuPy: one analytic :func:`hvp` per
    coordinate.

    Example:
        >>> import numpy as np, otcore as ot
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
        >>> ot.hessian(ot.reg_ot_cost)(x, y, epsilon=1.0).shape
        (5, 2, 5, 2)
    """

    def wrapped(*args, **kwargs):
        k = _single_argnum(argnums, args)
        adapter = adapter_for(*_arrays(args))
        call = _checked_call(fun, args, kwargs, adapter, 2, "hessian")
        if adapter.has_autodiff:
            return adapter.hessian(fun, k, args, kwargs)
        rules = manual_rules()
        product = _manual_rule(rules.hvp, rules, fun, adapter, "second-order")(call, k)[1]
        xp = adapter.xp
        arg = args[k]
        size = 1
        for d in arg.shape:
            size *= d
        basis = xp.eye(size, dtype=arg.dtype, device=_xp.device_of(arg))
        rows = [
            xp.reshape(product(xp.reshape(basis[i, ...], arg.shape)), (size,)) for i in range(size)
        ]
        return xp.reshape(xp.stack(rows, axis=0), tuple(arg.shape) + tuple(arg.shape))

    return wrapped
