"""The linear (Kantorovich) entropic OT problem: a geometry and two weight vectors."""

from __future__ import annotations

import math

from otcore._lib import checks as _checks
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.geometry.base import Geometry

__all__ = ["LinearProblem"]


@_pytree.register
class LinearProblem:
    """``min_P <P, C> + ε KL(P || a⊗b) + ρ_a KL(P1 || a) + ρ_b KL(Pᵀ1 || b)``.

    The marginal penalties are off (balanced problem) when ``tau = 1``; otherwise
    ``ρ = ε τ / (1 - τ)``, i.e. ``τ = ρ / (ρ + ε)``.

    Args:
        geom: a :class:`~otcore.Geometry` or :class:`~otcore.PointCloud` with cost
            ``(..., n, m)``.
        a: weights of the rows, ``(..., n)``, non-negative; ``None`` for uniform ``1/n``.
            Leading axes batch many problems over one geometry.
        b: weights of the columns, ``(..., m)``; ``None`` for uniform ``1/m``.
        tau_a, tau_b: in ``(0, 1]``; ``1`` constrains that marginal exactly. A tau so
            small that ``ρ = ε τ / (1 - τ)`` falls below the dtype's smallest normal
            number, or that ``ε / ρ`` overflows, is refused with a ``ValueError`` (the
            ε part is checked when ε is concrete, i.e. not under ``jax.jit``).

    Example:
        >>> import numpy as np
        >>> from otcore import PointCloud
        >>> x = np.zeros((3, 2)); y = np.ones((4, 2))
        >>> prob = LinearProblem(PointCloud(x, y, epsilon=1.0), tau_b=0.9)
        >>> prob.a.shape, prob.b.shape, prob.is_balanced
        ((3,), (4,), False)
    """

    def __init__(self, geom: Geometry, a=None, b=None, tau_a: float = 1.0, tau_b: float = 1.0):
        if not isinstance(geom, Geometry):
            raise TypeError(f"geom must be a Geometry or PointCloud, got {type(geom).__name__}")
        if a is not None or b is not None:
            geom = geom.bind_to(a if a is not None else b)  # a Grid made from a shape
        self.geom = geom
        ref = geom.data_arrays()[0]
        names = ["geometry arrays", "a", "b"]
        _xp.namespace(ref, a, b, names=names)
        _checks.check_same_device(names, [ref, a, b])
        xp, ad = geom.xp, geom.adapter
        n, m = geom.shape
        for name, w, size in (("a", a, n), ("b", b, m)):
            if w is None:
                continue
            _checks.check_float_array(xp, name, w, min_ndim=1)
            if w.shape[-1] != size:
                side = "rows (n)" if name == "a" else "columns (m)"
                raise ValueError(
                    f"{name} must have length {size} = number of {side} of the geometry "
                    f"{geom.shape} on its last axis, got shape {w.shape}"
                )
            _checks.check_weights(ad, name, w)
        _checks.check_same_dtype(names, [ref, a, b])
        self.a = _uniform(xp, n, ref) if a is None else a
        self.b = _uniform(xp, m, ref) if b is None else b
        try:
            self.batch_shape = _xp.broadcast_shapes(
                self.a.shape[:-1], self.b.shape[:-1], geom.batch_shape
            )
        except ValueError:
            raise ValueError(
                f"batch axes do not broadcast: a {self.a.shape[:-1]}, b {self.b.shape[:-1]}, "
                f"geometry {geom.batch_shape}"
            ) from None
        self.tau_a = _checks.check_tau("tau_a", tau_a)
        self.tau_b = _checks.check_tau("tau_b", tau_b)
        for name, tau in (("tau_a", self.tau_a), ("tau_b", self.tau_b)):
            if tau < 1.0:
                _check_rho(geom, name, tau)

    def _replace(self, geom, a, b):
        """A copy on other arrays of the same shapes (no validation: used inside traces)."""
        prob = LinearProblem.__new__(LinearProblem)
        prob.__dict__.update(self.__dict__)
        prob.geom, prob.a, prob.b = geom, a, b
        return prob

    def tree_flatten(self):
        """``(children, aux)``: the geometry (a pytree itself) and the weights are children;
        ``tau_a``, ``tau_b`` are aux. ``batch_shape`` is recomputed on unflattening (it
        changes under ``jax.vmap``)."""
        return _pytree.flatten_attrs(self, ("geom", "a", "b"), skip=("batch_shape",))

    @classmethod
    def tree_unflatten(cls, aux, children):
        prob = _pytree.unflatten_attrs(cls, aux, children)
        try:  # the children may be placeholders without shapes
            shapes = (prob.a.shape[:-1], prob.b.shape[:-1], prob.geom.batch_shape)
            prob.batch_shape = _xp.broadcast_shapes(*shapes)
        except (AttributeError, TypeError, IndexError, ValueError):
            prob.batch_shape = None
        return prob

    @property
    def is_balanced(self) -> bool:
        """True when both marginals are constrained (``tau_a == tau_b == 1``)."""
        return self.tau_a == 1.0 and self.tau_b == 1.0

    @property
    def epsilon(self):
        return self.geom.epsilon

    def rho(self, tau: float, eps=None):
        """``ρ = ε τ / (1 - τ)`` (``inf`` when ``tau == 1``)."""
        if tau == 1.0:
            return math.inf
        eps = self.geom.epsilon if eps is None else eps
        return eps * (tau / (1.0 - tau))

    def __repr__(self):
        return (
            f"LinearProblem(shape={self.geom.shape}, batch_shape={self.batch_shape}, "
            f"tau_a={self.tau_a}, tau_b={self.tau_b})"
        )


def _check_rho(geom, name, tau):
    """Refuse a ``tau`` whose ``ρ = ε τ/(1-τ)`` underflows or whose ``ε/ρ`` overflows in
    the geometry's dtype (the implicit system divides by ``ρ``)."""
    xp = geom.xp
    finfo = xp.finfo(geom.dtype)
    tiny, big = float(finfo.smallest_normal), float(finfo.max)
    ratio = tau / (1.0 - tau)
    if ratio * big < 1.0:
        raise ValueError(
            f"{name}={tau!r} is too small for {geom.dtype}: epsilon/rho = (1 - tau)/tau "
            f"overflows; use {name} >= {2.0 / big:.3g}"
        )
    eps = geom.epsilon
    if isinstance(eps, float):
        too_small = eps * ratio < tiny
    else:
        too_small = _checks.fails(geom.adapter, eps * ratio >= tiny)
    if too_small:
        shown = f"epsilon={eps:.3g}" if isinstance(eps, float) else "the given epsilon"
        bound = f" >= {2.0 * tiny / eps:.3g}" if isinstance(eps, float) else ""
        raise ValueError(
            f"{name}={tau!r} is too small for {shown} in {geom.dtype}: rho = epsilon * "
            f"tau/(1 - tau) underflows (below {tiny:.3g}, the smallest normal number); "
            f"use a larger {name}{bound}"
        )


def _uniform(xp, size, like):
    return xp.ones((size,), dtype=like.dtype, device=_xp.device_of(like)) / size
