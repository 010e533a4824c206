"""Reverse-mode derivatives of the barycenter, written once against the array API.

The adjoint of one log-domain IBP step (the paper's Algorithms 6.1/6.2 in potential
form; see :mod:`otcore.barycenter` for the step). With ``Ĉ = C/ε``, the step maps
``(γ, η)`` to ``(γ', η', log b)`` through::

    S1 = LSE_j(γ − Ĉ)        φ = log a − S1        S2 = LSE_i(φ − Ĉ)
    log b = Σ_s w_s S2_s + η        γ' = log b − S2
    S3 = LSE_i(η − Ĉ)        η' = (η + log b − S3) / 2          (debiased only)

Given cotangents ``(γ̄', η̄', l̄b)`` it returns ``(γ̄, η̄)`` and accumulates the cotangents of
``log a``, ``w`` and ``Ĉ``. The softmax weights of each LSE are plans of the geometry's
operators (``plan_apply``), so dense, online and grid geometries all work; kernel-mode
iterates are converted to log units first (the two modes are the same map).

Two reverse passes use it:

* unrolled: replay the stored iterates ``(γ_t, η_t)`` backwards (``record`` in
  :meth:`otcore.barycenter._IBP.run`), as in the paper;
* implicit (``implicit_diff``): at the fixed point ``z* = T(z*)`` iterate
  ``λ <- T_zᵀ λ + LB_zᵀ l̄b`` until it stops changing, then pull ``λ`` back through the
  step's parameters once. This is the unrolled recursion with every iterate replaced by
  the solution; it stores no history.
"""

from __future__ import annotations

import warnings

from otcore._lib import xp as _xp
from otcore.errors import ConvergenceWarning
from otcore.geometry.base import Geometry
from otcore.implicit.system import ImplicitDiff
from otcore.solvers.barycenter import (
    _IBP,
    _adjoint_tolerances,
    _Options,
    _prepare,
    barycenter,
    report,
)

__all__: list[str] = []


class _StepAdjoint:
    """The adjoint of :meth:`_IBP.log_step` at a given iterate."""

    def __init__(self, ibp: _IBP, need_cost: bool):
        self.ibp = ibp
        self.xp = ibp.xp
        self.ops = ibp.ops
        self.need_cost = need_cost
        # kernel mode: the softmax weights are applied with two kernel products instead
        # of exponentiating an n×m matrix (the forward pass already relies on K)
        self._apply = self.ops.plan_apply if ibp.opts.lse_mode else self._kernel_apply
        self._lse = self.ops.apply_lse if ibp.opts.lse_mode else self._kernel_lse

    def _kernel_lse(self, u, axis):
        return self.xp.log(self.ops.apply_kernel(self.xp.exp(u), axis=axis))

    def _kernel_apply(self, fe, ge, vec, axis):
        """``plan_apply`` as ``e^fe ⊙ K(e^ge ⊙ vec)`` (``axis=1``) or its transpose."""
        xp, kern = self.xp, self.ops.apply_kernel
        if axis == 1:
            return xp.exp(fe) * kern(xp.exp(ge) * vec, axis=1)
        return xp.exp(ge) * kern(xp.exp(fe) * vec, axis=0)

    def __call__(self, gam, eta, gam_bar, eta_bar, lb_bar_ext, acc):
        """``(γ̄, η̄)``; adds to ``acc["log_a"] (..., k, n)``, ``acc["w"] (..., k)`` and
        ``acc["C"] (n, m)`` (the latter cotangent is w.r.t. ``Ĉ``)."""
        xp, ops, ibp = self.xp, self.ops, self.ibp
        lse = self._lse
        debiased = ibp.opts.debiased
        s1 = lse(gam, axis=1)
        phi = ibp.log_a - s1
        s2 = lse(phi, axis=0)
        lb_bar = lb_bar_ext + xp.sum(gam_bar, axis=-2)
        if debiased:
            lb_bar = lb_bar + 0.5 * eta_bar
        acc["w"] = acc["w"] + xp.sum(lb_bar[..., None, :] * s2, axis=-1)
        s2_bar = ibp.w[..., :, None] * lb_bar[..., None, :] - gam_bar
        phi_bar = self._apply(phi, -s2, s2_bar, axis=1)
        phi_bar = xp.where(xp.isfinite(phi), phi_bar, xp.zeros_like(phi_bar))
        acc["log_a"] = acc["log_a"] + phi_bar
        s1_bar = -phi_bar
        gam_prev_bar = self._apply(-s1, gam, s1_bar, axis=0)
        if debiased:
            s3 = lse(eta, axis=0)
            s3_bar = -0.5 * eta_bar
            eta_prev_bar = 0.5 * eta_bar + lb_bar + self._apply(eta, -s3, s3_bar, axis=1)
        else:
            eta_prev_bar = xp.zeros_like(eta_bar)
        if self.need_cost:
            c_bar = -_collapse(xp, ops.plan(phi, -s2) * s2_bar[..., None, :])
            c_bar = c_bar - _collapse(xp, ops.plan(-s1, gam) * s1_bar[..., :, None])
            if debiased:
                c_bar = c_bar - _collapse(xp, ops.plan(eta, -s3) * s3_bar[..., None, :])
            acc["C"] = acc["C"] + c_bar
        return gam_prev_bar, eta_prev_bar


def _collapse(xp, t):
    """Sum all leading axes of ``t (..., n, m)`` into ``(n, m)``."""
    while t.ndim > 2:
        t = xp.sum(t, axis=0)
    return t


