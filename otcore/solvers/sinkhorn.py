"""The Sinkhorn solver, written once against the array API.

Updates (``ε_t`` = scheduled ε at iteration ``t``, ``τ = ρ / (ρ + ε)``; g first, then f)::

    g_j <- ε_t log b_j - τ_b ε_t LSE_i((f_i - C_ij) / ε_t)
    f_i <- ε_t log a_i - τ_a ε_t LSE_j((g_j - C_ij) / ε_t)

These are the exact block-coordinate ascent steps of the dual of
``<P,C> + ε KL(P||a⊗b) + ρ_a KL(P1||a) + ρ_b KL(Pᵀ1||b)``; with ``τ = 1`` they are the
balanced Sinkhorn steps. Kernel mode runs the same updates on ``u = exp(f/ε)``,
``v = exp(g/ε)``: ``v <- b / (Kᵀu)^τ_b``, ``u <- a / (Kv)^τ_a``.

The loop is :func:`otcore.solvers.loop.fixed_point_loop`: every ``inner_iterations``
steps the marginal error, relative to the weights' total mass, is computed (the only host
sync on eager backends); the loop stops when it is below ``threshold`` for every problem
of the batch, at ``max_iterations``, or when it is not finite (reported as ``diverged``:
also when a potential is not finite, or a kernel-mode scaling is 0, where its weight is
positive, when a weight or the product of the total masses is not finite, or when the
final plan's row marginal overflows).
"""

from __future__ import annotations

import math
import numbers

from otcore._lib import checks as _checks
from otcore._lib import keywords as _keywords
from otcore._lib import xp as _xp
from otcore.geometry.epsilon import EpsilonSchedule
from otcore.implicit.system import ImplicitDiff, ImplicitSystem, marginal_target
from otcore.problem import LinearProblem
from otcore.solvers.loop import Stopping, fixed_point_loop, n_blocks
from otcore.solvers.output import SinkhornOutput

__all__ = ["Sinkhorn"]

_DEFAULT = object()


