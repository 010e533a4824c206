"""Unrolled reverse-mode derivatives of Sinkhorn's iterations (no-autodiff backends).

With ``implicit_diff=None`` JAX and PyTorch differentiate through the iterations that the
forward pass ran (its stopping rule fixes their number). This module computes the same
derivatives by hand, in array API code, for NumPy, CuPy and array_api_strict: the
recursions of Xie (2025), Algorithms 4.1 (vanilla / kernel) and 4.2 (log-domain), extended
to the steps of :class:`otcore.sinkhorn._Iteration` (unbalanced ``τ``, Jacobi
``parallel_dual_updates``, ``momentum``, ``epsilon_schedule``).

Log-domain step (``e`` = ε at step ``t``, ``Ĉ = C/e``, ``fe = f/e``)::

    s_j = LSE_i(fe_i − Ĉ_ij)       g_new = e log b − τ_b e s       g' = relax(g, g_new)
    g_use = g (Jacobi) or g'
    r_i = LSE_j(g_use_j/e − Ĉ_ij)  f_new = e log a − τ_a e r       f' = relax(f, f_new)

The softmax weights of the two reductions are plans of the geometry's operators:
``W = exp(fe ⊕ (−s) − Ĉ)`` (columns sum to 1) and ``X = exp((−r) ⊕ g_use/e − Ĉ)`` (rows
sum to 1). The adjoint of the step, given ``(f̄', ḡ')``::

    (f̄_old, f̄_new) = relax*(f̄')          ā += e f̄_new / a       C̄ += τ_a f̄_new ⊙ X
    ḡ_use = −τ_a Xᵀ f̄_new
    (ḡ_old, ḡ_new) = relax*(ḡ' + ḡ_use)    (Jacobi: relax*(ḡ'), and ḡ_use goes to g)
    b̄ += e ḡ_new / b                        C̄ += τ_b W ⊙ ḡ_new
    f̄ = f̄_old − τ_b W ḡ_new                 ḡ = ḡ_old (+ ḡ_use, Jacobi)

Kernel mode runs the same map on ``u = e^{f/ε}``, ``v = e^{g/ε}``; its adjoint is written
on the scalings themselves (``K = e^{−Ĉ}``, ``K̄`` pulled back to ``C̄ = −K ⊙ K̄ / ε``), which
also gives what autodiff gives at zero weights, where ``u_i = a_i / (Kv)_i^τ`` keeps a
derivative in ``a_i`` that the log-domain map (``f_i = −∞``) does not have.

The cost differentiated is ``reg_ot_cost(f_T, g_T; a, b, C)`` at the final iterate: its
explicit partials are those of the envelope (Danskin) rule, and its partials in the
potentials seed the reverse recursion::

    ∂R/∂f = γ_a − P1        ∂R/∂g = γ_b − Pᵀ1        (0 at zero weights)

with ``γ_a = a exp(−(f − ε log a)/ρ_a)`` (``a`` when balanced). They vanish at the fixed
point, so the unrolled gradient tends to the implicit one as the iterations converge.

The iterates are recorded by re-running the solve's own loop
(:meth:`otcore.sinkhorn._Iteration.run` with ``record``): ``O(T (n + m))`` memory and one
more forward pass; each reverse step costs a few ``n × m`` exponentials, like a forward
step. Online geometries (``batch_size``) materialise each step's ``n × m`` weights.
"""

from __future__ import annotations

from otcore._lib import xp as _xp
from otcore.implicit.system import marginal_target
from otcore.solvers.sinkhorn import _Iteration, _pow

__all__ = ["potential_partials", "pullback"]


def _mv(xp, mat, vec, axis):
    """``matᵀ vec`` (``axis=0``) or ``mat vec`` (``axis=1``) over the last two axes."""
    if axis == 0:
        return xp.matmul(vec[..., None, :], mat)[..., 0, :]
    return xp.matmul(mat, vec[..., :, None])[..., 0]


def _masked_ratio(xp, num, w):
    """``num / w`` where ``w > 0``, 0 elsewhere (no division by zero)."""
    pos = w > 0
    return xp.where(pos, num / xp.where(pos, w, xp.ones_like(w)), xp.zeros_like(num))


