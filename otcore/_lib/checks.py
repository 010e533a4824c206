"""Input validation with clear messages naming the offending argument.

Value checks (finiteness, signs) need concrete values: they run eagerly and are skipped
for traced arrays (inside ``jax.jit``/``jax.vmap``/``jax.grad``), where nothing can be
inspected without breaking the trace.
"""

from __future__ import annotations

import math
import numbers

from otcore._lib import xp as _xp


def check_float_array(xp, name: str, x, min_ndim: int = 1):
    """Check that ``x`` is a usable input array.

    Raises ``TypeError`` unless ``x`` is an array of dtype float32 or float64 (float16 and
    bfloat16 are refused: the solvers' tolerances and underflow guards assume at least
    float32); ``ValueError`` if it has fewer than ``min_ndim`` axes, an axis of length 0
    (an empty point cloud, cost matrix or weight vector, or zero features), or lives on
    PyTorch's ``meta`` device (no values to compute with). All of these are checked from
    shapes and dtypes only, so they also hold under ``jax.jit``.

    Example:
        >>> import numpy as np
        >>> check_float_array(np, "y", np.zeros((0, 2)), min_ndim=2)
        Traceback (most recent call last):
        ...
        ValueError: y must not be empty: got shape (0, 2), with an axis of length 0
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if not _xp.is_floating(xp, x):
        raise TypeError(
            f"{name} must have a real floating dtype (float32/float64), got {x.dtype}; "
            f"convert it, e.g. with {name}.astype(float)"
        )
    if xp.finfo(x.dtype).bits < 32:
        raise TypeError(
            f"{name} has dtype {x.dtype}, which otcore does not support (its tolerances "
            f"and underflow guards assume float32 or float64); convert {name} to float32"
        )
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}")
    shape = tuple(x.shape)
    if any(s == 0 for s in shape):
        raise ValueError(f"{name} must not be empty: got shape {shape}, with an axis of length 0")
    check_has_data(name, x)


def check_has_data(name: str, x):
    """Raise ``ValueError`` if ``x`` is a tensor on PyTorch's ``meta`` device.

    Meta tensors carry shapes and dtypes but no values: a Sinkhorn loop has to look at
    its iterates (to stop), so otcore refuses them rather than failing inside.
    """
    dev = _xp.device_of(x) if hasattr(x, "device") else None
    if getattr(dev, "type", None) == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device, which holds shapes but no values: otcore "
            f"must compute with the values; create {name} on 'cpu' or 'cuda'"
        )


def fails(adapter, condition) -> bool:
    """True when the boolean array ``condition`` is concrete and not all true.

    Inside a trace (``jax.jit``, ``jax.vmap``, ...) the reduction is a tracer even for
    concrete inputs closed over by the traced function: nothing is checked then.
    """
    verdict = adapter.xp.all(condition)
    return adapter.is_concrete(verdict) and not bool(verdict)


def check_finite(adapter, name: str, x):
    """Raise ``ValueError`` if a concrete ``x`` holds NaN or infinite values."""
    if fails(adapter, adapter.xp.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_weights(adapter, name: str, w):
    """Raise ``ValueError`` if concrete weights ``w`` are non-finite, negative or all zero."""
    check_finite(adapter, name, w)
    xp = adapter.xp
    if fails(adapter, w >= 0):
        raise ValueError(f"{name} must be non-negative, got a negative entry")
    if fails(adapter, xp.sum(w, axis=-1) > 0):
        raise ValueError(f"{name} must have positive total mass, got all zeros")


def check_simplex(adapter, name: str, w, tol: float):
    """Raise ``ValueError`` unless concrete ``w`` is finite, non-negative and sums to 1
    (within ``tol``) along its last axis: a point of the simplex (or a batch of them).

    Example:
        >>> import numpy as np
        >>> from otcore.backends import adapter_for
        >>> check_simplex(adapter_for(np.ones(2)), "weights", np.array([0.5, 0.6]), 1e-6)
        Traceback (most recent call last):
        ...
        ValueError: weights must sum to 1 (a point of the simplex)
    """
    check_finite(adapter, name, w)
    xp = adapter.xp
    if fails(adapter, w >= 0):
        raise ValueError(f"{name} must be non-negative, got a negative entry")
    if fails(adapter, xp.abs(xp.sum(w, axis=-1) - 1.0) <= tol):
        where = " along the last axis" if w.ndim > 1 else ""
        raise ValueError(f"{name} must sum to 1 (a point of the simplex){where}")


def check_same_device(names, arrays):
    """Raise ``ValueError`` if the (non-``None``) arrays live on different devices (or
    one is on PyTorch's ``meta`` device, see :func:`check_has_data`)."""
    for n, a in zip(names, arrays):
        if a is not None:
            check_has_data(n, a)
    seen = [(n, _xp.device_of(a)) for n, a in zip(names, arrays) if a is not None]
    seen = [(n, d) for n, d in seen if d is not None]  # traced arrays report no device
    devices = {str(d) for _, d in seen}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in seen)
        raise ValueError(f"all arrays must be on the same device, got {listing}")


def check_same_dtype(names, arrays):
    """Raise ``TypeError`` if the (non-``None``) arrays have different dtypes."""
    seen = [(n, a.dtype) for n, a in zip(names, arrays) if a is not None]
    if len({str(d) for _, d in seen}) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in seen)
        raise TypeError(f"all arrays must share one floating dtype, got {listing}")


def check_tau(name: str, tau):
    """Return ``tau`` as a float after checking ``0 < tau <= 1``."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(tau).__name__}")
    if not 0.0 < float(tau) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (1 is balanced), got {tau!r}")
    return float(tau)


def check_positive_int(name: str, value, minimum: int = 1):
    """Return ``value`` after checking it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_stopping(threshold, inner_iterations, min_iterations, max_iterations):
    """Validate a loop's stopping options; return them as ``(float, int, int, int)``."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not 0 <= threshold < math.inf
    ):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    inner = check_positive_int("inner_iterations", inner_iterations)
    lo = check_positive_int("min_iterations", min_iterations, 0)
    hi = check_positive_int("max_iterations", max_iterations)
    if lo > hi:
        raise ValueError(
            f"min_iterations ({min_iterations}) must not exceed max_iterations ({max_iterations})"
        )
    return float(threshold), inner, lo, hi