class Sinkhorn:
    """Entropic OT solver (Sinkhorn's algorithm), log-domain or kernel mode.

    Args:
        lse_mode: log-domain updates on potentials (stable for any ε) if True; scaling
            (kernel) updates on ``exp(f/ε)``, ``exp(g/ε)`` if False (faster per iteration,
            but underflows for small ε or tiny weights: a scaling that becomes 0 or
            infinite where its weight is positive is reported as ``diverged``).
        threshold: stop when the marginal error, relative to the mass, is at most this:
            ``‖Pᵀ1 - b‖_p / Σb`` (balanced, sequential updates), or
            ``‖P1 - γ_a‖_p / Σa + ‖Pᵀ1 - γ_b‖_p / Σb`` (unbalanced or parallel updates;
            ``γ`` the fixed-point marginals, see ``docs/conventions.md``). For probability
            weights this is the absolute ℓp error; weights of any total mass converge
            alike (float32 with mass 1e6 included). A balanced problem (``tau_a = tau_b =
            1``) whose weights' total masses differ by more than the threshold allows
            raises ``ValueError`` (concrete weights; the error can never fall below the
            relative gap), unless the number of iterations is fixed
            (``min_iterations >= max_iterations``).
        norm_error: ``p`` of the ℓp norm of the marginal error.
        inner_iterations: the error is computed every this many iterations.
        min_iterations: do not stop before this many iterations.
        max_iterations: stop after at most this many iterations (rounded up to a multiple
            of ``inner_iterations``); ``converged`` is then False.
        momentum: ``None`` or an over-relaxation weight ``w`` in ``(0, 2)``:
            ``f <- (1 - w) f_old + w f_new`` (geometric in kernel mode).
        parallel_dual_updates: update f and g from the previous iterate (Jacobi) instead
            of g then f (Gauss-Seidel). Jacobi updates need averaging to converge: with
            ``momentum=None`` they use ``momentum=0.5``.
        epsilon_schedule: ``None`` or :class:`~otcore.EpsilonSchedule` (or a tuple
            ``(init, decay)``) annealing ε towards its target (log-domain only). The
            errors are those of the problem at the current ``ε_t`` (with
            ``ρ_t = ε_t τ / (1 - τ)``), and the threshold cannot stop the loop before
            ``ε_t`` has reached the target: a scheduled solve ends at the unscheduled
            solution, and is not ``converged`` if ``max_iterations`` stops it earlier.
        initializer: ``"default"`` (zero potentials, ``-inf`` at zero weights) or a
            callable ``problem -> (f, g)``.
        implicit_diff: how derivatives of the potentials are computed. An
            :class:`~otcore.ImplicitDiff` (default): the loop runs on constants and the
            potentials are differentiated through their optimality conditions (one linear
            solve per backward pass, any order). ``None``: unrolled, the framework
            differentiates through the iterations (JAX: a checkpointed fixed-length scan
            of ``max_iterations``; PyTorch: the recorded loop; NumPy-like arrays: a manual
            reverse recursion, first derivatives of ``reg_ot_cost`` only).
        use_danskin: differentiate the costs (``reg_ot_cost`` and co.) with the potentials
            held constant (envelope theorem, exact at the optimum, no linear solve).
            Default: True with ``implicit_diff``, False when unrolled. Set False for
            second derivatives of costs.

    Example:
        >>> import numpy as np, otcore as ot
        >>> x = np.random.default_rng(0).normal(size=(8, 2))
        >>> out = ot.Sinkhorn(threshold=1e-6)(ot.LinearProblem(ot.PointCloud(x, x + 1.0)))
        >>> bool(out.converged), out.f.shape
        (True, (8,))
    """

    @_keywords.suggest_keywords("Sinkhorn")
    def __init__(
        self,
        lse_mode: bool = True,
        threshold: float = 1e-3,
        norm_error: float = 1,
        inner_iterations: int = 10,
        min_iterations: int = 0,
        max_iterations: int = 2000,
        momentum: float | None = None,
        parallel_dual_updates: bool = False,
        epsilon_schedule=None,
        initializer="default",
        implicit_diff=_DEFAULT,
        use_danskin: bool | None = None,
    ):
        self.lse_mode = bool(lse_mode)
        self.threshold, self.inner_iterations, self.min_iterations, self.max_iterations = (
            _checks.check_stopping(threshold, inner_iterations, min_iterations, max_iterations)
        )
        if (
            isinstance(norm_error, bool)
            or not isinstance(norm_error, numbers.Real)
            or norm_error < 1
        ):
            raise ValueError(f"norm_error must be a number >= 1, got {norm_error!r}")
        self.norm_error = float(norm_error)
        if momentum is not None and not (
            isinstance(momentum, numbers.Real)
            and not isinstance(momentum, bool)
            and 0 < momentum < 2
        ):
            raise ValueError(f"momentum must be None or a number in (0, 2), got {momentum!r}")
        self.parallel_dual_updates = bool(parallel_dual_updates)
        if momentum is None and self.parallel_dual_updates:
            # Jacobi updates alone split into two interleaved sequences whose limits differ
            # by a constant (f + c, g - c) in balanced problems: average them
            momentum = 0.5
        self.momentum = None if momentum is None else float(momentum)
        if isinstance(epsilon_schedule, tuple):
            epsilon_schedule = EpsilonSchedule(*epsilon_schedule)
        if epsilon_schedule is not None and not isinstance(epsilon_schedule, EpsilonSchedule):
            raise TypeError(
                "epsilon_schedule must be None, an EpsilonSchedule or a tuple (init, decay), "
                f"got {type(epsilon_schedule).__name__}"
            )
        if epsilon_schedule is not None and not self.lse_mode:
            raise ValueError("epsilon_schedule requires lse_mode=True")
        self.epsilon_schedule = epsilon_schedule
        if not (initializer == "default" or callable(initializer)):
            raise ValueError(f"initializer must be 'default' or a callable, got {initializer!r}")
        self.initializer = initializer
        if implicit_diff is _DEFAULT:
            implicit_diff = ImplicitDiff()
        if implicit_diff is not None and not isinstance(implicit_diff, ImplicitDiff):
            raise TypeError(
                f"implicit_diff must be an ImplicitDiff or None, got {type(implicit_diff).__name__}"
            )
        self.implicit_diff = implicit_diff
        self.use_danskin = (implicit_diff is not None) if use_danskin is None else bool(use_danskin)

    @property
    def n_blocks(self) -> int:
        """Number of error checks at most: ``ceil(max_iterations / inner_iterations)``."""
        return n_blocks(self)

    def __call__(self, prob: LinearProblem, init=None, symmetric: bool = False) -> SinkhornOutput:
        """Solve ``prob``; ``init`` is an optional warm start ``(f, g)`` of potentials.

        ``symmetric=True`` declares a symmetric problem (``C = Cᵀ``, ``a = b``,
        ``tau_a = tau_b``; the caller guarantees it) and runs the averaged updates
        ``f <- (f + T(f)) / 2`` on one potential (``g = f``), which converge in fewer
        iterations (Feydy et al. 2019).
        """
        if not isinstance(prob, LinearProblem):
            raise TypeError(f"expected a LinearProblem, got {type(prob).__name__}")
        with prob.geom.adapter.full_precision():
            return self._solve(prob, init, symmetric)

    def _solve(self, prob, init, symmetric):
        if symmetric:
            n, m = prob.geom.shape
            if n != m or prob.tau_a != prob.tau_b or prob.a.shape != prob.b.shape:
                raise ValueError(
                    "symmetric=True needs a square geometry, a and b of one shape and "
                    f"tau_a == tau_b; got shape {prob.geom.shape}, a {prob.a.shape}, "
                    f"b {prob.b.shape}, tau ({prob.tau_a}, {prob.tau_b})"
                )
        adapter = prob.geom.adapter
        self._check_masses(prob)
        sg = adapter.stop_gradient
        unrolled = self.implicit_diff is None
        if unrolled:
            geom, a, b = prob.geom, prob.a, prob.b
        else:
            geom, a, b = prob.geom.stop_gradient(), sg(prob.a), sg(prob.b)
        f0, g0 = self._initial_potentials(prob, init)
        f0, g0 = sg(f0), sg(g0)
        iteration = _Iteration(self, prob, geom, a, b, geom.epsilon, symmetric=symmetric)
        state = iteration.run(f0, g0, unrolled)
        f, g = state["f"], state["g"]
        leaves = (*prob.geom.differentiable_arrays(), prob.a, prob.b)
        if not unrolled and adapter.is_differentiating(*leaves):
            f, g = adapter.implicit_potentials(self._system_builder(prob), f, g, leaves)
        return SinkhornOutput(
            f=f,
            g=g,
            prob=prob,
            errors=state["errors"],
            n_iters=state["k"] * self.inner_iterations,
            converged=state["converged"],
            diverged=state["diverged"],
            solver=self,
        )

    def _check_masses(self, prob):
        """``ValueError`` for a balanced problem whose weights' total masses differ by more
        than the threshold allows (concrete weights only; under a trace the solve just
        does not converge). Not checked when the number of iterations is fixed
        (``min_iterations >= max_iterations``): all steps run whatever the error.

        After the ``f`` update ``ΣP = Σa``, so the relative error ``‖Pᵀ1 - b‖_p / Σb`` is
        at least ``|Σa - Σb| / Σb · m^(1/p - 1)``; the test uses the smaller bound
        ``|Σa - Σb| / max(Σa, Σb) · max(n, m)^(1/p - 1)``, which also holds for the
        parallel updates, and ignores gaps within rounding (``100 × machine epsilon``).
        """
        if not prob.is_balanced or self.min_iterations >= self.max_iterations:
            return  # a fixed number of steps (a map of any weights) runs them all anyway
        adapter, xp = prob.geom.adapter, prob.geom.xp
        a, b = adapter.stop_gradient(prob.a), adapter.stop_gradient(prob.b)
        if not (adapter.is_concrete(a) and adapter.is_concrete(b)):
            return
        mass_a, mass_b = xp.sum(a, axis=-1), xp.sum(b, axis=-1)
        gap = xp.abs(mass_a - mass_b) / xp.maximum(mass_a, mass_b)
        n, m = prob.geom.shape
        scale = max(n, m) ** (1.0 / self.norm_error - 1.0)
        tol = 100.0 * float(xp.finfo(a.dtype).eps)  # a gap within rounding is no mistake
        bad = (gap * scale > self.threshold) & (gap > tol)
        if not bool(xp.any(bad)):
            return
        # the first problem of a batch that fails, for the message
        masses = xp.reshape(xp.stack(xp.broadcast_arrays(mass_a, mass_b, gap)), (3, -1))
        i = int(xp.argmax(xp.astype(xp.reshape(bad, (-1,)), xp.int32)))
        sa, sb, rel = (float(masses[j, i]) for j in range(3))
        where = "" if not prob.batch_shape else f" (problem {i} of the flattened batch)"
        raise ValueError(
            "a and b must have the same total mass in a balanced problem "
            f"(tau_a = tau_b = 1): got sum(a) = {sa:.7g} and sum(b) = {sb:.7g}{where}, so "
            f"the marginal error (relative to the mass) cannot fall below {rel * scale:.3g}"
            f" > threshold={self.threshold}. Normalise a and b to the same mass, or solve "
            "an unbalanced problem (tau_a < 1 and/or tau_b < 1)"
        )

    def _system_builder(self, prob):
        """``(leaves, f, g) -> ImplicitSystem`` on arrays replacing ``prob``'s leaves."""
        k = len(prob.geom.differentiable_arrays())

        def make_system(leaves, f, g):
            geom = prob.geom.with_arrays(tuple(leaves[:k]))
            return ImplicitSystem(
                prob._replace(geom, leaves[k], leaves[k + 1]), f, g, self.implicit_diff
            )

        return make_system

    def _initial_potentials(self, prob, init):
        xp = prob.geom.xp
        n, m = prob.geom.shape
        batch = prob.batch_shape
        if init is not None:
            f, g = init
            for name, v, size in (("init[0] (f)", f, n), ("init[1] (g)", g, m)):
                _checks.check_float_array(xp, name, v)
                if v.shape[-1] != size:
                    raise ValueError(
                        f"{name} must have length {size} on its last axis, got {v.shape}"
                    )
        elif self.initializer == "default":
            f = xp.zeros(batch + (n,), dtype=prob.a.dtype, device=_xp.device_of(prob.a))
            g = xp.zeros(batch + (m,), dtype=prob.b.dtype, device=_xp.device_of(prob.b))
        else:
            f, g = self.initializer(prob)
        ninf = -math.inf
        f = xp.where(prob.a > 0, xp.broadcast_to(f, batch + (n,)), ninf)
        g = xp.where(prob.b > 0, xp.broadcast_to(g, batch + (m,)), ninf)
        f = xp.broadcast_to(f, batch + (n,))
        g = xp.broadcast_to(g, batch + (m,))
        return f, g

    def __repr__(self):
        return (
            f"Sinkhorn(lse_mode={self.lse_mode}, threshold={self.threshold}, "
            f"max_iterations={self.max_iterations}, inner_iterations={self.inner_iterations})"
        )


