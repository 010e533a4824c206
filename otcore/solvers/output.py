"""The result of a Sinkhorn solve: potentials, plan operations and cost values."""

from __future__ import annotations

import warnings

from otcore._lib import checks as _checks
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.errors import ConvergenceWarning, NonFiniteIterationError

__all__ = ["SinkhornOutput", "report", "report_flags"]


@_pytree.register
class SinkhornOutput:
    """Potentials of a solve and everything derived from them.

    Shapes: ``f (..., n)``, ``g (..., m)`` with the problem's batch axes ``...``; the plan is
    ``P_ij = exp((f_i + g_j - C_ij) / ε)`` (rows: first measure ``a``; columns: ``b``).
    Potentials are ``-inf`` where the weight is 0. Costs are computed from the problem's
    own (differentiable) geometry and weights; with ``use_danskin`` the potentials are
    held constant in them, so their gradients are the envelope (Danskin) gradients.

    Attributes:
        f, g: dual potentials, in cost units.
        errors: marginal error (relative to the weights' mass) after each block of
            ``inner_iterations`` steps, ``(..., n_blocks)``, ``-1`` for blocks not run.
        n_iters: number of iterations run (a multiple of ``inner_iterations``).
        converged: boolean array ``(...)``: the final error is below ``threshold``.
        diverged: boolean scalar: the iterates became non-finite (a potential, or a
            kernel-mode scaling that is 0, where the weight is positive; non-finite
            weights or total mass; an overflowing plan) and the loop stopped.
    """

    def __init__(self, f, g, prob, errors, n_iters, converged, diverged, solver):
        self.f, self.g = f, g
        self.prob = prob
        self.errors = errors
        self.n_iters = n_iters
        self.converged = converged
        self.diverged = diverged
        self.solver = solver
        self._cache = {}

    # -- pytree (registered with JAX by otcore.backends.jax) ---------------------------
    _tree_children = ("f", "g", "prob", "errors", "n_iters", "converged", "diverged")

    def tree_flatten(self):
        """``(children, aux)``: the arrays and the problem (a pytree) are children; the
        solver (with its :class:`~otcore.ImplicitDiff`) is aux, compared by its options.
        Cached plans and costs are not carried."""
        return _pytree.flatten_attrs(self, self._tree_children, skip=("_cache",))

    @classmethod
    def tree_unflatten(cls, aux, children):
        out = _pytree.unflatten_attrs(cls, aux, children)
        out._cache = {}
        return out

    # -- basic -----------------------------------------------------------------------
    @property
    def potentials(self):
        """``(f, g)``."""
        return self.f, self.g

    @property
    def geom(self):
        return self.prob.geom

    @property
    def a(self):
        return self.prob.a

    @property
    def b(self):
        return self.prob.b

    @property
    def epsilon(self):
        """The target ε of the solve (float or array)."""
        return self.prob.geom.epsilon

    @property
    def xp(self):
        return self.prob.geom.xp

    def _get(self, key, compute):
        if key in self._cache:
            return self._cache[key]
        ad = self.geom.adapter
        with ad.full_precision():
            value = compute()
        if not _computed_in_a_trace(ad, (self.f,), value):
            self._cache[key] = value
        return value

    @property
    def _ops(self):
        return self._get("ops", lambda: self.geom.operators(self.epsilon))

    @property
    def _scaled(self):
        e1 = _xp.expand_dims_right(self.epsilon, 1)
        xp = self.xp
        return self._get(
            "scaled",
            lambda: (_xp.divide_potential(xp, self.f, e1), _xp.divide_potential(xp, self.g, e1)),
        )

    @property
    def _cost_potentials(self):
        """``(f, g)`` as used in the costs: held constant in first derivatives when
        ``use_danskin`` (the envelope gradient; see :meth:`Adapter.envelope`)."""
        if not self.solver.use_danskin:
            return self.f, self.g
        env = self.geom.adapter.envelope
        return env(self.f), env(self.g)

    # -- plan --------------------------------------------------------------------------
    @property
    def matrix(self):
        """The plan ``P (..., n, m)`` (materialised, also in online mode)."""
        return self._get("matrix", lambda: self._ops.plan(*self._scaled))

    def apply(self, vec, axis: int = 0):
        """``Pᵀ vec`` for ``axis=0`` (vec ``(..., n)`` → ``(..., m)``) or ``P vec`` for
        ``axis=1`` (vec ``(..., m)`` → ``(..., n)``), without forming ``P`` in online mode.

        Example:
            >>> import numpy as np, otcore as ot
            >>> x = np.random.default_rng(0).normal(size=(5, 2))
            >>> out = ot.solve(ot.PointCloud(x, x[:3]), threshold=1e-8)
            >>> out.apply(np.ones(5), axis=0).round(4)  # column marginal = b
            array([0.3333, 0.3333, 0.3333])

        Raises:
            TypeError: ``vec`` is not an array of the problem's library, or its dtype is
                not the problem's floating dtype.
            ValueError: wrong length on the last axis, batch axes that do not broadcast
                with the problem's, another device, or NaN/inf entries (checked eagerly).
        """
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (apply Pᵀ to vectors of length n) or 1, got {axis!r}")
        self._check_vector(vec, axis)
        with self.geom.adapter.full_precision():
            return self._ops.plan_apply(*self._scaled, vec, axis)

    def _check_vector(self, vec, axis):
        ref = self.prob.a
        names = ["the problem's arrays", "vec"]
        _xp.namespace(ref, vec, names=names)
        n, m = self.geom.shape
        size = n if axis == 0 else m
        if vec.ndim < 1 or vec.shape[-1] != size:
            raise ValueError(
                f"vec must have length {size} on its last axis for axis={axis}, got {vec.shape}"
            )
        _checks.check_float_array(self.xp, "vec", vec)
        _checks.check_same_dtype(names, [ref, vec])
        _checks.check_same_device(names, [ref, vec])
        batch = self.prob.batch_shape
        try:
            if batch is not None:  # None: rebuilt from placeholders (see LinearProblem)
                _xp.broadcast_shapes(tuple(vec.shape[:-1]), batch)
        except ValueError:
            raise ValueError(
                f"the batch axes of vec {tuple(vec.shape[:-1])} do not broadcast with the "
                f"problem's batch shape {batch}"
            ) from None
        _checks.check_finite(self.geom.adapter, "vec", vec)

    def marginal(self, axis: int):
        """``Pᵀ1`` (``axis=0``, length m) or ``P1`` (``axis=1``, length n)."""
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1, got {axis!r}")

        def compute():
            xp = self.xp
            fe, ge = self._scaled
            if axis == 0:
                return xp.exp(ge + self._ops.apply_lse(fe, axis=0))
            return xp.exp(fe + self._ops.apply_lse(ge, axis=1))

        return self._get(("marginal", axis), compute)

    @property
    def transport_mass(self):
        """``sum_ij P_ij``."""
        return self.xp.sum(self.marginal(1), axis=-1)

    # -- costs -------------------------------------------------------------------------
    def _weighted(self, w, h):
        """``sum_i w_i h_i`` over ``w > 0`` (finite gradients where ``w == 0``)."""
        xp = self.xp
        pos = w > 0
        h_safe = xp.where(pos, h, xp.zeros_like(h))
        return xp.sum(xp.where(pos, w * h_safe, xp.zeros_like(h_safe)), axis=-1)

    def _side_term(self, w, h, tau):
        """Balanced: ``<w, h - ε log w>``; unbalanced: ``-<w, ρ(exp(-(h - ε log w)/ρ) - 1)>``,
        formed with ``expm1`` so that it keeps its digits when ``ρ ≫ |h̃|`` (``tau`` near 1)."""
        xp = self.xp
        e1 = _xp.expand_dims_right(self.epsilon, 1)
        pos = w > 0
        w_safe = xp.where(pos, w, xp.ones_like(w))
        h_safe = xp.where(pos, h, xp.zeros_like(h))
        h_tilde = h_safe - e1 * xp.log(w_safe)
        if tau == 1.0:
            return self._weighted(w, h_tilde)
        rho = _xp.expand_dims_right(self.prob.rho(tau), 1)
        return -self._weighted(w, rho * xp.expm1(-h_tilde / rho))

    @property
    def reg_ot_cost(self):
        """Optimal value of the entropic problem (see :class:`~otcore.LinearProblem`).

        ``-<a, φ(f̃, ρ_a)> - <b, φ(g̃, ρ_b)> + ε(Σa Σb - ΣP)`` with ``f̃ = f - ε log a``
        and ``φ(h, ρ) = ρ(exp(-h/ρ) - 1)`` (``<a, f̃>`` on a balanced side).
        """

        def compute():
            xp = self.xp
            f, g = self._cost_potentials
            e1 = _xp.expand_dims_right(self.epsilon, 1)
            fe, ge = _xp.divide_potential(xp, f, e1), _xp.divide_potential(xp, g, e1)
            transport_mass = xp.sum(xp.exp(fe + self._ops.apply_lse(ge, axis=1)), axis=-1)
            mass = xp.sum(self.a, axis=-1) * xp.sum(self.b, axis=-1)
            return (
                self._side_term(self.a, f, self.prob.tau_a)
                + self._side_term(self.b, g, self.prob.tau_b)
                + self.epsilon * (mass - transport_mass)
            )

        return self._get("reg_ot_cost", compute)

    kl_reg_cost = reg_ot_cost

    @property
    def dual_cost(self):
        """``<a, f> + <b, g>`` (over positive weights)."""
        f, g = self._cost_potentials
        return self._weighted(self.a, f) + self._weighted(self.b, g)

    @property
    def primal_cost(self):
        """Transport cost of the plan, ``<P, C>`` (blockwise in online mode)."""
        e1 = _xp.expand_dims_right(self.epsilon, 1)
        f, g = self._cost_potentials
        xp = self.xp
        return self._get(
            "primal",
            lambda: self._ops.plan_dot_cost(
                _xp.divide_potential(xp, f, e1), _xp.divide_potential(xp, g, e1)
            ),
        )

    @property
    def ent_reg_cost(self):
        """``reg_ot_cost - ε (H(a) + H(b))`` with ``H(w) = -Σ w log w``; for a balanced
        problem this is ``<P, C> - ε H(P)``."""
        xp = self.xp

        def entropy(w):
            return -self._weighted(w, _xp.safe_log(xp, w))

        return self.reg_ot_cost - self.epsilon * (entropy(self.a) + entropy(self.b))

    def __repr__(self):
        return f"SinkhornOutput(shape={self.geom.shape}, batch_shape={self.prob.batch_shape})"


