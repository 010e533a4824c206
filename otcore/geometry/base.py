"""Geometries: where the cost matrix comes from and how the solvers touch it.

Conventions (see ``docs/conventions.md``): the cost matrix ``C`` has shape ``(..., n, m)``
(leading batch axes allowed); rows ``i`` index the first measure (weights ``a``), columns
``j`` the second (weights ``b``); the plan is ``P_ij = exp((f_i + g_j - C_ij) / ε)``.
``scale_cost`` divides the cost before anything else, and ε is in the units of the scaled
cost.

The solvers never index ``C`` directly: they ask for log-sum-exp reductions, kernel
products and plan products. :class:`PointCloud` with ``batch_size`` serves these in blocks
of ``batch_size`` rows (or columns) so that the ``n x m`` matrix is never held.
"""

from __future__ import annotations

import math
import numbers

from otcore._lib import checks as _checks
from otcore._lib import xp as _xp
from otcore.backends import adapter_for
from otcore.geometry.costs import get_cost
from otcore.geometry.epsilon import DEFAULT_EPSILON_SCALE, validate_epsilon_args

__all__ = ["Geometry", "PointCloud"]

_SCALE_NAMES = ("mean", "max_cost", "median")


class Geometry:
    """A cost matrix with its entropic regularisation.

    Args:
        cost_matrix: array ``(..., n, m)``, real floating, finite.
        epsilon: ε (see :mod:`otcore.epsilon`): ``None`` for ``0.05 * std(C)``, a positive
            float, or a 0-d array (differentiable).
        relative_epsilon: ``None``, ``"std"`` or ``"mean"``: ε is then
            ``(epsilon or 0.05) * statistic(C)``.
        scale_cost: the cost is divided by this: a positive float, ``"mean"``,
            ``"max_cost"`` or ``"median"`` (statistics of the unscaled cost).

    Example:
        >>> import numpy as np
        >>> geom = Geometry(np.array([[0.0, 1.0], [1.0, 0.0]]), epsilon=0.1)
        >>> geom.shape, geom.epsilon
        ((2, 2), 0.1)
    """

    is_online = False

    def __init__(self, cost_matrix, epsilon=None, relative_epsilon=None, scale_cost=1.0):
        self._adapter = adapter_for(cost_matrix, names=["cost_matrix"])
        _checks.check_float_array(self.xp, "cost_matrix", cost_matrix, min_ndim=2)
        _checks.check_finite(self._adapter, "cost_matrix", cost_matrix)
        self._raw = cost_matrix
        self._init_common(epsilon, relative_epsilon, scale_cost, reference=cost_matrix)

    # -- construction helpers ---------------------------------------------------
    def _init_common(self, epsilon, relative_epsilon, scale_cost, reference):
        self._epsilon_arg, self.relative_epsilon = validate_epsilon_args(epsilon, relative_epsilon)
        if not isinstance(self._epsilon_arg, (float, type(None))):
            eps = self._epsilon_arg
            _xp.namespace(reference, eps, names=["geometry arrays", "epsilon"])
            _checks.check_float_array(self.xp, "epsilon", eps, min_ndim=0)
            if eps.ndim and tuple(eps.shape) != tuple(self.batch_shape):
                raise ValueError(
                    f"an array epsilon must be 0-d or have the geometry's batch shape "
                    f"{tuple(self.batch_shape)}, got shape {tuple(eps.shape)}"
                )
            _checks.check_same_device(["geometry arrays", "epsilon"], [reference, eps])
            if _checks.fails(self._adapter, self.xp.isfinite(eps) & (eps > 0)):
                raise ValueError("epsilon must be positive and finite")
        if isinstance(scale_cost, str):
            if scale_cost not in _SCALE_NAMES:
                raise ValueError(
                    f"scale_cost must be a positive float or one of {_SCALE_NAMES}, got {scale_cost!r}"
                )
        elif isinstance(scale_cost, bool) or not isinstance(scale_cost, numbers.Real):
            raise TypeError(f"scale_cost must be a positive float or a string, got {scale_cost!r}")
        elif not (0.0 < float(scale_cost) < math.inf):
            raise ValueError(f"scale_cost must be positive and finite, got {scale_cost!r}")
        self.scale_cost = scale_cost
        self._shared = None  # (ε, inv_scale) imposed by another geometry, see _sharing
        self._cache = {}

    def _cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # -- basic properties -------------------------------------------------------
    @property
    def adapter(self):
        """The backend adapter of this geometry's arrays."""
        return self._adapter

    @property
    def xp(self):
        """The array namespace of this geometry's arrays."""
        return self._adapter.xp

    @property
    def dtype(self):
        return self._raw.dtype

    @property
    def device(self):
        return _xp.device_of(self._raw)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``: number of rows (first measure) and columns (second measure)."""
        return tuple(self._raw.shape[-2:])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes of the cost matrix (``()`` for a single problem)."""
        return tuple(self._raw.shape[:-2])

    def _arrays(self):
        return (self._raw,)

    def _data_leaves(self):
        """The arrays the cost is computed from (``(C,)`` here)."""
        return (self._raw,)

    def _set_data_leaves(self, leaves):
        (self._raw,) = leaves

    def _leaves(self):
        """Differentiable inputs: the cost data, then ε if it was given as an array."""
        eps = self._epsilon_arg
        return self._data_leaves() + (() if eps is None or isinstance(eps, float) else (eps,))

    def _with_leaves(self, leaves):
        """A copy with the arrays of :meth:`_leaves` replaced; statistics stay constants."""
        geom = type(self).__new__(type(self))
        geom.__dict__.update(self.__dict__)
        k = len(self._data_leaves())
        geom._set_data_leaves(tuple(leaves[:k]))
        if len(leaves) > k:
            geom._epsilon_arg = leaves[k]
        geom._cache = {
            "inv_scale": self.inv_scale_cost,
            **({"eps_stat": self._eps_stat} if self._needs_eps_stat else {}),
        }
        return geom

    def _sharing(self, epsilon, inv_scale_cost):
        """A copy using the given ε and cost scale (e.g. those of a divergence's x-y problem)."""
        geom = self._with_leaves(self._data_leaves())
        geom._epsilon_arg, geom.relative_epsilon = None, None
        geom._shared = (epsilon, inv_scale_cost)
        geom._cache = {}
        return geom

    def _stop_gradient_copy(self):
        """A copy whose arrays are constants for autodiff (same ε and scale)."""
        return self._with_leaves(tuple(self._adapter.stop_gradient(v) for v in self._leaves()))

    # -- raw cost access (overridden by PointCloud) ---------------------------------
    def _raw_blocks(self, axis: int):
        """Yield blocks of the unscaled cost covering the kept axis in order.

        ``axis`` is the axis that each block holds whole: ``axis=0`` blocks split the
        columns (each block has all ``n`` rows), ``axis=1`` blocks split the rows.
        """
        yield self._raw

    def _raw_cost_matrix(self):
        return self._raw

    # -- scaling and ε --------------------------------------------------------------
    def _raw_statistic(self, name: str):
        """``mean``/``std``/``max``/``median`` of the unscaled cost over its last two axes."""
        xp = self.xp
        n, m = self.shape
        if name == "median":
            if self.is_online:
                raise ValueError("scale_cost='median' is not available in online mode (batch_size)")
            flat = xp.reshape(self._raw_cost_matrix(), self.batch_shape + (n * m,))
            s = xp.sort(flat, axis=-1)
            k = (n * m) // 2
            return s[..., k] if (n * m) % 2 else (s[..., k - 1] + s[..., k]) / 2.0
        if name == "max":
            parts = [xp.max(blk, axis=(-2, -1)) for blk in self._raw_blocks(1)]
            out = parts[0]
            for p in parts[1:]:
                out = xp.maximum(out, p)
            return out
        total = sum(xp.sum(blk, axis=(-2, -1)) for blk in self._raw_blocks(1))
        mean = total / (n * m)
        if name == "mean":
            return mean
        if not self.is_online:
            return xp.std(self._raw_cost_matrix(), axis=(-2, -1))
        sq = sum(xp.sum(blk * blk, axis=(-2, -1)) for blk in self._raw_blocks(1))
        var = sq / (n * m) - mean * mean
        return xp.sqrt(xp.maximum(var, xp.zeros_like(var)))

    @property
    def inv_scale_cost(self):
        """``1 / scale``: the factor applied to the raw cost (float, or array for statistics).

        A statistic (``"mean"``, ``"max_cost"``, ``"median"``) is computed without
        gradient, like the default ε: derivatives treat the scale as a constant on every
        backend.
        """

        def compute():
            if self._shared is not None:
                return self._shared[1]
            if not isinstance(self.scale_cost, str):
                return 1.0 / float(self.scale_cost)
            name = {"mean": "mean", "max_cost": "max", "median": "median"}[self.scale_cost]
            stat = self._adapter.stop_gradient(self._raw_statistic(name))
            if _checks.fails(self._adapter, stat > 0):
                raise ValueError(
                    f"scale_cost={self.scale_cost!r} is zero for this cost; pass a float"
                )
            return 1.0 / stat

        return self._cached("inv_scale", compute)

    @property
    def cost_matrix(self):
        """The scaled cost matrix ``(..., n, m)`` (materialised, also in online mode)."""
        return self._cached(
            "cost", lambda: self._raw_cost_matrix() * _xp.expand_dims_right(self.inv_scale_cost, 2)
        )

    def _cost_blocks(self, axis: int):
        if not self.is_online:
            yield self.cost_matrix
            return
        s = _xp.expand_dims_right(self.inv_scale_cost, 2)
        for blk in self._raw_blocks(axis):
            yield blk * s

    def _cost_statistic(self, name: str):
        return self._raw_statistic(name) * self.inv_scale_cost

    @property
    def epsilon(self):
        """The resolved ε: a float, or an array of shape ``batch_shape`` (or 0-d)."""

        def compute():
            if self._shared is not None:
                return self._shared[0]
            eps = self._epsilon_arg
            if not self._needs_eps_stat:
                return eps
            value = (DEFAULT_EPSILON_SCALE if eps is None else eps) * self._eps_stat
            if _checks.fails(self._adapter, value > 0):
                raise ValueError(
                    f"the {self.relative_epsilon or 'std'} of the cost matrix is 0, so the "
                    "relative epsilon is 0; pass an absolute epsilon"
                )
            return value

        return self._cached("epsilon", compute)

    @property
    def _needs_eps_stat(self) -> bool:
        if self._shared is not None:
            return False
        return self._epsilon_arg is None or self.relative_epsilon is not None

    @property
    def _eps_stat(self):
        """The cost statistic that a relative or default ε multiplies (no gradient)."""
        name = self.relative_epsilon or "std"
        return self._cached(
            "eps_stat", lambda: self._adapter.stop_gradient(self._cost_statistic(name))
        )

    # -- operators used by the solvers ---------------------------------------------
    def operators(self, eps=None, kernel: bool = False):
        """Matrix-free operators for regularisation ``eps`` (default: :attr:`epsilon`);
        ``kernel=True`` forms ``exp(-C/ε)`` once for kernel-mode products (dense only)."""
        return _Operators(self, self.epsilon if eps is None else eps, kernel=kernel)

    def kernel_matrix(self, eps=None):
        """``K = exp(-C / ε)`` (materialised)."""
        eps = self.epsilon if eps is None else eps
        return self.xp.exp(-self.cost_matrix / _xp.expand_dims_right(eps, 2))

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, batch_shape={self.batch_shape})"


