"""Array-namespace helpers shared by the core code.

Everything here is written against the Python array API standard and works on any
compliant namespace (NumPy, JAX, PyTorch, CuPy, array_api_strict).
"""

from __future__ import annotations

import numbers

import array_api_compat

__all__ = [
    "device_of",
    "divide_potential",
    "is_floating",
    "logsumexp",
    "namespace",
    "rowdot",
    "safe_log",
]


def namespace(*arrays, names=None):
    """Return the array namespace shared by ``arrays`` (``None`` entries are skipped).

    Raises:
        TypeError: if the arrays come from different libraries; the message names the
            arguments (``names``, parallel to ``arrays``) and their types.

    Example:
        >>> import numpy as np
        >>> xp = namespace(np.ones(3), np.zeros(2))
        >>> xp.__name__.endswith("numpy")
        True
    """
    present = [(i, a) for i, a in enumerate(arrays) if a is not None]
    if not present:
        raise TypeError("at least one array is required")
    labels = names or [f"argument {i}" for i in range(len(arrays))]
    for i, a in present:
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(
                f"{labels[i]} must be an array (NumPy, JAX, PyTorch, CuPy or another array "
                f"API library), got {type(a).__name__}"
            )
    try:
        return array_api_compat.array_namespace(*[a for _, a in present])
    except TypeError:
        kinds = ", ".join(
            f"{labels[i]}: {type(a).__module__}.{type(a).__name__}" for i, a in present
        )
        raise TypeError(
            "all arrays must come from the same array library (got " + kinds + "); "
            "convert them to one framework first"
        ) from None


def rowdot(xp, a, b):
    """Row-wise inner products ``Σ_k a[..., k] b[..., k]`` (the last axis is reduced).

    Example:
        >>> import numpy as np
        >>> rowdot(np, np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2))).tolist()
        [3.0, 7.0]
    """
    return xp.sum(a * b, axis=-1)


def device_of(x):
    """Device of array ``x`` (``array_api_compat.device``)."""
    return array_api_compat.device(x)


def is_floating(xp, x) -> bool:
    """True when ``x`` has a real floating dtype."""
    return xp.isdtype(x.dtype, "real floating")


def logsumexp(xp, x, axis: int):
    """``log(sum(exp(x), axis))`` with a max shift; a slice of only ``-inf`` gives ``-inf``.

    Args:
        xp: array namespace.
        x: array of any shape.
        axis: the axis reduced.

    Returns:
        ``x`` with ``axis`` removed.

    Example:
        >>> import numpy as np
        >>> float(logsumexp(np, np.log(np.array([1.0, 3.0])), axis=0))  # log 4
        1.3862943611198906
    """
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(x - m), axis=axis, keepdims=True)
    pos = s > 0  # a slice of only -inf sums to 0: its log is -inf, without a warning
    out = xp.where(pos, xp.log(xp.where(pos, s, xp.ones_like(s))) + m, -xp.inf)
    return xp.squeeze(out, axis=axis)


def divide_potential(xp, h, scale):
    """``h / scale`` for a potential ``h`` that is ``-inf`` at zero weights.

    The double ``where`` keeps derivatives w.r.t. ``scale`` (an array ε) finite: a plain
    ``-inf / ε`` has the derivative ``+inf`` there, and ``inf · 0`` poisons gradients.
    """
    finite = xp.isfinite(h)
    return xp.where(finite, xp.where(finite, h, xp.zeros_like(h)) / scale, h)


def safe_log(xp, w):
    """``log(w)`` where ``w > 0`` and ``-inf`` where ``w == 0``, with finite gradients.

    The double-``where`` keeps reverse-mode derivatives finite at zero weights.
    """
    pos = w > 0
    w_safe = xp.where(pos, w, xp.ones_like(w))
    return xp.where(pos, xp.log(w_safe), xp.full_like(w, -float("inf")))


def expand_dims_right(eps, k: int):
    """Append ``k`` singleton axes to an array ε so it broadcasts against potentials/costs."""
    if isinstance(eps, numbers.Real):
        return eps
    for _ in range(k):
        eps = eps[..., None]
    return eps


def broadcast_shapes(*shapes):
    out: list[int] = []
    for shape in shapes:
        shape = tuple(shape)
        k = max(len(out), len(shape))
        a = [1] * (k - len(out)) + out
        b = [1] * (k - len(shape)) + list(shape)
        merged = []
        for u, v in zip(a, b):
            if u != v and 1 not in (u, v):
                raise ValueError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
            merged.append(max(u, v))
        out = merged
    return tuple(out)


def unbroadcast(xp, g, shape):
    """Sum ``g`` over the axes that broadcasting added to reach it from ``shape``."""
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    if extra > 0:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, g.shape)) if s == 1 and t != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g
