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
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.backends import adapter_for
from otcore.geometry.epsilon import DEFAULT_EPSILON_SCALE, validate_epsilon_args
from otcore.geometry.operators import DenseOperators

__all__ = ["Geometry"]

_SCALE_NAMES = ("mean", "max_cost", "median")


@_pytree.register
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
        if key in self._cache:
            return self._cache[key]
        value = compute()
        # a value computed inside a trace from concrete arrays (a jitted function closing
        # over this geometry) is a tracer: caching it would leak it out of the trace
        ad = self._adapter
        if not (
            all(ad.is_concrete(v) for v in self.data_arrays())
            and hasattr(value, "shape")
            and not ad.is_concrete(value)
        ):
            self._cache[key] = value
        return value

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

    # -- the geometry protocol: arrays, rebuilding, sharing, binding, pull-back ------
    def data_arrays(self) -> tuple:
        """The arrays the cost is computed from: ``(C,)`` here, ``(x, y)`` (or ``(x,)``
        when ``y is x``) for a :class:`PointCloud`, the 1-D axes for a :class:`Grid`."""
        return (self._raw,)

    def _set_data_arrays(self, arrays):
        (self._raw,) = arrays

    @property
    def has_epsilon_array(self) -> bool:
        """True when ε was given as an array: it is then differentiable, the last entry of
        :meth:`differentiable_arrays`."""
        eps = self._epsilon_arg
        return not (eps is None or isinstance(eps, float))

    def differentiable_arrays(self) -> tuple:
        """The arrays that carry derivatives: :meth:`data_arrays`, then ε if it was given
        as an array. Cost statistics (default or relative ε, ``scale_cost`` by name) are
        constants (computed without gradient)."""
        return self.data_arrays() + ((self._epsilon_arg,) if self.has_epsilon_array else ())

    def with_arrays(self, arrays):
        """A copy with the arrays of :meth:`differentiable_arrays` replaced (same order).

        The cost statistics of ``self`` (resolved ε factor and cost scale) are kept as
        constants, so the copy is the same function of the new arrays as ``self`` is of its
        own: this is how derivatives are attached (the arrays become tracers or tensors
        that require grad) without differentiating through a statistic.
        """
        geom = type(self).__new__(type(self))
        geom.__dict__.update(self.__dict__)
        k = len(self.data_arrays())
        geom._set_data_arrays(tuple(arrays[:k]))
        if len(arrays) > k:
            geom._epsilon_arg = arrays[k]
        geom._cache = {
            "inv_scale": self.inv_scale_cost,
            **({"eps_stat": self._eps_stat} if self._needs_eps_stat else {}),
        }
        return geom

    def sharing(self, epsilon, inv_scale_cost):
        """A copy that uses the given ε and cost scale ``1/scale`` instead of its own (the
        self-transport problems of a divergence share those of the ``x``–``y`` problem)."""
        geom = self.with_arrays(self.data_arrays())
        geom._epsilon_arg, geom.relative_epsilon = None, None
        geom._shared = (epsilon, inv_scale_cost)
        geom._cache = {}
        return geom

    def stop_gradient(self):
        """A copy whose arrays are constants for autodiff (same ε and scale)."""
        sg = self._adapter.stop_gradient
        return self.with_arrays(tuple(sg(v) for v in self.differentiable_arrays()))

    def bind_to(self, array):
        """This geometry in ``array``'s framework, dtype and device. A geometry holds its
        own arrays, so this is ``self``; a :class:`Grid` made from a shape alone is
        rebuilt on the first arrays it meets."""
        return self

    def cost_pullback(self, row_blocks):
        """Cotangents of :meth:`data_arrays` from a cotangent ``C̄`` of the scaled cost.

        Args:
            row_blocks: an iterable of ``(start, block)`` pairs covering the rows of
                ``C̄`` in order: ``block`` is ``C̄[..., start:start + k, :]``. Online
                geometries pass one block per ``batch_size`` rows and never hold ``C̄``.

        Returns:
            A tuple aligned with :meth:`data_arrays` (for a dense geometry, ``C̄ / scale``
            summed over broadcast axes).
        """
        xp = self.xp
        blocks = [blk for _, blk in row_blocks]
        c_bar = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=-2)
        c_bar = c_bar * _xp.expand_dims_right(self.inv_scale_cost, 2)
        return (_xp.unbroadcast(xp, c_bar, self._raw.shape),)

    def epsilon_pullback(self, eps_bar):
        """The cotangent of the array ε given (see :attr:`has_epsilon_array`) from the
        cotangent ``eps_bar`` of the resolved ε (a relative ε is ``array · statistic``)."""
        if not self.has_epsilon_array:
            raise ValueError("this geometry's epsilon is not an array: it has no cotangent")
        if self._needs_eps_stat:
            eps_bar = eps_bar * self._eps_stat
        return _xp.unbroadcast(self.xp, eps_bar, self._epsilon_arg.shape)

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
        # two passes (the mean, then squared deviations): E[C²] - mean² would cancel
        # catastrophically in float32 when std(C) << mean(C)
        centre = _xp.expand_dims_right(mean, 2)
        sq = sum(xp.sum((blk - centre) ** 2, axis=(-2, -1)) for blk in self._raw_blocks(1))
        return xp.sqrt(sq / (n * m))

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
        return DenseOperators(self, self.epsilon if eps is None else eps, kernel=kernel)

    def kernel_matrix(self, eps=None):
        """``K = exp(-C / ε)`` (materialised)."""
        eps = self.epsilon if eps is None else eps
        return self.xp.exp(-self.cost_matrix / _xp.expand_dims_right(eps, 2))

    # -- pytree (see otcore._lib.pytree; registered with JAX by otcore.backends.jax) -----
    _tree_data_attrs = ("_raw",)  # the attributes that hold data_arrays()

    def tree_flatten(self):
        """``(children, aux)`` for ``jax.jit``, ``jax.vmap``, ``lax.scan``.

        Children: :meth:`data_arrays`, ε when given as an array, the ε and scale imposed by
        :meth:`sharing` when they are arrays, and the resolved cost statistics (the factor
        ``1/scale`` of a ``scale_cost`` name, the statistic that a default or relative ε
        multiplies). The statistics are resolved here, so that a geometry has one tree
        structure whether or not it was used (a ``lax.scan`` carry needs that) and so that
        they stay the constants they are eagerly. Aux: float ε and scale, the options,
        cost function and adapter (compared by value).
        """
        stored = self._cache.get("tree")
        if stored is not None:  # made by tree_unflatten: same structure, whatever its leaves
            return stored
        inv = self.inv_scale_cost if self._shared is None else None  # else: _shared[1]
        stat = self._eps_stat if self._needs_eps_stat else None
        data = self.data_arrays()
        shared = (None, None) if self._shared is None else self._shared
        children, layout = _pytree.split((*data, self._epsilon_arg, *shared, inv, stat))
        skip = (*self._tree_data_attrs, "_epsilon_arg", "_shared", "_cache")
        static = tuple(
            sorted((k, _pytree.Static(v)) for k, v in vars(self).items() if k not in skip)
        )
        return children, (static, len(data), self._shared is not None, layout)

    @classmethod
    def tree_unflatten(cls, aux, children):
        """The geometry of :meth:`tree_flatten` on new children (no validation: they may be
        tracers or placeholders); no cost matrix or other cache is carried over."""
        static, n_data, shared, layout = aux
        values = _pytree.join(layout, children)
        geom = cls.__new__(cls)
        geom.__dict__.update((k, s.value) for k, s in static)
        geom._set_data_arrays(values[:n_data])
        eps_arg, shared_eps, shared_inv, inv, stat = values[n_data:]
        geom._epsilon_arg = eps_arg
        geom._shared = (shared_eps, shared_inv) if shared else None
        geom._cache = {"tree": (list(children), aux), "inv_scale": shared_inv if shared else inv}
        if layout[-1] is _pytree.CHILD:
            geom._cache["eps_stat"] = stat
        return geom

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, batch_shape={self.batch_shape})"