class _LogStepAdjoint:
    """The adjoint of :meth:`_Iteration._lse_step` at a recorded input ``(f, g)``."""

    def __init__(self, it: _Iteration):
        self.it = it
        self.xp = it.xp
        self.w = it.s.momentum
        self.parallel = it.s.parallel_dual_updates
        self.schedule = it.s.epsilon_schedule
        self.geom = it.prob.geom
        self.a, self.b = it.a, it.b

    def _scale(self, t, dtype):
        """``(e, ratio, operators)`` of step ``t`` (``e`` expanded for potentials)."""
        it = self.it
        if self.schedule is None:
            return it.e1, None, it.ops
        xp = self.xp
        factor = self.schedule.factor(xp.asarray(t), xp, dtype)
        return it.e1 * factor, 1.0 / factor, self.geom.operators(it.eps * factor)

    def _relax_adjoint(self, old, new, bar):
        """Cotangents ``(old̄, new̄)`` of :meth:`_Iteration._relax` (log domain)."""
        xp, w = self.xp, self.w
        zero = xp.zeros_like(bar)
        if w is None:
            return zero, bar
        fin_new, fin_old = xp.isfinite(new), xp.isfinite(old)
        mixed_bar = xp.where(fin_new, bar, zero)
        new_bar = xp.where(fin_new, w * bar, bar)
        old_safe_bar = (1.0 - w) * mixed_bar
        old_bar = xp.where(fin_old, old_safe_bar, zero)
        new_bar = new_bar + xp.where(fin_old, zero, old_safe_bar)
        return old_bar, new_bar

    def __call__(self, t, f, g, f_bar, g_bar, acc):
        xp, it = self.xp, self.it
        e1, ratio, ops = self._scale(t, f.dtype)
        # the forward step, recomputed
        fe = _xp.divide_potential(xp, f, e1)
        s = it.ops.apply_lse(fe, axis=0, ratio=ratio)
        g_new = e1 * (it.log_b - it.tau_b * s)
        g_next = it._relax(g, g_new)
        g_use = g if self.parallel else g_next
        ge = _xp.divide_potential(xp, g_use, e1)
        r = it.ops.apply_lse(ge, axis=1, ratio=ratio)
        f_new = e1 * (it.log_a - it.tau_a * r)
        # f' = relax(f, f_new), f_new = e log a − τ_a e LSE_j(g_use/e − Ĉ)
        f_bar_old, f_bar_new = self._relax_adjoint(f, f_new, f_bar)
        acc["a"] = acc["a"] + e1 * _masked_ratio(xp, f_bar_new, self.a)
        x_w = ops.plan(-r, ge)  # rows sum to 1
        acc["C"] = acc["C"] + it.tau_a * f_bar_new[..., :, None] * x_w
        g_bar_use = -it.tau_a * _mv(xp, x_w, f_bar_new, axis=0)
        g_bar_use = xp.where(xp.isfinite(g_use), g_bar_use, xp.zeros_like(g_bar_use))
        # g' = relax(g, g_new), g_new = e log b − τ_b e LSE_i(f/e − Ĉ)
        g_bar_next = g_bar if self.parallel else g_bar + g_bar_use
        g_bar_old, g_bar_new = self._relax_adjoint(g, g_new, g_bar_next)
        acc["b"] = acc["b"] + e1 * _masked_ratio(xp, g_bar_new, self.b)
        w_w = ops.plan(fe, -s)  # columns sum to 1
        acc["C"] = acc["C"] + it.tau_b * w_w * g_bar_new[..., None, :]
        f_bar_in = -it.tau_b * _mv(xp, w_w, g_bar_new, axis=1)
        f_bar_in = xp.where(xp.isfinite(f), f_bar_in, xp.zeros_like(f_bar_in))
        if self.parallel:
            g_bar_old = g_bar_old + g_bar_use
        return f_bar_old + f_bar_in, g_bar_old