class _Operators:
    """Reductions over ``C / ε`` for one ε (dense: ``C / ε`` computed once).

    All inputs are dimensionless (potentials divided by ε). ``axis`` is the axis reduced:
    ``axis=0`` sums over rows ``i`` (inputs of length ``n``, outputs of length ``m``);
    ``axis=1`` sums over columns ``j`` (inputs of length ``m``, outputs of length ``n``).
    """

    def __init__(self, geom: Geometry, eps, kernel: bool = False):
        self.geom = geom
        self.eps = eps
        self.xp = geom.xp
        self._lse = geom.adapter.logsumexp
        if not geom.is_online:
            self._dense = geom.cost_matrix / _xp.expand_dims_right(eps, 2)
            # formed here, outside any loop: a lazily cached array would leak a tracer
            self._k = self.xp.exp(-self._dense) if kernel else None

    def _blocks(self, axis):
        """Blocks of ``C / ε`` that hold the reduced ``axis`` whole."""
        if not self.geom.is_online:
            yield self._dense
            return
        e2 = _xp.expand_dims_right(self.eps, 2)
        for blk in self.geom._cost_blocks(axis):
            yield blk / e2

    def _concat(self, parts):
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=-1)

    # the temporaries of one reduction hold at most this many entries: many vectors
    # against one matrix (a barycenter's k inputs) go through in slices, which keeps
    # them in reused memory instead of one fresh (k, n, m) array per reduction
    _MAX_TEMPORARY = 1 << 22

    def lse(self, u, axis: int, ratio=None):
        """``LSE_k(u_k - ratio * C/ε)`` over the reduced ``axis`` (``ratio`` default 1)."""
        n, m = self.geom.shape
        if u.ndim >= 2 and u.shape[0] > 1 and self.geom.batch_shape == ():
            rows = math.prod(u.shape[1:-1]) * n * m
            step = max(1, self._MAX_TEMPORARY // max(rows, 1))
            if step < u.shape[0]:
                parts = [
                    self.lse(u[s : s + step, ...], axis, ratio) for s in range(0, u.shape[0], step)
                ]
                return self.xp.concat(parts, axis=0)
        parts = []
        for ce in self._blocks(axis):
            if ratio is not None:
                ce = ce * ratio
            if axis == 0:
                parts.append(self._lse(u[..., :, None] - ce, axis=-2))
            else:
                parts.append(self._lse(u[..., None, :] - ce, axis=-1))
        return self._concat(parts)

    def kernel(self, s, axis: int):
        """``K^T s`` (``axis=0``) or ``K s`` (``axis=1``) with ``K = exp(-C/ε)``."""
        xp = self.xp
        if not self.geom.is_online:
            k = self._k if self._k is not None else xp.exp(-self._dense)
            return self._matvec(k, s, axis)
        return self._concat([self._matvec(xp.exp(-ce), s, axis) for ce in self._blocks(axis)])

    def _matvec(self, mat, vec, axis):
        """``matᵀ vec`` (``axis=0``) or ``mat vec`` (``axis=1``) over leading axes.

        One matrix (no batch axes): a single matrix product with the stacked vectors
        (``vec @ K``), not one product per vector against a broadcast copy of ``K``.
        """
        xp = self.xp
        if mat.ndim == 2:
            return xp.matmul(vec, mat if axis == 0 else xp.permute_dims(mat, (1, 0)))
        if axis == 0:
            return xp.matmul(vec[..., None, :], mat)[..., 0, :]
        return xp.matmul(mat, vec[..., :, None])[..., 0]

    def _plan_blocks(self, fe, ge, axis):
        """Pairs ``(P block, C/ε block)`` holding the reduced ``axis`` whole.

        ``fe = f/ε`` and ``ge = g/ε``; ``axis=0`` blocks split the columns, ``axis=1``
        blocks split the rows.
        """
        xp = self.xp
        start = 0
        for ce in self._blocks(axis):
            if axis == 0:
                k = ce.shape[-1]
                g_blk = ge[..., start : start + k]
                yield xp.exp(fe[..., :, None] + g_blk[..., None, :] - ce), ce
            else:
                k = ce.shape[-2]
                f_blk = fe[..., start : start + k]
                yield xp.exp(f_blk[..., :, None] + ge[..., None, :] - ce), ce
            start += k

    def plan_apply(self, fe, ge, vec, axis: int):
        """``P^T vec`` (``axis=0``, vec ``(..., n)``) or ``P vec`` (``axis=1``, vec ``(..., m)``)."""
        return self._concat(
            [self._matvec(p, vec, axis) for p, _ in self._plan_blocks(fe, ge, axis)]
        )

    def plan_operator(self, fe, ge):
        """``(v -> P v, u -> Pᵀ u)``; a dense geometry forms ``P`` once, online ones never."""
        if not self.geom.is_online:
            p = self.plan(fe, ge)
            return (lambda v: self._matvec(p, v, 1)), (lambda u: self._matvec(p, u, 0))
        return (lambda v: self.plan_apply(fe, ge, v, 1)), (lambda u: self.plan_apply(fe, ge, u, 0))

    def plan_dot_cost(self, fe, ge):
        """``sum_ij P_ij C_ij`` without holding ``P`` (in online mode)."""
        xp = self.xp
        total = 0.0
        for p, ce in self._plan_blocks(fe, ge, 1):
            total = total + xp.sum(p * ce, axis=(-2, -1))
        return total * self.eps

    def plan(self, fe, ge):
        """The materialised plan ``P (..., n, m)``."""
        parts = [p for p, _ in self._plan_blocks(fe, ge, 1)]
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=-2)