def _computed_in_a_trace(adapter, own, value) -> bool:
    """True when ``value`` holds tracers although the ``own`` arrays are concrete: it was
    computed inside a trace (a jitted function that closes over the object), and caching
    it would leak the tracer out of that trace."""
    if not all(adapter.is_concrete(v) for v in own):
        return False
    if isinstance(value, tuple):
        leaves = value
    elif hasattr(value, "shape"):
        leaves = (value,)
    else:  # operators: their precomputed arrays
        leaves = tuple(vars(value).values()) if hasattr(value, "__dict__") else ()
    return not all(adapter.is_concrete(v) for v in leaves if hasattr(v, "shape"))


def report(out: SinkhornOutput) -> None:
    """Act on a solve's flags for the scalar helpers (``ot.reg_ot_cost`` and co.).

    Raises :class:`~otcore.NonFiniteIterationError` when the solve diverged, or when its
    ``reg_ot_cost`` is not finite although the iterates are (overflow of the cost
    itself, e.g. float32 with huge masses), naming the likely cause; warns with
    :class:`~otcore.ConvergenceWarning` when it did not converge. Eager backends only:
    under a trace (``jax.jit``) the flags cannot be read and nothing happens.

    Example:
        >>> import numpy as np, otcore as ot
        >>> x = np.array([[0.0, 0.0], [0.0, 20.0]], np.float32)
        >>> a, b = np.array([0.5, 0.5], np.float32), np.array([1.0, 1e-30], np.float32)
        >>> out = ot.solve(ot.PointCloud(x, x, epsilon=10.0), a, b, lse_mode=False)
        >>> bool(out.diverged)
        True
        >>> try:
        ...     report(out)
        ... except ot.NonFiniteIterationError as err:
        ...     print(str(err)[:44])
        the Sinkhorn iterates became NaN or infinite
    """
    ad = out.geom.adapter
    if not ad.is_concrete(out.diverged):
        return
    if bool(out.diverged):
        raise NonFiniteIterationError("the Sinkhorn iterates became NaN or infinite" + _hint(out))
    cost = out.reg_ot_cost
    if ad.is_concrete(cost) and not bool(out.xp.all(out.xp.isfinite(cost))):
        raise NonFiniteIterationError(
            "the entropic cost is not finite although the Sinkhorn iterates are: it "
            "overflowed" + _hint(out, overflow=True)
        )
    report_flags(
        ad,
        out.diverged,
        out.converged,
        what="Sinkhorn",
        lse_mode=out.solver.lse_mode,
        threshold=out.solver.threshold,
        max_iterations=out.solver.max_iterations,
        stacklevel=4,
    )