class _Iteration:
    """One solve's loop: state, update step and error, on constant inputs."""

    def __init__(self, solver: Sinkhorn, prob: LinearProblem, geom, a, b, eps, symmetric=False):
        self.s = solver
        self.symmetric = symmetric
        self.prob = prob
        self.xp = geom.xp
        self.ad = geom.adapter
        self.a, self.b = a, b
        self.eps = eps
        self.e1 = _xp.expand_dims_right(eps, 1)
        self.ops = geom.operators(eps, kernel=not solver.lse_mode)
        self.log_a = _xp.safe_log(self.xp, a)
        self.log_b = _xp.safe_log(self.xp, b)
        self.tau_a, self.tau_b = prob.tau_a, prob.tau_b
        self.mass_a = self.xp.sum(a, axis=-1)  # the errors are relative to these
        self.mass_b = self.xp.sum(b, axis=-1)
        self.check_both = (not prob.is_balanced) or solver.parallel_dual_updates

    # -- loop ----------------------------------------------------------------------
    def run(self, f0, g0, unrolled: bool = False, record=None):
        """The loop (:func:`~otcore.solvers.loop.fixed_point_loop` on ``x, y``): its state
        plus ``f, g``; ``record`` (a list, eager backends only) receives each step's input
        ``(x, y)`` (potentials in log mode, scalings in kernel mode)."""
        xp = self.xp
        if self.s.lse_mode:
            x0, y0 = f0, g0
        else:
            x0 = xp.exp(_xp.divide_potential(xp, f0, self.e1))
            y0 = xp.exp(_xp.divide_potential(xp, g0, self.e1))
        update = self._lse_step if self.s.lse_mode else self._kernel_step
        schedule = self.s.epsilon_schedule
        variables = {"x": x0, "y": y0}
        if schedule is not None:  # the ε factor of the last step: the error is taken there
            variables["factor"] = self._factor(0, x0)

        def step(t, v):
            x, y = update(t, v["x"], v["y"])
            if schedule is None:
                return {"x": x, "y": y}
            return {"x": x, "y": y, "factor": self._factor(t, x)}

        history = None if record is None else []
        state = fixed_point_loop(
            self.ad,
            step,
            lambda new, old: self._error(new),
            variables,
            self._stopping(),
            batch_shape=f0.shape[:-1],
            unrolled=unrolled,
            record=history,
        )
        if record is not None:
            record.extend((v["x"], v["y"]) for v in history)
        if schedule is not None:  # never converged before ε reached its target
            state["converged"] = state["converged"] & (state["factor"] <= 1.0)
        if not self.check_both:
            # the loop's error only formed Pᵀ1: a plan that overflows on the rows (lost
            # precision, e.g. float32 potentials far larger than ε) is caught here, once
            sg = self.ad.stop_gradient
            row = self._row_marginal(sg(state["x"]), sg(state["y"]))
            state["diverged"] = state["diverged"] | ~xp.all(xp.isfinite(row))
            state["converged"] = state["converged"] & ~state["diverged"]
        if self.s.lse_mode:
            state["f"], state["g"] = state["x"], state["y"]
        else:
            state["f"] = self.e1 * _xp.safe_log(xp, state["x"])
            state["g"] = self.e1 * _xp.safe_log(xp, state["y"])
        return state

    # -- updates -------------------------------------------------------------------
    def _relax(self, old, new):
        w = self.s.momentum
        if w is None:
            return new
        xp = self.xp
        if self.s.lse_mode:
            finite = xp.isfinite(new)
            new_safe = xp.where(finite, new, xp.zeros_like(new))  # no inf - inf below
            old_safe = xp.where(xp.isfinite(old), old, new_safe)
            return xp.where(finite, (1.0 - w) * old_safe + w * new_safe, new)
        pos = (old > 0) & (new > 0)
        one = xp.ones_like(new)
        mixed = xp.where(pos, old, one) ** (1.0 - w) * xp.where(pos, new, one) ** w
        return xp.where(pos, mixed, new)

    def _lse_step(self, t, f, g):
        if self.s.epsilon_schedule is None:
            e1, ratio = self.e1, None
        else:
            factor = self.s.epsilon_schedule.factor(t, self.xp, f.dtype)
            e1, ratio = self.e1 * factor, 1.0 / factor
        lse = self.ops.apply_lse
        if self.symmetric:  # averaged c-transform of one potential: g = f
            f_new = e1 * (
                self.log_b
                - self.tau_b * lse(_xp.divide_potential(self.xp, f, e1), axis=0, ratio=ratio)
            )
            f_avg = xp_where_finite_average(self.xp, f, f_new)
            return f_avg, f_avg
        g_new = e1 * (
            self.log_b - self.tau_b * lse(_xp.divide_potential(self.xp, f, e1), axis=0, ratio=ratio)
        )
        g_next = self._relax(g, g_new)
        g_use = g if self.s.parallel_dual_updates else g_next
        f_new = e1 * (
            self.log_a
            - self.tau_a * lse(_xp.divide_potential(self.xp, g_use, e1), axis=1, ratio=ratio)
        )
        return self._relax(f, f_new), g_next

    def _kernel_step(self, t, u, v):
        k = self.ops.apply_kernel
        if self.symmetric:  # geometric average of u and its kernel update: v = u
            u_new = self.b / _pow(k(u, axis=0), self.tau_b)
            u_avg = self.xp.sqrt(u * u_new)
            return u_avg, u_avg
        v_new = self.b / _pow(k(u, axis=0), self.tau_b)
        v_next = self._relax(v, v_new)
        v_use = v if self.s.parallel_dual_updates else v_next
        u_new = self.a / _pow(k(v_use, axis=1), self.tau_a)
        return self._relax(u, u_new), v_next

    # -- error ---------------------------------------------------------------------
    def _factor(self, t, like):
        """The schedule's ε multiplier at step ``t``: a 0-d array of ``like``'s dtype."""
        xp = self.xp
        value = self.s.epsilon_schedule.factor(t, xp, like.dtype)
        if isinstance(value, numbers.Real):  # a Python int t gives a Python float
            return xp.asarray(float(value), dtype=like.dtype, device=_xp.device_of(like))
        return xp.astype(value, like.dtype)

    def _stopping(self):
        """The stopping options, with ``min_iterations`` raised to cover the ε schedule
        (the threshold cannot stop the loop before ε has reached its target)."""
        schedule = self.s.epsilon_schedule
        if schedule is None:
            return self.s
        lo = min(max(self.s.min_iterations, schedule_length(schedule) + 1), self.s.max_iterations)
        return Stopping(self.s.threshold, self.s.inner_iterations, lo, self.s.max_iterations)

    def _row_marginal(self, x, y):
        """``P1`` at the target ε from the loop variables."""
        xp = self.xp
        if self.s.lse_mode:
            fe = _xp.divide_potential(xp, x, self.e1)
            ge = _xp.divide_potential(xp, y, self.e1)
            return xp.exp(fe + self.ops.apply_lse(ge, axis=1))
        return x * self.ops.apply_kernel(y, axis=1)

    def _marginals(self, x, y, e1, ratio):
        """``(P1, Pᵀ1, f, g)`` from the loop variables at ``ε_t = e1`` (``ratio = ε / ε_t``;
        ``None`` at the target ε); ``P1`` is formed only when both sides are checked."""
        xp, ops = self.xp, self.ops
        if self.s.lse_mode:
            fe = _xp.divide_potential(xp, x, e1)
            ge = _xp.divide_potential(xp, y, e1)
            col = xp.exp(ge + ops.apply_lse(fe, axis=0, ratio=ratio))
            row = xp.exp(fe + ops.apply_lse(ge, axis=1, ratio=ratio)) if self.check_both else None
            return row, col, x, y
        col = y * ops.apply_kernel(x, axis=0)
        row = x * ops.apply_kernel(y, axis=1) if self.check_both else None
        f = e1 * _xp.safe_log(xp, x) if self.check_both else None
        g = e1 * _xp.safe_log(xp, y) if self.check_both else None
        return row, col, f, g

    def _norm(self, v):
        p = self.s.norm_error
        xp = self.xp
        if p == 1.0:
            return xp.sum(xp.abs(v), axis=-1)
        return xp.sum(xp.abs(v) ** p, axis=-1) ** (1.0 / p)

    def _valid(self, x, y):
        """Per problem: the weights, their total masses and the loop variables are finite
        where the weights are positive (scalings also ``> 0`` in kernel mode)."""
        xp = self.xp
        a, b = self.a, self.b
        if self.s.lse_mode:
            ok_x, ok_y = xp.isfinite(x), xp.isfinite(y)
        else:  # a scaling that underflowed to 0 (or overflowed) where its weight is > 0
            ok_x = xp.isfinite(x) & (x > 0)
            ok_y = xp.isfinite(y) & (y > 0)
        ok = xp.all(ok_x | ~(a > 0), axis=-1) & xp.all(ok_y | ~(b > 0), axis=-1)
        weights = xp.all(xp.isfinite(a), axis=-1) & xp.all(xp.isfinite(b), axis=-1)
        return ok & weights & xp.isfinite(self.mass_a * self.mass_b)

    def _error(self, v):
        """Marginal error of the loop variables ``v``, relative to the weights' masses
        (``NaN`` where :meth:`_valid` fails, which stops the loop as ``diverged``).

        With an ε schedule it is the error of the problem at the current ``ε_t``
        (``ρ_t = ε_t τ / (1 - τ)``): the target ε on annealed potentials would overflow.
        """
        xp = self.xp
        x, y = v["x"], v["y"]
        factor = v.get("factor")
        if factor is None:
            e1, eps, ratio = self.e1, self.eps, None
        else:
            e1, eps, ratio = self.e1 * factor, self.eps * factor, 1.0 / factor
        row, col, f, g = self._marginals(x, y, e1, ratio)
        if not self.check_both:
            err = self._norm(col - self.b) / self.mass_b
        else:
            rho_a = self.prob.rho(self.tau_a, eps)
            rho_b = self.prob.rho(self.tau_b, eps)
            target_a = marginal_target(xp, self.a, f, e1, rho_a)
            target_b = marginal_target(xp, self.b, g, e1, rho_b)
            err = (
                self._norm(row - target_a) / self.mass_a + self._norm(col - target_b) / self.mass_b
            )
        return xp.where(self._valid(x, y), err, math.nan)


def schedule_length(schedule: EpsilonSchedule) -> int:
    """The first iteration ``t`` at which ``schedule.factor(t) == 1`` (``ε_t`` is the
    target); a huge number if it never is (``decay == 1 < init``)."""
    if schedule.init <= 1.0:
        return 0
    if schedule.decay >= 1.0:
        return 2**62
    t = max(math.ceil(math.log(schedule.init) / -math.log(schedule.decay)) - 1, 0)
    while schedule.init * schedule.decay**t > 1.0:  # the formula, exact to rounding
        t += 1
    return t


def xp_where_finite_average(xp, old, new):
    """``(old + new) / 2``, keeping ``-inf`` (zero weights) where ``new`` is ``-inf``."""
    return xp.where(xp.isfinite(new), (xp.where(xp.isfinite(old), old, new) + new) / 2.0, new)


def _pow(x, tau):
    return x if tau == 1.0 else x**tau
