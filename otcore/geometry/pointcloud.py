"""Point clouds: ``C_ij = cost(x_i, y_j)``, materialised once or served online in blocks."""

from __future__ import annotations

from otcore._lib import checks as _checks
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.backends import adapter_for
from otcore.geometry.base import Geometry
from otcore.geometry.costs import common_shift, get_cost

__all__ = ["PointCloud"]


@_pytree.register
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

    _tree_data_attrs = ("x", "y")

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

    def data_arrays(self):
        """``(x, y)``, or ``(x,)`` when ``y`` is ``x`` (one array, one cotangent)."""
        return (self.x,) if self.y is self.x else (self.x, self.y)

    def _set_data_arrays(self, arrays):
        self.x = arrays[0]
        self.y = arrays[0] if len(arrays) == 1 else arrays[1]

    def cost_pullback(self, row_blocks):
        """``(x̄, ȳ)`` (or ``(x̄ + ȳ,)`` when ``y is x``) from row blocks of ``C̄`` through
        the cost function's derivative (the adapter's autodiff, or the cost's manual
        rule), block by block: online, ``C̄`` is never held."""
        xp = self.xp
        s = _xp.expand_dims_right(self.inv_scale_cost, 2)
        x, y = self._points()
        dxs, dy = [], None
        for start, blk in row_blocks:
            k = blk.shape[-2]
            dx_blk, dy_blk = self._adapter.cost_vjp(
                self.cost_fn, x[..., start : start + k, :], y, blk * s
            )
            dxs.append(dx_blk)
            dy = dy_blk if dy is None else dy + dy_blk
        dx = dxs[0] if len(dxs) == 1 else xp.concat(dxs, axis=-2)
        if self.y is self.x:
            return (_xp.unbroadcast(xp, dx + dy, self.x.shape),)
        return (_xp.unbroadcast(xp, dx, self.x.shape), _xp.unbroadcast(xp, dy, self.y.shape))

    def _points(self):
        """``(x, y)`` as the cost sees them: moved by one common shift (a constant for
        autodiff, the same for every block) when the cost asks for it
        (:attr:`~otcore.costs.CostFn.centre_points`, the squared Euclidean cost), so that
        float32 keeps its digits far from the origin (see
        :func:`otcore.costs.common_shift`); as given otherwise. Not cached: O(nd), and
        an online geometry is called inside traced loops (a cached tracer would escape)."""
        if not self.cost_fn.centre_points:
            return self.x, self.y
        shift = self._adapter.stop_gradient(common_shift(self.xp, self.x, self.y))
        return self.x - shift, self.y - shift

    def _pairwise(self, x, y):
        if self.cost_fn.centre_points:
            return self.cost_fn.pairwise_centred(x, y)
        return self.cost_fn.pairwise(x, y)

    def _raw_cost_matrix(self):
        return self._cached("raw", lambda: self._pairwise(*self._points()))

    def _raw_blocks(self, axis: int):
        if not self.is_online:
            yield self._raw_cost_matrix()
            return
        bs = self.batch_size
        x, y = self._points()
        if axis == 1:  # split rows
            n = x.shape[-2]
            for s in range(0, n, bs):
                yield self._pairwise(x[..., s : min(s + bs, n), :], y)
        else:  # split columns
            m = y.shape[-2]
            for s in range(0, m, bs):
                yield self._pairwise(x, y[..., s : min(s + bs, m), :])