class PointCloud(Geometry):
    """Two point clouds and a ground cost; ``C_ij = cost(x_i, y_j)``.

    Args:
        x: points ``(..., n, d)``.
        y: points ``(..., m, d)``; ``None`` means ``x``.
        cost: ``"sqeuclidean"`` (default), ``"euclidean"``, ``"cosine"``, a
            :class:`otcore.costs.CostFn` (e.g. ``PNorm(p)``) or an array-API callable
            (see :mod:`otcore.costs`).
        epsilon, relative_epsilon, scale_cost: as in :class:`Geometry`.
        batch_size: ``None`` (materialise ``C`` once) or a block size: online mode, where
            costs are recomputed in blocks of ``batch_size`` rows or columns and the
            ``n x m`` matrix is never held. Results equal the dense ones.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).uniform(size=(5, 2))
        >>> geom = PointCloud(x, epsilon=0.1, batch_size=2)
        >>> geom.shape, geom.is_online
        ((5, 5), True)
    """

    def __init__(
        self,
        x,
        y=None,
        cost="sqeuclidean",
        epsilon=None,
        relative_epsilon=None,
        scale_cost=1.0,
        batch_size=None,
    ):
        y_given = y is not None
        y = x if y is None else y
        self._adapter = adapter_for(x, y, names=["x", "y"])
        xp = self.xp
        _checks.check_float_array(xp, "x", x, min_ndim=2)
        _checks.check_float_array(xp, "y", y, min_ndim=2)
        if x.shape[-1] != y.shape[-1]:
            raise ValueError(
                f"x and y must have the same number of features (last axis), got "
                f"x.shape={x.shape} and y.shape={y.shape}"
            )
        try:
            _ = _xp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
        except ValueError:
            raise ValueError(
                f"the batch axes of x {x.shape[:-2]} and y {y.shape[:-2]} do not broadcast"
            ) from None
        _checks.check_same_dtype(["x", "y"], [x, y])
        _checks.check_same_device(["x", "y"], [x, y])
        _checks.check_finite(self._adapter, "x", x)
        if y_given:
            _checks.check_finite(self._adapter, "y", y)
        self.x, self.y = x, y
        self.cost_fn = get_cost(cost)
        self.batch_size = (
            None if batch_size is None else _checks.check_positive_int("batch_size", batch_size)
        )
        self._raw = None
        self._init_common(epsilon, relative_epsilon, scale_cost, reference=x)

    @property
    def is_online(self) -> bool:
        return self.batch_size is not None

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def device(self):
        return _xp.device_of(self.x)

    @property
    def shape(self):
        return (self.x.shape[-2], self.y.shape[-2])

    @property
    def batch_shape(self):
        return _xp.broadcast_shapes(self.x.shape[:-2], self.y.shape[:-2])

    def _arrays(self):
        return (self.x, self.y)

    def _data_leaves(self):
        return (self.x,) if self.y is self.x else (self.x, self.y)

    def _set_data_leaves(self, leaves):
        self.x = leaves[0]
        self.y = leaves[0] if len(leaves) == 1 else leaves[1]

    def _raw_cost_matrix(self):
        return self._cached("raw", lambda: self.cost_fn.pairwise(self.x, self.y))

    def _raw_blocks(self, axis: int):
        if not self.is_online:
            yield self._raw_cost_matrix()
            return
        bs = self.batch_size
        if axis == 1:  # split rows
            n = self.x.shape[-2]
            for s in range(0, n, bs):
                yield self.cost_fn.pairwise(self.x[..., s : min(s + bs, n), :], self.y)
        else:  # split columns
            m = self.y.shape[-2]
            for s in range(0, m, bs):
                yield self.cost_fn.pairwise(self.x, self.y[..., s : min(s + bs, m), :])
