"""Ground costs between point clouds, written against the array API.

A cost maps points ``x`` of shape ``(..., n, d)`` and ``y`` of shape ``(..., m, d)`` to
the cost matrix ``C`` of shape ``(..., n, m)``, ``C[..., i, j] = c(x_i, y_j)``.

Built-in costs are :class:`SqEuclidean` (``"sqeuclidean"``, the default),
:class:`Euclidean` (``"euclidean"``), :class:`PNorm` (``PNorm(p)``) and :class:`Cosine`
(``"cosine"``). A user-defined cost is any callable ``c(x, y)`` written in array API code
that receives broadcast views ``x[..., :, None, :]`` and ``y[..., None, :, :]`` (shapes
``(..., n, 1, d)`` and ``(..., 1, m, d)``) and returns ``(..., n, m)``.
"""

from __future__ import annotations

from . import _xp

__all__ = ["Cosine", "CostFn", "Euclidean", "PNorm", "SqEuclidean", "UserCost", "get_cost"]


class CostFn:
    """Base class of ground costs. Subclasses implement :meth:`pairwise`."""

    name = "cost"

    def pairwise(self, x, y):
        """Cost matrix ``(..., n, m)`` between ``x (..., n, d)`` and ``y (..., m, d)``."""
        raise NotImplementedError

    def __call__(self, x, y):
        return self.pairwise(x, y)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _sq_dist(x, y):
    xp = _xp.namespace(x, y)
    xx = xp.sum(x * x, axis=-1)
    yy = xp.sum(y * y, axis=-1)
    xy = x @ xp.matrix_transpose(y)
    d2 = xx[..., :, None] + yy[..., None, :] - 2.0 * xy
    return xp, xp.maximum(d2, xp.zeros_like(d2))


class SqEuclidean(CostFn):
    """``c(x, y) = ||x - y||_2^2`` (computed with one matrix product; clamped at 0).

    Example:
        >>> import numpy as np
        >>> SqEuclidean()(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
        array([[25.]])
    """

    name = "sqeuclidean"

    def pairwise(self, x, y):
        return _sq_dist(x, y)[1]


class Euclidean(CostFn):
    """``c(x, y) = ||x - y||_2``, with a finite (zero) gradient where ``x == y``.

    Example:
        >>> import numpy as np
        >>> Euclidean()(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
        array([[5.]])
    """

    name = "euclidean"

    def pairwise(self, x, y):
        xp = _xp.namespace(x, y)
        diff = x[..., :, None, :] - y[..., None, :, :]
        d2 = xp.sum(diff * diff, axis=-1)
        pos = d2 > 0
        return xp.where(pos, xp.sqrt(xp.where(pos, d2, xp.ones_like(d2))), xp.zeros_like(d2))


class PNorm(CostFn):
    """``c(x, y) = ||x - y||_p^p = sum_k |x_k - y_k|^p`` for ``p >= 1``.

    This is the ground cost of the Wasserstein-``p`` distance (``PNorm(2)`` equals
    :class:`SqEuclidean`). It forms an ``(..., n, m, d)`` intermediate.

    Example:
        >>> import numpy as np
        >>> PNorm(1.0)(np.array([[0.0, 0.0]]), np.array([[3.0, -4.0]]))
        array([[7.]])
    """

    name = "pnorm"

    def __init__(self, p: float):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1.0:
            raise ValueError(f"p must be a number >= 1, got {p!r}")
        self.p = float(p)

    def pairwise(self, x, y):
        xp = _xp.namespace(x, y)
        diff = xp.abs(x[..., :, None, :] - y[..., None, :, :])
        if self.p == 1.0:
            return xp.sum(diff, axis=-1)
        pos = diff > 0
        powered = xp.where(pos, xp.where(pos, diff, xp.ones_like(diff)) ** self.p, 0.0 * diff)
        return xp.sum(powered, axis=-1)

    def __repr__(self):
        return f"PNorm(p={self.p})"


class Cosine(CostFn):
    """``c(x, y) = 1 - <x, y> / (||x|| ||y|| + ridge)``, in ``[0, 2]``.

    Example:
        >>> import numpy as np
        >>> Cosine()(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])).round(6)
        array([[1.]])
    """

    name = "cosine"

    def __init__(self, ridge: float = 1e-8):
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        self.ridge = float(ridge)

    def pairwise(self, x, y):
        xp = _xp.namespace(x, y)
        nx = xp.sqrt(xp.sum(x * x, axis=-1))
        ny = xp.sqrt(xp.sum(y * y, axis=-1))
        xy = x @ xp.matrix_transpose(y)
        return 1.0 - xy / (nx[..., :, None] * ny[..., None, :] + self.ridge)


class UserCost(CostFn):
    """Wraps a user callable ``c(x, y)`` applied to broadcast views (see module doc)."""

    name = "user"

    def __init__(self, fn):
        self.fn = fn

    def pairwise(self, x, y):
        out = self.fn(x[..., :, None, :], y[..., None, :, :])
        expected = x.shape[:-1] + (y.shape[-2],)
        if tuple(getattr(out, "shape", ())) != tuple(expected):
            raise ValueError(
                f"the cost callable must return shape {tuple(expected)} from broadcast views "
                f"x[..., :, None, :] and y[..., None, :, :], got {getattr(out, 'shape', None)}"
            )
        return out

    def __repr__(self):
        return f"UserCost({getattr(self.fn, '__name__', self.fn)!r})"


_BY_NAME = {"sqeuclidean": SqEuclidean, "euclidean": Euclidean, "cosine": Cosine}


def get_cost(cost) -> CostFn:
    """Resolve ``cost`` (a name, a :class:`CostFn` or a callable) to a :class:`CostFn`.

    Example:
        >>> get_cost("euclidean")
        Euclidean()
    """
    if isinstance(cost, CostFn):
        return cost
    if isinstance(cost, str):
        key = cost.lower()
        if key in _BY_NAME:
            return _BY_NAME[key]()
        if key == "pnorm":
            raise ValueError("cost='pnorm' needs an exponent: pass cost=otcore.costs.PNorm(p)")
        raise ValueError(
            f"unknown cost {cost!r}; expected one of {sorted(_BY_NAME) + ['pnorm']}, "
            "a CostFn instance or a callable"
        )
    if callable(cost):
        return UserCost(cost)
    raise TypeError(f"cost must be a string, a CostFn or a callable, got {type(cost).__name__}")
