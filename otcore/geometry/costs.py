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

from otcore._lib import xp as _xp
from otcore.backends import adapter_for

__all__ = [
    "Cosine",
    "CostFn",
    "Euclidean",
    "PNorm",
    "SqEuclidean",
    "UserCost",
    "common_shift",
    "get_cost",
]


class CostFn:
    """Base class of ground costs. Subclasses implement :meth:`pairwise`."""

    name = "cost"

    #: True for a translation-invariant cost (``c(x + s, y + s) = c(x, y)``) whose
    #: formula loses digits far from the origin (:class:`SqEuclidean`'s expansion): a
    #: :class:`~otcore.PointCloud` then moves both clouds by one common shift
    #: (:func:`common_shift`) and calls :meth:`pairwise_centred`. Costs computed from the
    #: differences ``x_i - y_j`` (:class:`Euclidean`, :class:`PNorm`) keep their digits
    #: without it.
    centre_points = False

    def pairwise(self, x, y):
        """Cost matrix ``(..., n, m)`` between ``x (..., n, d)`` and ``y (..., m, d)``."""
        raise NotImplementedError

    def pairwise_centred(self, x, y):
        """:meth:`pairwise` of points that the caller has already moved by a common shift
        (a :class:`PointCloud` does, once for all its blocks): a cost that centres its
        inputs itself skips that step here. Default: :meth:`pairwise`."""
        return self.pairwise(x, y)

    def __call__(self, x, y):
        return self.pairwise(x, y)

    def vjp(self, x, y, g):
        """Pull a cotangent ``g (..., n, m)`` of the cost matrix back to ``(dx, dy)``.

        Used by the manual derivative rules of backends without autodiff (NumPy, CuPy);
        shapes follow broadcasting of ``x``, ``y`` and ``g`` (callers sum batch axes).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no manual derivative rule: differentiate with "
            "respect to points with JAX or PyTorch arrays, or use a built-in cost"
        )

    def jvp(self, x, y, dx, dy):
        """Directional derivative ``Ċ (..., n, m)`` of the cost matrix along ``(dx, dy)``
        (either may be ``None``). Manual second-order rules use it."""
        raise NotImplementedError(self._no_second_order())

    def vjp_jvp(self, x, y, w, dx, dy):
        """Derivative of ``vjp(x, y, w)`` along ``(dx, dy)`` with ``w`` held fixed."""
        raise NotImplementedError(self._no_second_order())

    def _no_second_order(self):
        return (
            f"{type(self).__name__} has no manual second-order rule: use JAX or PyTorch "
            "arrays, or the sqeuclidean, euclidean or PNorm costs"
        )

    def __repr__(self):
        return f"{type(self).__name__}()"


class _TranslationInvariant(CostFn):
    """``c(x, y) = φ(x - y)``; subclasses give ``∇φ`` and ``∇²φ · v`` on ``(..., n, m, d)``."""

    def _grad_phi(self, xp, diff):
        raise NotImplementedError

    def _hess_phi_v(self, xp, diff, v):
        raise NotImplementedError

    @staticmethod
    def _direction(xp, x, y, dx, dy):
        zero_x = xp.zeros_like(x) if dx is None else dx
        zero_y = xp.zeros_like(y) if dy is None else dy
        return zero_x[..., :, None, :] - zero_y[..., None, :, :]

    def vjp(self, x, y, g):
        xp = _xp.namespace(x, y, g)
        weighted = g[..., None] * self._grad_phi(xp, x[..., :, None, :] - y[..., None, :, :])
        return xp.sum(weighted, axis=-2), -xp.sum(weighted, axis=-3)

    def jvp(self, x, y, dx, dy):
        xp = _xp.namespace(x, y)
        diff = x[..., :, None, :] - y[..., None, :, :]
        return xp.sum(self._grad_phi(xp, diff) * self._direction(xp, x, y, dx, dy), axis=-1)

    def vjp_jvp(self, x, y, w, dx, dy):
        xp = _xp.namespace(x, y, w)
        diff = x[..., :, None, :] - y[..., None, :, :]
        weighted = w[..., None] * self._hess_phi_v(xp, diff, self._direction(xp, x, y, dx, dy))
        return xp.sum(weighted, axis=-2), -xp.sum(weighted, axis=-3)


def _weighted_differences(xp, x, y, w):
    """``(dx, dy)`` with ``dx_i = sum_j w_ij (x_i - y_j)`` and ``dy_j = -sum_i w_ij (x_i - y_j)``.

    Both are invariant under a common shift of ``x`` and ``y``: the points are moved by
    :func:`common_shift` first, so that float32 keeps its digits far from the origin
    (``x_i Σ_j w_ij - Σ_j w_ij y_j`` would cancel them)."""
    s = common_shift(xp, x, y)
    x, y = x - s, y - s
    dx = x * xp.sum(w, axis=-1)[..., None] - w @ y
    dy = y * xp.sum(w, axis=-2)[..., None] - xp.matrix_transpose(w) @ x
    return dx, dy


def common_shift(xp, x, y):
    """The shift ``s (..., 1, d)`` that :class:`SqEuclidean` subtracts from both
    ``x (..., n, d)`` and ``y (..., m, d)``: the midpoint of their means (0 when either is
    empty). Far from the origin, ``x - s`` and ``y - s`` are exact in floating point
    (Sterbenz), while ``|x|² + |y|² - 2 x·y`` would lose every digit of ``|x - y|²``.

    Example:
        >>> import numpy as np
        >>> common_shift(np, np.array([[1.0, 2.0]]), np.array([[3.0, 2.0], [3.0, 4.0]]))
        array([[2. , 2.5]])
    """
    if x.shape[-2] == 0 or y.shape[-2] == 0:
        return xp.zeros_like(x[..., :1, :])
    return (xp.mean(x, axis=-2, keepdims=True) + xp.mean(y, axis=-2, keepdims=True)) / 2.0


def _centred(x, y, stop_gradient: bool = False):
    """``(xp, x - s, y - s)`` with ``s = common_shift(x, y)`` (a constant for autodiff
    when ``stop_gradient``: the cost's derivatives are then those of the unshifted points,
    exactly, at every order)."""
    xp = _xp.namespace(x, y)
    s = common_shift(xp, x, y)
    if stop_gradient:
        s = adapter_for(x, y).stop_gradient(s)
    return xp, x - s, y - s


def _sq_dist(x, y):
    """``|x|² + |y|² - 2 x·y`` (one matrix product; clamped at 0) on points as given."""
    xp = _xp.namespace(x, y)
    xx = xp.sum(x * x, axis=-1)
    yy = xp.sum(y * y, axis=-1)
    xy = x @ xp.matrix_transpose(y)
    d2 = xx[..., :, None] + yy[..., None, :] - 2.0 * xy
    return xp.maximum(d2, xp.zeros_like(d2))


class SqEuclidean(CostFn):
    """``c(x, y) = ||x - y||_2^2`` (computed with one matrix product; clamped at 0).

    The expansion ``|x|² + |y|² - 2 x·y`` is formed on points moved by a common shift
    (:func:`common_shift`, a constant for autodiff), so that float32 keeps its digits
    for clouds far from the origin; the value and all derivatives are those of
    ``||x - y||²``.

    Example:
        >>> import numpy as np
        >>> SqEuclidean()(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
        array([[25.]])
        >>> x = np.array([[1000.0, 1000.0]], np.float32)  # far from the origin
        >>> SqEuclidean()(x, x + np.float32(0.01))  # (0.0100098 in float32)² · 2
        array([[0.00020039]], dtype=float32)
    """

    name = "sqeuclidean"
    centre_points = True

    def pairwise(self, x, y):
        _, xc, yc = _centred(x, y, stop_gradient=True)
        return _sq_dist(xc, yc)

    def pairwise_centred(self, x, y):
        return _sq_dist(x, y)

    def vjp(self, x, y, g):
        xp, x, y = _centred(x, y)
        dx, dy = _weighted_differences(xp, x, y, g)
        return 2.0 * dx, 2.0 * dy

    def jvp(self, x, y, dx, dy):
        xp, x, y = _centred(x, y)
        out = 0.0
        if dx is not None:
            out = out + 2.0 * (xp.sum(x * dx, axis=-1)[..., :, None] - dx @ xp.matrix_transpose(y))
        if dy is not None:
            out = out + 2.0 * (xp.sum(y * dy, axis=-1)[..., None, :] - x @ xp.matrix_transpose(dy))
        return out

    def vjp_jvp(self, x, y, w, dx, dy):
        xp = _xp.namespace(x, y, w)
        dx = xp.zeros_like(x) if dx is None else dx
        dy = xp.zeros_like(y) if dy is None else dy
        return tuple(2.0 * t for t in _weighted_differences(xp, dx, dy, w))


class Euclidean(_TranslationInvariant):
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
        # else-branch ``0 * d2``, not zeros: a NaN (which fails ``d2 > 0``) propagates
        return xp.where(pos, xp.sqrt(xp.where(pos, d2, xp.ones_like(d2))), 0.0 * d2)

    def vjp(self, x, y, g):
        xp = _xp.namespace(x, y, g)
        c = self.pairwise(x, y)
        pos = c > 0
        w = xp.where(pos, g / xp.where(pos, c, xp.ones_like(c)), 0.0 * (g * c))
        return _weighted_differences(xp, x, y, w)

    @staticmethod
    def _inv_norm(xp, diff):
        d2 = xp.sum(diff * diff, axis=-1, keepdims=True)
        pos = d2 > 0
        return xp.where(pos, 1.0 / xp.sqrt(xp.where(pos, d2, xp.ones_like(d2))), 0.0 * d2)

    def _grad_phi(self, xp, diff):
        return diff * self._inv_norm(xp, diff)

    def _hess_phi_v(self, xp, diff, v):
        inv = self._inv_norm(xp, diff)
        unit = diff * inv
        return (v - unit * xp.sum(unit * v, axis=-1, keepdims=True)) * inv


class PNorm(_TranslationInvariant):
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
        pos = diff > 0  # masked so that every backend's derivative at a tie is 0
        powered = xp.where(pos, xp.where(pos, diff, xp.ones_like(diff)) ** self.p, 0.0 * diff)
        return xp.sum(powered, axis=-1)

    def _powered_abs(self, xp, diff, power):
        mag = xp.abs(diff)
        pos = mag > 0
        return xp.where(pos, xp.where(pos, mag, xp.ones_like(mag)) ** power, 0.0 * diff)

    def _grad_phi(self, xp, diff):
        return self.p * self._powered_abs(xp, diff, self.p - 1.0) * xp.sign(diff)

    def _hess_phi_v(self, xp, diff, v):
        return self.p * (self.p - 1.0) * self._powered_abs(xp, diff, self.p - 2.0) * v

    def __repr__(self):
        return f"PNorm(p={self.p})"


def _safe_norm(xp, v):
    """``||v||_2`` over the last axis with a zero (not NaN) derivative at ``v = 0``.

    The "double where": the squared norm of a zero vector is replaced by 1 *before* the
    square root, so the backward pass of ``sqrt`` never sees 0 (``0 * inf = NaN``), and
    the outer ``where`` puts the 0 back (as ``0 * sq``: a NaN norm stays NaN, so that a
    NaN point is never taken for a zero vector).
    """
    sq = xp.sum(v * v, axis=-1)
    pos = sq > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, sq, xp.ones_like(sq))), 0.0 * sq)


def _safe_divide(xp, num, den):
    """``num / den`` where ``den > 0``, else 0 (finite derivatives everywhere); a NaN in
    ``num`` or ``den`` gives NaN (``0 * num * den`` in the else-branch)."""
    pos = den > 0
    return xp.where(pos, num / xp.where(pos, den, xp.ones_like(den)), 0.0 * (num * den))


def _cosine_parts(x, y, ridge):
    """``(xp, nx, ny, u, v, p, c)`` of :class:`Cosine`: norms ``nx (..., n)``,
    ``ny (..., m)``, unit vectors ``u = x/|x|``, ``v = y/|y|`` (0 for a zero vector),
    ``p = |x||y| (..., n, m)`` and the cost ``c (..., n, m)``.

    ``c = (p - <x, y> + ridge) / (p + ridge)`` with ``p - <x, y> = p |u - v|² / 2``: the
    half squared distance of the unit vectors is formed with one matrix product on ``u``
    and ``v`` moved by a common shift (a constant for autodiff, :func:`common_shift`), so
    nearly parallel vectors (``c ≈ θ²/2`` at angle ``θ``) keep their digits: the error is
    ``≈ θ·eps`` instead of the ``eps`` of ``1 - <x, y>/(|x||y|)``. Where ``p = 0`` (a zero
    vector) the numerator is ``p - <x, y>`` itself (exact there, and its derivative is the
    ridged formula's ``-y/ridge``)."""
    xp = _xp.namespace(x, y)
    nx = _safe_norm(xp, x)
    ny = _safe_norm(xp, y)
    u = _safe_divide(xp, x, nx[..., None])
    v = _safe_divide(xp, y, ny[..., None])
    _, uc, vc = _centred(u, v, stop_gradient=True)
    half_sq = _sq_dist(uc, vc) / 2.0
    p = nx[..., :, None] * ny[..., None, :]
    pos = p > 0
    xy = x @ xp.matrix_transpose(y)
    num = xp.where(pos, p * half_sq, p - xy) + ridge
    den = p + ridge
    dpos = den > 0  # ridge = 0 and a zero vector: cost 1 (and derivative 0)
    c = xp.where(dpos, num / xp.where(dpos, den, xp.ones_like(den)), 1.0 + 0.0 * (num * den))
    return xp, nx, ny, u, v, p, c


class Cosine(CostFn):
    """``c(x, y) = 1 - <x, y> / (||x|| ||y|| + ridge)``, in ``[0, 2]``.

    A zero vector is at cost 1 from every point. The derivative is finite everywhere, on
    every backend, and equal to the manual rule: at a zero vector ``x_i`` the norm
    contributes nothing and ``∂c_ij/∂x_i = -y_j / ridge`` (the derivative of the ridged
    formula; large for the default ``ridge = 1e-8``). With ``ridge = 0`` a pair with a zero
    vector has cost 1 and derivative 0. A NaN point gives NaN costs.

    Nearly parallel vectors keep their digits: the cost is computed as
    ``(|x||y| |u - v|²/2 + ridge) / (|x||y| + ridge)`` with unit vectors ``u``, ``v``
    (one matrix product, no ``(n, m, d)`` intermediate), whose float32 error at angle
    ``θ`` is about ``θ · eps`` rather than the ``eps`` of ``1 - cos θ``.

    Example:
        >>> import numpy as np
        >>> Cosine()(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])).round(6)
        array([[1.]])
        >>> Cosine()(np.array([[0.0, 0.0]]), np.array([[0.0, 2.0]]))
        array([[1.]])
        >>> x = np.array([[100.0, 1.0]], np.float32)  # nearly parallel: 1 - cos θ ≈ θ²/2
        >>> c = Cosine()(x, np.array([[100.0, 1.1]], np.float32))
        >>> print(f"{float(c[0, 0]):.5e}")  # float64: 4.99890e-07; 1 - cos in float32: 4.8e-07
        4.99891e-07
    """

    name = "cosine"

    def __init__(self, ridge: float = 1e-8):
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        self.ridge = float(ridge)

    def pairwise(self, x, y):
        return _cosine_parts(x, y, self.ridge)[-1]

    def vjp(self, x, y, g):
        # ∂c_ij/∂x_i = |y_j| / (p_ij + ridge) · ((u_i - v_j) - c_ij u_i), and symmetrically
        # for y_j: the differences u_i - v_j are summed on centred unit vectors
        # (_weighted_differences), so nearly parallel vectors keep their digits; at a zero
        # vector x_i (u_i = 0, p = 0) this is -y_j / ridge.
        xp, nx, ny, u, v, p, c = _cosine_parts(x, y, self.ridge)
        xp = _xp.namespace(x, y, g)
        gd = _safe_divide(xp, g, p + self.ridge)
        wx = gd * ny[..., None, :]
        wy = gd * nx[..., :, None]
        dx, _ = _weighted_differences(xp, u, v, wx)
        _, dy = _weighted_differences(xp, u, v, wy)
        dx = dx - u * xp.sum(wx * c, axis=-1)[..., None]
        dy = dy - v * xp.sum(wy * c, axis=-2)[..., None]
        return dx, dy


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