def report_flags(
    adapter, diverged, converged, *, what, lse_mode, threshold, max_iterations, stacklevel=3
) -> None:
    """The reports of a monitored loop's flags (eager backends only; skipped when the
    flags are traced): :class:`~otcore.NonFiniteIterationError` if ``diverged`` (with the
    kernel-mode hint when ``lse_mode`` is False), else a
    :class:`~otcore.ConvergenceWarning` if not every entry of ``converged`` is true
    (``converged=None``: no warning, e.g. a fixed iteration count was asked for)."""
    if not adapter.is_concrete(diverged):
        return
    if bool(diverged):
        raise NonFiniteIterationError(
            f"the {what} iterates became NaN or infinite"
            + ("" if lse_mode else " (kernel mode underflows at small epsilon: use lse_mode=True)")
        )
    if converged is not None and not bool(adapter.xp.all(converged)):
        warnings.warn(
            f"{what} did not converge to threshold={threshold} within "
            f"max_iterations={max_iterations}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )


def _hint(out: SinkhornOutput, overflow: bool = False) -> str:
    """The likely cause of a non-finite solve and what to try, for the error message."""
    if not out.solver.lse_mode and not overflow:
        return " (kernel mode underflows at small epsilon or tiny weights: use lse_mode=True)"
    if out.f.dtype == out.xp.float32:
        return (
            " (float32 overflows with huge costs or masses: use float64, a larger epsilon "
            "or scale_cost, or rescale the weights)"
        )
    return " (huge costs or masses: try a larger epsilon or scale_cost, or rescale the weights)"
