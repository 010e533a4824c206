"""The solver-facing operators of a geometry: the only way the solvers touch the cost.

A geometry's :meth:`~otcore.Geometry.operators` returns a :class:`GeometryOperators` for one
ε. Every input and output is dimensionless: potentials divided by ε (``fe = f/ε``,
``ge = g/ε``), costs ``Ĉ = C/ε``. ``axis`` is the axis that is *reduced*: ``axis=0`` sums
over rows ``i`` (inputs of length ``n``, outputs of length ``m``), ``axis=1`` over columns
``j`` (inputs ``m``, outputs ``n``). The plan is ``P = exp(fe ⊕ ge − Ĉ)``. Leading batch
axes ``...`` broadcast.

Implementations: :class:`DenseOperators` (a materialised cost, or an online point cloud
served in row or column blocks) and the grid's separable operators
(:class:`otcore.geometry.grid.GridOperators`). The streaming kernels of a backend
implement the same interface.
"""

from __future__ import annotations

import abc
import math

from otcore._lib import xp as _xp

__all__ = ["DenseOperators", "GeometryOperators"]


class GeometryOperators(abc.ABC):
    """The interface every geometry's operators implement (see the module docstring).

    Attributes:
        geom: the geometry.
        eps: the ε these operators divide by (a float or an array of the batch shape).
        xp: the array namespace.
    """

    @abc.abstractmethod
    def apply_lse(self, u, axis: int, ratio=None):
        """``LSE_k(u_k − ratio·Ĉ)`` over the reduced ``axis`` (``ratio`` default 1).

        ``axis=1``: ``out_i = log Σ_j exp(u_j − ratio Ĉ_ij)`` (``u (..., m)``, out ``(..., n)``);
        ``axis=0``: ``out_j = log Σ_i exp(u_i − ratio Ĉ_ij)``. ``-inf`` entries of ``u``
        are allowed (zero weights).
        """

    @abc.abstractmethod
    def apply_kernel(self, s, axis: int):
        """``K s`` (``axis=1``, ``s (..., m)``) or ``Kᵀ s`` (``axis=0``), ``K = exp(−Ĉ)``."""

    @abc.abstractmethod
    def plan_apply(self, fe, ge, vec, axis: int):
        """``P vec`` (``axis=1``, ``vec (..., m)``) or ``Pᵀ vec`` (``axis=0``, ``vec (..., n)``)."""

    def plan_operator(self, fe, ge):
        """``(v ↦ P v, u ↦ Pᵀ u)`` for repeated products at one ``(fe, ge)`` (CG matvecs)."""
        return (lambda v: self.plan_apply(fe, ge, v, 1)), (lambda u: self.plan_apply(fe, ge, u, 0))

    def marginals(self, fe, ge):
        """``(P 1, Pᵀ 1)``: the plan's row and column sums, from log-sum-exps (exact at
        zero weights, differentiable everywhere the potentials are finite)."""
        xp = self.xp
        return xp.exp(fe + self.apply_lse(ge, axis=1)), xp.exp(ge + self.apply_lse(fe, axis=0))

    @abc.abstractmethod
    def plan_dot_cost(self, fe, ge):
        """``Σ_ij P_ij C_ij`` (in the units of the scaled cost, not divided by ε)."""

    @abc.abstractmethod
    def plan(self, fe, ge):
        """The materialised plan ``P (..., n, m)``."""

    @abc.abstractmethod
    def plan_blocks(self, fe, ge, axis: int):
        """Pairs ``(P block, Ĉ block)`` that hold the reduced ``axis`` whole, in order:
        ``axis=1`` blocks split the rows, ``axis=0`` blocks split the columns. A dense
        geometry yields one pair; an online one never holds more than a block."""


class DenseOperators(GeometryOperators):
    """Reductions over ``C / ε`` for one ε (dense: ``C / ε`` computed once).

    All inputs are dimensionless (potentials divided by ε). ``axis`` is the axis reduced:
    ``axis=0`` sums over rows ``i`` (inputs of length ``n``, outputs of length ``m``);
    ``axis=1`` sums over columns ``j`` (inputs of length ``m``, outputs of length ``n``).
    """

    def __init__(self, geom, eps, kernel: bool = False):
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

    def apply_lse(self, u, axis: int, ratio=None):
        """``LSE_k(u_k - ratio * C/ε)`` over the reduced ``axis`` (``ratio`` default 1)."""
        n, m = self.geom.shape
        if u.ndim >= 2 and u.shape[0] > 1 and self.geom.batch_shape == ():
            rows = math.prod(u.shape[1:-1]) * n * m
            step = max(1, self._MAX_TEMPORARY // max(rows, 1))
            if step < u.shape[0]:
                parts = [
                    self.apply_lse(u[s : s + step, ...], axis, ratio)
                    for s in range(0, u.shape[0], step)
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

    def apply_kernel(self, s, axis: int):
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

    def plan_blocks(self, fe, ge, axis):
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
        return self._concat([self._matvec(p, vec, axis) for p, _ in self.plan_blocks(fe, ge, axis)])

    def _dense_plan(self, fe, ge):
        """``P`` of a dense geometry, formed once per ``(fe, ge)`` pair (the implicit
        system asks for its marginals and then for its products at the same potentials)."""
        last = getattr(self, "_last_plan", None)
        if last is None or last[0] is not fe or last[1] is not ge:
            last = (fe, ge, self.plan(fe, ge))
            self._last_plan = last
        return last[2]

    def plan_operator(self, fe, ge):
        """``(v -> P v, u -> Pᵀ u)``; a dense geometry forms ``P`` once, online ones never."""
        if not self.geom.is_online:
            p = self._dense_plan(fe, ge)
            return (lambda v: self._matvec(p, v, 1)), (lambda u: self._matvec(p, u, 0))
        return (lambda v: self.plan_apply(fe, ge, v, 1)), (lambda u: self.plan_apply(fe, ge, u, 0))

    def marginals(self, fe, ge):
        """``(P 1, Pᵀ 1)``: sums of the plan (formed once) when dense; log-sum-exps online."""
        if self.geom.is_online:
            return super().marginals(fe, ge)
        p = self._dense_plan(fe, ge)
        return self.xp.sum(p, axis=-1), self.xp.sum(p, axis=-2)

    def plan_dot_cost(self, fe, ge):
        """``sum_ij P_ij C_ij`` without holding ``P`` (in online mode)."""
        xp = self.xp
        total = 0.0
        for p, ce in self.plan_blocks(fe, ge, 1):
            total = total + xp.sum(p * ce, axis=(-2, -1))
        return total * self.eps

    def plan(self, fe, ge):
        """The materialised plan ``P (..., n, m)``."""
        parts = [p for p, _ in self.plan_blocks(fe, ge, 1)]
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=-2)
