"""Grids: a product of 1-D axes with a separable cost, never materialised.

A grid of shape ``(n_1, ..., n_d)`` has ``N = n_1 ⋯ n_d`` points, flattened in C order
(the last axis varies fastest, as ``reshape`` does for an image). The cost between grid
points ``i = (i_1, ..., i_d)`` and ``j`` is the sum of per-axis costs,
``C_ij = Σ_k c_k(x_k[i_k], x_k[j_k])`` (squared Euclidean by default, which makes ``C``
the squared Euclidean distance between grid points). The Gibbs kernel is then a
Kronecker product ``K = K_1 ⊗ ⋯ ⊗ K_d`` and every operation the solvers need (kernel
products, log-sum-exp reductions, plan products) is applied one axis at a time: a
256×256 image costs ``O(N·256)`` per product and memory ``O(N + 256²)``, never an
``N × N`` matrix.
"""

from __future__ import annotations

import math

from otcore._lib import checks as _checks
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.backends import adapter_for
from otcore.geometry.base import Geometry
from otcore.geometry.costs import get_cost
from otcore.geometry.operators import GeometryOperators

__all__ = ["Grid"]


@_pytree.register
class Grid(Geometry):
    """A regular (or rectilinear) grid with a separable cost.

    Args:
        shape: grid shape ``(n_1, ..., n_d)``: axis ``k`` is ``linspace(0, 1, n_k)``.
            The arrays are made in the namespace, dtype and device of ``like`` or, without
            it, bound to the first arrays the grid is used with (e.g. the histograms of
            :func:`~otcore.barycenter`; NumPy float64 until then).
        axes: instead of ``shape``, the 1-D coordinate arrays of each axis (any array
            library; differentiable with JAX/PyTorch).
        cost: the per-axis cost: a name, :class:`~otcore.costs.CostFn` or callable as in
            :class:`~otcore.PointCloud`, or one per axis (a list). Must be non-negative.
        epsilon, relative_epsilon, scale_cost: as in :class:`~otcore.Geometry`; the
            default ε is ``0.05·std(C)`` over all pairs of grid points (computed exactly
            from the axes). ``scale_cost="median"`` is not available.
        like: an array whose namespace, dtype and device ``shape`` uses.

    Example:
        >>> import numpy as np, otcore as ot
        >>> grid = ot.Grid(shape=(3, 4), epsilon=0.1)
        >>> grid.shape, grid.grid_shape
        ((12, 12), (3, 4))
        >>> float(grid.cost_matrix[0, -1])  # corner to corner: 1² + 1²
        2.0
    """

    is_online = False
    _tree_data_attrs = ("axes",)

    def __init__(
        self,
        shape=None,
        axes=None,
        cost="sqeuclidean",
        epsilon=None,
        relative_epsilon=None,
        scale_cost=1.0,
        like=None,
    ):
        if (shape is None) == (axes is None):
            raise ValueError("give exactly one of shape (a tuple of ints) or axes (1-D arrays)")
        self._from_shape = axes is None
        if axes is None:
            if isinstance(shape, int) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in shape
            ):
                raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
            shape = tuple(_checks.check_positive_int("shape entries", s) for s in shape)
            if like is None and epsilon is not None and not isinstance(epsilon, (int, float)):
                like = epsilon  # an array ε fixes the framework
            self._bound = like is not None
            axes = _linspace_axes(shape, like)
        else:
            axes = list(axes)
            if not axes:
                raise ValueError("axes must hold at least one 1-D array")
            self._bound = True
        self._adapter = adapter_for(*axes, names=[f"axes[{i}]" for i in range(len(axes))])
        xp = self.xp
        for i, ax in enumerate(axes):
            _checks.check_float_array(xp, f"axes[{i}]", ax, min_ndim=1)
            if ax.ndim != 1:
                raise ValueError(f"axes[{i}] must be 1-D, got shape {tuple(ax.shape)}")
            _checks.check_finite(self._adapter, f"axes[{i}]", ax)
        _checks.check_same_dtype([f"axes[{i}]" for i in range(len(axes))], axes)
        _checks.check_same_device([f"axes[{i}]" for i in range(len(axes))], axes)
        self.axes = tuple(axes)
        costs = list(cost) if isinstance(cost, (list, tuple)) else [cost] * len(axes)
        if len(costs) != len(axes):
            raise ValueError(
                f"cost must be one cost or one per axis ({len(axes)}), got {len(costs)}"
            )
        self.cost_fns = tuple(get_cost(c) for c in costs)
        self._cost_spec = cost
        self._raw = None
        if scale_cost == "median":
            raise ValueError("scale_cost='median' is not available for a Grid; pass a float")
        self._init_common(epsilon, relative_epsilon, scale_cost, reference=axes[0])
        for c in self._axis_costs_raw():
            if _checks.fails(self._adapter, c >= 0):
                raise ValueError("the per-axis costs of a Grid must be non-negative")

    # -- shape and leaves ---------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``."""
        return tuple(int(ax.shape[0]) for ax in self.axes)

    @property
    def shape(self):
        n = math.prod(self.grid_shape)
        return (n, n)

    @property
    def batch_shape(self):
        return ()

    @property
    def dtype(self):
        return self.axes[0].dtype

    @property
    def device(self):
        return _xp.device_of(self.axes[0])

    def data_arrays(self):
        """The 1-D axes ``(x_1, ..., x_d)``."""
        return self.axes

    def _set_data_arrays(self, arrays):
        self.axes = tuple(arrays)

    def cost_pullback(self, row_blocks):
        """Axis cotangents from ``C̄ (N, N)``: ``C`` is a sum of per-axis costs, so axis
        ``k`` receives ``C̄`` summed over the other axes' indices, ``C̄_k (n_k, n_k)``,
        pulled back through its cost. ``C̄`` is materialised (the manual rules' path)."""
        xp = self.xp
        blocks = [blk for _, blk in row_blocks]
        c_bar = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=-2)
        gshape = self.grid_shape
        d = len(gshape)
        full = xp.reshape(c_bar * _xp.expand_dims_right(self.inv_scale_cost, 2), gshape + gshape)
        grads = []
        for k, (fn, ax) in enumerate(zip(self.cost_fns, self.axes)):
            others = tuple(i for i in range(2 * d) if i not in (k, d + k))
            c_k = xp.sum(full, axis=others) if others else full
            dx, dy = self._adapter.cost_vjp(fn, ax[:, None], ax[:, None], c_k)
            grads.append(xp.reshape(dx + dy, (gshape[k],)))
        return tuple(grads)

    def bind_to(self, array):
        """This grid, with its axes in ``array``'s namespace, dtype and device when it was
        made from a shape without ``like`` (otherwise unchanged)."""
        if self._bound or not self._from_shape:
            return self
        if _xp.namespace(array) is self.xp and array.dtype == self.dtype:
            return self
        return Grid(
            shape=self.grid_shape,
            cost=self._cost_spec,
            epsilon=self._epsilon_arg,
            relative_epsilon=self.relative_epsilon,
            scale_cost=self.scale_cost,
            like=array,
        )

    # -- costs ----------------------------------------------------------------------
    def _axis_costs_raw(self):
        """Per-axis cost matrices ``(n_k, n_k)`` (unscaled)."""
        return [fn.pairwise(ax[:, None], ax[:, None]) for fn, ax in zip(self.cost_fns, self.axes)]

    def _raw_cost_matrix(self):
        def build():
            xp = self.xp
            total = None
            d = len(self.axes)
            for k, c in enumerate(self._axis_costs_raw()):
                # C_k[i_k, j_k] broadcast over the other axes of i and j
                shape_i = [1] * d
                shape_i[k] = c.shape[0]
                full = xp.reshape(c, tuple(shape_i) + tuple(shape_i))
                total = full if total is None else total + full
            total = xp.broadcast_to(total, self.grid_shape + self.grid_shape)
            n = self.shape[0]
            return xp.reshape(total, (n, n))

        return self._cached("raw", build)

    def _raw_statistic(self, name: str):
        """Statistics of ``C`` over all ``N²`` pairs, from the axes: the coordinates of
        a uniformly drawn pair are independent across axes, so means and variances add."""
        xp = self.xp
        if name == "median":
            raise ValueError("the median cost of a Grid is not available; pass a float")
        costs = self._axis_costs_raw()
        if name == "max":
            return sum(xp.max(c) for c in costs)
        means = [xp.mean(c) for c in costs]
        if name == "mean":
            return sum(means)
        var = sum(xp.mean(c * c) - mu * mu for c, mu in zip(costs, means))
        return xp.sqrt(xp.maximum(var, xp.zeros_like(var)))

    def operators(self, eps=None, kernel: bool = False):
        return GridOperators(self, self.epsilon if eps is None else eps, kernel=kernel)

    def __repr__(self):
        return f"Grid(grid_shape={self.grid_shape})"