class _KernelStepAdjoint:
    """The adjoint of :meth:`_Iteration._kernel_step` at a recorded input ``(u, v)``;
    accumulates ``K̄`` in ``acc["K"]``."""

    def __init__(self, it: _Iteration):
        self.it = it
        self.xp = it.xp
        self.w = it.s.momentum
        self.parallel = it.s.parallel_dual_updates
        self.a, self.b = it.a, it.b

    def _relax_adjoint(self, old, new, bar):
        """Cotangents ``(old̄, new̄)`` of the geometric :meth:`_Iteration._relax`."""
        xp, w = self.xp, self.w
        zero = xp.zeros_like(bar)
        if w is None:
            return zero, bar
        pos = (old > 0) & (new > 0)
        one = xp.ones_like(new)
        old_s, new_s = xp.where(pos, old, one), xp.where(pos, new, one)
        mixed = old_s ** (1.0 - w) * new_s**w
        old_bar = xp.where(pos, bar * ((1.0 - w) * mixed / old_s), zero)
        new_bar = xp.where(pos, bar * (w * mixed / new_s), bar)
        return old_bar, new_bar

    def __call__(self, t, u, v, u_bar, v_bar, acc):
        it = self.it
        kern = it.ops.apply_kernel
        tau_a, tau_b = it.tau_a, it.tau_b
        # the forward step, recomputed
        kv = kern(u, axis=0)
        v_new = self.b / _pow(kv, tau_b)
        v_next = it._relax(v, v_new)
        v_use = v if self.parallel else v_next
        ku = kern(v_use, axis=1)
        u_new = self.a / _pow(ku, tau_a)
        # u' = relax(u, u_new), u_new = a / (K v_use)^τ_a
        u_bar_old, u_bar_new = self._relax_adjoint(u, u_new, u_bar)
        acc["a"] = acc["a"] + u_bar_new / _pow(ku, tau_a)
        ku_bar = -tau_a * u_bar_new * u_new / ku
        acc["K"] = acc["K"] + ku_bar[..., :, None] * v_use[..., None, :]
        v_bar_use = kern(ku_bar, axis=0)
        # v' = relax(v, v_new), v_new = b / (Kᵀ u)^τ_b
        v_bar_next = v_bar if self.parallel else v_bar + v_bar_use
        v_bar_old, v_bar_new = self._relax_adjoint(v, v_new, v_bar_next)
        acc["b"] = acc["b"] + v_bar_new / _pow(kv, tau_b)
        kv_bar = -tau_b * v_bar_new * v_new / kv
        acc["K"] = acc["K"] + u[..., :, None] * kv_bar[..., None, :]
        u_bar_in = kern(kv_bar, axis=1)
        if self.parallel:
            v_bar_old = v_bar_old + v_bar_use
        return u_bar_old + u_bar_in, v_bar_old


def potential_partials(out):
    """``(∂R/∂f, ∂R/∂g)`` of ``reg_ot_cost`` at ``out``'s potentials (0 at zero weights)."""
    xp = out.xp
    e1 = _xp.expand_dims_right(out.epsilon, 1)
    prob = out.prob
    gamma_a = marginal_target(xp, out.a, out.f, e1, prob.rho(prob.tau_a))
    gamma_b = marginal_target(xp, out.b, out.g, e1, prob.rho(prob.tau_b))
    zf = gamma_a - out.marginal(1)
    zg = gamma_b - out.marginal(0)
    return (
        xp.where(out.a > 0, zf, xp.zeros_like(zf)),
        xp.where(out.b > 0, zg, xp.zeros_like(zg)),
    )


def _record(out):
    """Re-run ``out``'s solve (same solver, same inputs), recording each step's input."""
    solver, prob = out.solver, out.prob
    f0, g0 = solver._initial_potentials(prob, None)
    it = _Iteration(solver, prob, prob.geom, prob.a, prob.b, prob.geom.epsilon)
    history = []
    with prob.geom.adapter.full_precision():
        state = it.run(f0, g0, unrolled=False, record=history)
    return it, history, state


def pullback(out, f_bar, g_bar):
    """Cotangents of the final potentials ``(f̄, ḡ)`` pulled back through the recorded
    iterations: ``(C̄, ā, b̄)``, ``C̄`` w.r.t. the scaled cost matrix ``(..., n, m)``."""
    it, history, state = _record(out)
    xp = it.xp
    n, m = out.geom.shape
    zero_c = xp.zeros(f_bar.shape[:-1] + (n, m), dtype=f_bar.dtype, device=_xp.device_of(f_bar))
    acc = {"a": xp.zeros_like(f_bar), "b": xp.zeros_like(g_bar), "C": zero_c, "K": zero_c}
    with out.geom.adapter.full_precision():
        if it.s.lse_mode:
            adjoint = _LogStepAdjoint(it)
            x_bar, y_bar = f_bar, g_bar
        else:  # f = ε log u: ū = ε f̄ / u (0 where u = 0, as safe_log's derivative)
            adjoint = _KernelStepAdjoint(it)
            x_bar = _masked_ratio(xp, it.e1 * f_bar, state["x"])
            y_bar = _masked_ratio(xp, it.e1 * g_bar, state["y"])
        for t in range(len(history) - 1, -1, -1):
            x, y = history[t]
            x_bar, y_bar = adjoint(t, x, y, x_bar, y_bar, acc)
        if not it.s.lse_mode:  # K = exp(-C/ε)
            kernel = out.geom.kernel_matrix(it.eps)
            acc["C"] = -acc["K"] * kernel / _xp.expand_dims_right(it.eps, 2)
    return acc["C"], acc["a"], acc["b"]