def _zero_acc(ibp, need_cost):
    xp = ibp.xp
    dt, dev = ibp.a.dtype, _xp.device_of(ibp.a)
    acc = {
        "log_a": xp.zeros(ibp.batch + (ibp.k, ibp.n), dtype=dt, device=dev),
        "w": xp.zeros(ibp.batch + (ibp.k,), dtype=dt, device=dev),
        "C": xp.zeros(ibp.geom.shape, dtype=dt, device=dev) if need_cost else None,
    }
    return acc


def _parameter_cotangents(ibp, A, acc):
    """``(Ā, w̄, C̄)`` from the accumulated log-space cotangents."""
    xp = ibp.xp
    log_a_bar = acc["log_a"]
    while log_a_bar.ndim > 2:
        log_a_bar = xp.sum(log_a_bar, axis=0)
    a_pos = ibp.a > 0
    a_bar = xp.where(a_pos, log_a_bar / xp.where(a_pos, ibp.a, xp.ones_like(ibp.a)), 0.0)
    c_bar = None if acc["C"] is None else acc["C"] / ibp.eps
    return xp.permute_dims(a_bar, (1, 0)), acc["w"], c_bar


def _reverse_unrolled(ibp, history, lb_bar, need_cost):
    """Replay ``history`` (the inputs ``(γ_t, η_t)`` of each step) backwards."""
    xp = ibp.xp
    adj = _StepAdjoint(ibp, need_cost)
    acc = _zero_acc(ibp, need_cost)
    gam_bar = xp.zeros_like(history[-1][0])
    eta_bar = xp.zeros_like(history[-1][1])
    ext = lb_bar
    for gam, eta in reversed(history):
        gam_bar, eta_bar = adj(gam, eta, gam_bar, eta_bar, ext, acc)
        ext = xp.zeros_like(lb_bar)
    return acc


def _reverse_fixed_point(ibp, gam, eta, lb_bar, need_cost, rtol, max_iter):
    """The implicit adjoint at the fixed point ``(γ*, η*)``: Neumann iterations of the
    step adjoint, then one pull-back to the parameters."""
    xp = ibp.xp
    adj = _StepAdjoint(ibp, need_cost=False)
    gam_bar = xp.zeros_like(gam)
    eta_bar = xp.zeros_like(eta)
    scratch = _zero_acc(ibp, False)
    converged = False
    for _ in range(max_iter):
        # the gauge (γ_s + c_s with Σ_s w_s c_s = 0 leaves b unchanged) is an eigenvalue-1
        # direction of the step; log b does not see it, so the adjoint iterates never
        # grow along it and converge at the forward iteration's rate
        g_new, e_new = adj(gam, eta, gam_bar, eta_bar, lb_bar, scratch)
        change = xp.sqrt(xp.sum((g_new - gam_bar) ** 2) + xp.sum((e_new - eta_bar) ** 2))
        size = xp.sqrt(xp.sum(g_new * g_new) + xp.sum(e_new * e_new))
        gam_bar, eta_bar = g_new, e_new
        if bool(change <= rtol * size):
            converged = True
            break
    acc = _zero_acc(ibp, need_cost)
    _StepAdjoint(ibp, need_cost)(gam, eta, gam_bar, eta_bar, lb_bar, acc)
    return acc, converged


def barycenter_vjp(call):
    """Manual VJP of :func:`otcore.barycenter` w.r.t. ``A``, a cost matrix and ``weights``
    (a bound call: every option is read from it, with the entry point's own defaults)."""
    if call["return_output"]:
        raise TypeError("differentiate barycenter with return_output=False (the histogram)")
    implicit_diff = call["implicit_diff"]
    if implicit_diff is not None and not isinstance(implicit_diff, ImplicitDiff):
        raise TypeError(
            f"implicit_diff must be None or an ImplicitDiff, got {type(implicit_diff).__name__}"
        )
    opts = _Options(
        call["lse_mode"],
        call["debiased"],
        call["threshold"],
        call["inner_iterations"],
        call["min_iterations"],
        call["max_iterations"],
    )
    cg, weights = call["C_or_geometry"], call["weights"]
    geom, A, w = _prepare(call["A"], cg, weights, call["epsilon"], opts.debiased)
    cost_is_array = not isinstance(cg, Geometry)
    ibp = _IBP(geom, A, w, opts)
    history = [] if implicit_diff is None else None
    with geom.adapter.full_precision(), geom.adapter.quiet_float_errors():
        state = ibp.run(unrolled=False, record=history)
    out = ibp.output(state)
    report(geom.adapter, out, opts)
    b = out.histogram
    n_args = call.n_positional

    def vjp_fn(cotangent):
        with geom.adapter.full_precision(), geom.adapter.quiet_float_errors():
            lb_bar = cotangent * b
            if implicit_diff is None:
                acc = _reverse_unrolled(ibp, history, lb_bar, cost_is_array)
            else:
                gam, eta = ibp.to_log(state["y"], state["z"])
                rtol, max_iter = _adjoint_tolerances(implicit_diff, b.dtype, ibp.xp)
                acc, converged = _reverse_fixed_point(
                    ibp, gam, eta, lb_bar, cost_is_array, rtol, max_iter
                )
                if not converged:
                    warnings.warn(
                        f"the barycenter's fixed-point adjoint did not reach rtol={rtol} in "
                        f"{max_iter} iterations (solver_kwargs 'rtol'/'max_iter'); is the "
                        "forward solve converged?",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
            a_bar, w_bar, c_bar = _parameter_cotangents(ibp, A, acc)
        if weights is None:
            w_bar = None
        out_args = [a_bar, c_bar if cost_is_array else None, w_bar]
        return tuple(out_args[:n_args]) + (None,) * max(0, n_args - 3)

    return b, vjp_fn


def register(registry):
    """Add the rule of :func:`otcore.barycenter`."""
    registry.add(barycenter, vjp=barycenter_vjp)