def _linspace_axes(shape, like):
    """``linspace(0, 1, n)`` per axis, like ``like`` (NumPy float64 without it)."""
    if like is None:
        import numpy as np

        like = np.zeros(1)
    xp = _xp.namespace(like, names=["like"])
    dtype = like.dtype if _xp.is_floating(xp, like) else None
    dev = _xp.device_of(like)
    return [xp.linspace(0.0, 1.0, n, dtype=dtype, device=dev) for n in shape]


class GridOperators(GeometryOperators):
    """The solvers' reductions over ``C/ε`` applied one grid axis at a time.

    Inputs are flat ``(..., N)`` vectors (C order); ``axis`` follows
    :class:`otcore.geometry.operators.GeometryOperators`: ``axis=1`` reduces over columns ``j`` (output
    indexed by rows ``i``), ``axis=0`` over rows.
    """

    def __init__(self, geom: Grid, eps, kernel: bool = False):
        self.geom = geom
        self.eps = eps
        self.xp = geom.xp
        self._native_lse = geom.adapter.logsumexp
        s = _xp.expand_dims_right(geom.inv_scale_cost, 2)
        e = _xp.expand_dims_right(eps, 2)
        self._ce = [c * s / e for c in geom._axis_costs_raw()]  # Ĉ_k (n_k, n_k)
        self._k = [self.xp.exp(-c) for c in self._ce] if kernel else None

    def _lse(self, x, axis: int):
        """``log Σ exp(x)`` over ``axis``; a slice of only ``-inf`` gives ``-inf`` with
        zero (not NaN) derivatives. Per-axis reductions meet such slices often: the
        positive or negative part of a one-signed vector in :meth:`plan_apply`, zero
        weights, the zero diagonal of ``log Ĉ_k`` in :meth:`plan_dot_cost`; the native
        log-sum-exp differentiates ``log 0`` there (NaN under ``jax.hessian``)."""
        xp = self.xp
        empty = xp.max(x, axis=axis, keepdims=True) == -math.inf
        out = self._native_lse(xp.where(empty, xp.zeros_like(x), x), axis=axis)
        return xp.where(xp.squeeze(empty, axis=axis), -math.inf, out)

    # -- per-axis application -------------------------------------------------------
    def _along_axes(self, u, apply_one):
        """Apply ``apply_one(v, k)`` (acting on the last axis of ``v``) on every grid axis."""
        xp = self.xp
        gshape = self.geom.grid_shape
        d = len(gshape)
        lead = tuple(u.shape[:-1])
        nl = len(lead)
        v = xp.reshape(u, lead + gshape)
        for k in range(d):
            ax = nl + k
            v = xp.moveaxis(v, ax, -1)
            v = apply_one(v, k)
            v = xp.moveaxis(v, -1, ax)
        return xp.reshape(v, lead + (math.prod(gshape),))

    def apply_lse(self, u, axis: int, ratio=None):
        """``LSE_k(u_k − ratio·Ĉ)`` over the reduced ``axis`` (see :meth:`GeometryOperators.apply_lse`)."""

        def one(v, k):
            ce = self._ce[k] if ratio is None else self._ce[k] * ratio
            mat = ce if axis == 1 else self.xp.permute_dims(ce, (1, 0))
            # out[..., i] = LSE_j(v[..., j] − mat[i, j])
            return self._lse(v[..., None, :] - mat, axis=-1)

        return self._along_axes(u, one)

    def apply_kernel(self, s, axis: int):
        """``K s`` (``axis=1``) or ``Kᵀ s`` (``axis=0``), ``K = ⊗_k exp(−Ĉ_k)``."""
        xp = self.xp
        ks = self._k if self._k is not None else [xp.exp(-c) for c in self._ce]

        def one(v, k):
            mat = ks[k]
            # out[..., i] = Σ_j mat[i, j] v[..., j]  (axis=1);  Σ_j mat[j, i] v[..., j]
            return xp.matmul(v, xp.permute_dims(mat, (1, 0)) if axis == 1 else mat)

        return self._along_axes(s, one)

    def plan_apply(self, fe, ge, vec, axis: int):
        """``P vec`` (``axis=1``) or ``Pᵀ vec`` (``axis=0``) with
        ``P = exp(fe ⊕ ge − Ĉ)``, in the log domain (positive and negative parts)."""
        xp = self.xp
        inner, outer = (ge, fe) if axis == 1 else (fe, ge)
        pos = _xp.safe_log(xp, xp.where(vec > 0, vec, xp.zeros_like(vec)))
        neg = _xp.safe_log(xp, xp.where(vec < 0, -vec, xp.zeros_like(vec)))
        lp = self.apply_lse(inner + pos, axis)
        ln = self.apply_lse(inner + neg, axis)
        return xp.exp(outer + lp) - xp.exp(outer + ln)

    def plan_dot_cost(self, fe, ge):
        """``Σ_ij P_ij C_ij = Σ_k Σ_ij P_ij C_k``: axis ``k`` carries ``C_k·K_k``."""
        xp = self.xp
        total = 0.0
        for k in range(len(self._ce)):
            log_ck = _xp.safe_log(xp, self._ce[k])  # Ĉ_k ≥ 0

            def one(v, j, k=k, log_ck=log_ck):
                mat = self._ce[j] - (log_ck if j == k else 0.0)
                return self._lse(v[..., None, :] - mat, axis=-1)

            t = self._along_axes(ge, one)
            total = total + xp.sum(xp.exp(fe + t), axis=-1)
        return total * self.eps

    def plan(self, fe, ge):
        """The materialised plan ``(..., N, N)`` (small grids only)."""
        return next(self.plan_blocks(fe, ge, 1))[0]

    def plan_blocks(self, fe, ge, axis: int):
        """One pair ``(P, Ĉ)``, materialised (``N × N``: for the manual rules on small grids)."""
        ce = self.geom.cost_matrix / _xp.expand_dims_right(self.eps, 2)
        yield self.xp.exp(fe[..., :, None] + ge[..., None, :] - ce), ce
