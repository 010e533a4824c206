"""Implicit differentiation of the Sinkhorn potentials, written once for every backend.

Optimality conditions (mass units; ``P_ij = exp((f_i + g_j - C_ij)/ε)``)::

    G(f, g; θ) = [ P1 - γ_a ; Pᵀ1 - γ_b ],   γ_a = a exp(-(f - ε log a)/ρ_a)   (γ_a = a if balanced)

with θ = (cost data, a, b, ε). Their Jacobian in ``z = (f, g)`` is ``S / ε`` with the
symmetric positive semi-definite matrix::

    S = [[diag(r + ε γ_a / ρ_a), P], [Pᵀ, diag(c + ε γ_b / ρ_b)]],   r = P1,  c = Pᵀ1.

So ``dz/dθ = -ε S⁻¹ ∂G/∂θ`` and a cotangent ``z̄`` pulls back to
``θ̄ = -ε (∂G/∂θ)ᵀ w`` with ``S w = z̄``. The system is solved matrix-free (products
with ``P`` and ``Pᵀ`` only) on the Schur complement of the larger block. Balanced problems
have the null space ``k = (1, -1)`` (the potentials' gauge): the right-hand side and the
solution are projected orthogonally to it, so no ridge is needed; cotangents of the
weights are then defined up to a constant, as the balanced problem itself is only defined
on the simplex. Zero weights are removed from the system (their potentials are ``-inf``).
"""

from __future__ import annotations

import math
import numbers

from otcore._lib import xp as _xp
from otcore.implicit.linear_solvers import cg, default_tolerances, normal_cg

__all__ = ["ImplicitDiff", "ImplicitSystem"]

_SOLVER_KWARGS = ("ridge_kernel", "ridge_identity", "rtol", "atol", "max_iter")


class ImplicitDiff:
    """Differentiate Sinkhorn's output through its optimality conditions.

    Args:
        solver: ``"auto"`` or ``"cg"`` (preconditioned conjugate gradients on the Schur
            complement), ``"normal_cg"`` (CG on the normal equations), or a callable
            ``solver(matvec, rhs, **solver_kwargs) -> x`` for the symmetric positive
            semi-definite Schur system ``(..., k)`` (array API code; ``matvec`` maps arrays
            shaped like ``rhs``).
        solver_kwargs: ``rtol``, ``atol``, ``max_iter`` (stopping rule
            ``|r| <= max(rtol |b|, atol)``; defaults: ``rtol=1e-13, atol=1e-15`` in
            float64, ``rtol=1e-5, atol=1e-8`` in float32, the default ``atol`` times
            the plan's mass when that is below 1), ``ridge_kernel`` (adds
            ``ridge · k kᵀ`` in balanced problems) and ``ridge_identity`` (adds
            ``ridge · I``). Ridges are not needed: the null space is projected out.
        symmetric: accepted for compatibility with OTT-JAX; otcore's system is always the
            symmetric one (OTT's identity preconditioner with ``symmetric=True``).
        precondition_fun: ``None`` only: the conditions are used in mass units (see the
            module docstring); the solution does not depend on this choice.

    Example:
        >>> import numpy as np, otcore as ot
        >>> solver = ot.Sinkhorn(implicit_diff=ot.ImplicitDiff(solver_kwargs={"rtol": 1e-8}))
        >>> solver.implicit_diff.solver_kwargs["rtol"]
        1e-08
    """

    def __init__(self, solver="auto", solver_kwargs=None, symmetric=False, precondition_fun=None):
        if not (solver in ("auto", "cg", "normal_cg") or callable(solver)):
            raise ValueError(
                f"solver must be 'auto', 'cg', 'normal_cg' or a callable, got {solver!r}"
            )
        solver_kwargs = dict(solver_kwargs or {})
        if not callable(solver):
            unknown = sorted(set(solver_kwargs) - set(_SOLVER_KWARGS))
            if unknown:
                raise ValueError(
                    f"unknown solver_kwargs {unknown}; expected a subset of {list(_SOLVER_KWARGS)}"
                )
        for key in ("ridge_kernel", "ridge_identity", "rtol", "atol"):
            value = solver_kwargs.get(key, 0.0)
            if not isinstance(value, numbers.Real) or value < 0:
                raise ValueError(f"solver_kwargs[{key!r}] must be a number >= 0, got {value!r}")
        if precondition_fun is not None:
            raise ValueError(
                "precondition_fun must be None: otcore solves the symmetric system in mass "
                "units, whose solution is the same for every preconditioner"
            )
        self.solver = solver
        self.solver_kwargs = solver_kwargs
        self.symmetric = bool(symmetric)
        self.precondition_fun = precondition_fun

    def __repr__(self):
        return f"ImplicitDiff(solver={self.solver!r}, solver_kwargs={self.solver_kwargs!r})"


class ImplicitSystem:
    """The linear system of the implicit function theorem at a solution ``(f, g)``.

    Args:
        prob: the :class:`~otcore.LinearProblem` (its arrays may carry autodiff history;
            everything here is differentiable array API code).
        f, g: potentials ``(..., n)``, ``(..., m)`` at (or near) the fixed point.
        implicit: the :class:`ImplicitDiff` options.
    """

    def __init__(self, prob, f, g, implicit: ImplicitDiff):
        self.prob = prob
        self.geom = geom = prob.geom
        self.xp = xp = geom.xp
        self.adapter = geom.adapter
        self.implicit = implicit
        self.f, self.g = f, g
        self.eps = eps = geom.epsilon
        self.e1 = e1 = _xp.expand_dims_right(eps, 1)
        self.ops = geom.operators(eps)
        self.fe, self.ge = _xp.divide_potential(xp, f, e1), _xp.divide_potential(xp, g, e1)
        self.apply_p, self.apply_pt = self.ops.plan_operator(self.fe, self.ge)
        self.mask_a = prob.a > 0
        self.mask_b = prob.b > 0
        self.r, self.c = self.ops.marginals(self.fe, self.ge)
        self.gamma_a = marginal_target(xp, prob.a, f, e1, prob.rho(prob.tau_a))
        self.gamma_b = marginal_target(xp, prob.b, g, e1, prob.rho(prob.tau_b))
        self.diag_a = self.r + _ratio(e1, prob.rho(prob.tau_a)) * self.gamma_a
        self.diag_b = self.c + _ratio(e1, prob.rho(prob.tau_b)) * self.gamma_b
        self._log_diag = None

    @property
    def log_diags(self):
        """``(log diag_a, log diag_b)`` held constant (no derivative), 0 where removed:
        the scales of :meth:`conditions` and :meth:`solve` with ``scaled=True``. Formed
        from log-sum-exps, so finite where the plan's row or column mass underflows."""
        if self._log_diag is None:
            prob, xp, ops, fe, ge, e1 = self.prob, self.xp, self.ops, self.fe, self.ge, self.e1
            la = _log_diag(xp, fe + ops.apply_lse(ge, axis=1), prob.a, self.f, e1, prob, prob.tau_a)
            lb = _log_diag(xp, ge + ops.apply_lse(fe, axis=0), prob.b, self.g, e1, prob, prob.tau_b)
            # constant: every derivative (cost, ε, weights, potentials) is cut here
            self._log_diag = (self.adapter.stop_gradient(la), self.adapter.stop_gradient(lb))
        return self._log_diag

    # -- the operator ---------------------------------------------------------------
    def matvec(self, wu, wv):
        """``S (wu, wv)``."""
        return self.diag_a * wu + self.apply_p(wv), self.apply_pt(wu) + self.diag_b * wv

    def conditions(self, scaled: bool = False):
        """``G(f, g; θ)`` (masked at zero weights): zero at the fixed point.

        ``scaled=True``: ``D̂⁻¹ G`` with ``D̂ = diag(S)`` held constant (no derivative),
        computed from the plan and targets divided inside their exponentials, so that
        rows or columns whose mass is subnormal keep finite derivatives. Its pull-back of
        ``ŵ = D̂ w`` (``solve(..., scaled=True)``) equals the pull-back of ``G`` with ``w``.
        """
        xp = self.xp
        zero_a, zero_b = xp.zeros_like(self.r), xp.zeros_like(self.c)
        if not scaled:
            ga, gb = self.r - self.gamma_a, self.c - self.gamma_b
        else:
            prob, e1 = self.prob, self.e1
            la, lb = self.log_diags
            ra, _ = self.ops.marginals(self.fe - la, self.ge)
            _, cb = self.ops.marginals(self.fe, self.ge - lb)
            ta = marginal_target(xp, prob.a, self.f, e1, prob.rho(prob.tau_a), log_scale=la)
            tb = marginal_target(xp, prob.b, self.g, e1, prob.rho(prob.tau_b), log_scale=lb)
            ga, gb = ra - ta, cb - tb
        return xp.where(self.mask_a, ga, zero_a), xp.where(self.mask_b, gb, zero_b)

    # -- the solve -----------------------------------------------------------------
    def _kernel(self):
        xp = self.xp
        ka = xp.astype(self.mask_a, self.f.dtype)
        kb = -xp.astype(self.mask_b, self.g.dtype)
        return ka, kb

    def _project(self, u, v):
        """Remove the component along the gauge direction ``k = (1, -1)`` (balanced)."""
        if not self.prob.is_balanced:
            return u, v
        xp = self.xp
        ka, kb = self._kernel()
        kk = xp.sum(ka * ka, axis=-1, keepdims=True) + xp.sum(kb * kb, axis=-1, keepdims=True)
        t = (xp.sum(u * ka, axis=-1, keepdims=True) + xp.sum(v * kb, axis=-1, keepdims=True)) / kk
        return u - t * ka, v - t * kb

    def solve(self, zu, zv, scaled: bool = False):
        """``w = S⁺ z`` (projected for balanced problems), shapes like ``(f, g)``.

        ``scaled=True`` returns ``ŵ = D̂ w`` (``D̂ = diag(S)``), to be pulled back through
        ``conditions(scaled=True)``: in an unbalanced problem the larger block of ``ŵ``
        is formed without dividing by its diagonal, so a row (or column) whose plan mass
        is subnormal, where ``w`` itself overflows, keeps a finite cotangent.
        """
        xp = self.xp
        zu = xp.where(self.mask_a, zu, xp.zeros_like(zu))
        zv = xp.where(self.mask_b, zv, xp.zeros_like(zv))
        zu, zv = self._project(zu, zv)
        if scaled and self.prob.is_balanced:
            # the gauge projection needs w itself (balanced diagonals are the weights)
            wu, wv = self.solve(zu, zv)
            return self.diag_a * wu, self.diag_b * wv
        n, m = self.geom.shape
        if n >= m:
            wu, wv = self._schur_solve(
                zu,
                zv,
                self.diag_a,
                self.diag_b,
                self.mask_a,
                self.mask_b,
                self.apply_p,
                self.apply_pt,
                first=True,
                scaled=scaled,
            )
        else:
            wv, wu = self._schur_solve(
                zv,
                zu,
                self.diag_b,
                self.diag_a,
                self.mask_b,
                self.mask_a,
                self.apply_pt,
                self.apply_p,
                first=False,
                scaled=scaled,
            )
        if scaled:
            return wu, wv
        return self._project(wu, wv)

    def _schur_solve(
        self, z_big, z_small, d_big, d_small, m_big, m_small, to_big, to_small, first, scaled
    ):
        """Eliminate the larger block: ``(D_s - Bᵀ D_b⁻¹ B) w_s = z_s - Bᵀ D_b⁻¹ z_b``.

        ``scaled``: return ``(D_b w_b, D_s w_s)``, with ``Bᵀ D_b⁻¹`` applied as the plan
        whose larger side is divided by its diagonal inside the exponential."""
        xp = self.xp

        # divide by the diagonals, never multiply by their inverses: a row or column of
        # the plan that holds only subnormal values has a diagonal whose inverse
        # overflows (1/1e-40 = inf in float32), and inf·0 is NaN, while the quotients
        # below stay finite (|(P v)_i| <= d_i max|v|)
        def over_big(u):
            return _safe_divide(xp, u, d_big, m_big)

        def over_small(u):
            return _safe_divide(xp, u, d_small, m_small)

        opts = self.implicit.solver_kwargs
        ridge_i = float(opts.get("ridge_identity", 0.0))
        ridge_k = float(opts.get("ridge_kernel", 0.0)) if self.prob.is_balanced else 0.0
        ones_small = xp.astype(m_small, d_small.dtype)

        def schur(v):
            out = d_small * v - to_small(over_big(to_big(v)))
            if ridge_i:
                out = out + ridge_i * v
            if ridge_k:
                out = out + ridge_k * xp.sum(ones_small * v, axis=-1, keepdims=True) * ones_small
            return xp.where(m_small, out, xp.zeros_like(out))

        if scaled:
            return self._schur_solve_scaled(z_big, z_small, m_big, m_small, first)
        rhs = z_small - to_small(over_big(z_big))
        rhs = xp.where(m_small, rhs, xp.zeros_like(rhs))
        w_small = self._run_solver(schur, rhs, over_small)
        w_big = over_big(z_big - to_big(w_small))
        return w_big, w_small

    def _schur_solve_scaled(self, z_big, z_small, m_big, m_small, first):
        """``(D_b w_b, D_s w_s)`` of the Schur solve, every product taken with a plan
        whose diagonals are divided inside the exponential (log-domain diagonals
        ``l = log D``, never ``1/D``): CG runs on ``u = E⁻¹ w_s`` with ``E = exp(-s)``,
        ``s = l_s/2``, i.e. on ``E (D_s - Pᵀ D_b⁻¹ P) E`` (unit diagonal part), with
        ``D_b w_b = z_b - (P E) u`` and ``D_s w_s = exp(l_s - s) u``; ``cap`` is
        ``0.45 log(max float)``.
        Rows or columns of the larger block keep exact cotangents whatever their mass
        (subnormal, or underflowed to 0); in the smaller block down to masses of
        ``exp(-4 cap) = max float ** -1.8`` (about ``1e-69`` in float32). Smaller-block
        entries of still smaller mass (whose ``u`` would overflow) are left out of the
        system, as if decoupled: finite, and their own cotangent is then ``D_s w_s = 0``.
        """
        xp = self.xp
        la, lb = self.log_diags
        l_big, l_small = (la, lb) if first else (lb, la)
        cap = 0.45 * math.log(float(xp.finfo(l_small.dtype).max))
        m_small = m_small & (l_small > -4 * cap)
        s = xp.where(m_small, 0.5 * l_small, xp.zeros_like(l_small))

        def pair(shift_big, shift_small):
            """``(small -> big, big -> small)`` products with ``exp(-shift)``-scaled sides."""
            if first:
                return self.ops.plan_operator(self.fe - shift_big, self.ge - shift_small)
            to_small, to_big = self.ops.plan_operator(self.fe - shift_small, self.ge - shift_big)
            return to_big, to_small

        q_big, q_small = pair(0.5 * l_big, s)  # D_b^{-1/2} P E and its transpose
        _, r_small = pair(l_big, s)  # (D_b⁻¹ P E)ᵀ
        pe_big, _ = pair(xp.zeros_like(l_big), s)  # P E
        diag = xp.where(m_small, xp.exp(l_small - 2 * s), xp.ones_like(s))
        ridge_i = float(self.implicit.solver_kwargs.get("ridge_identity", 0.0))
        zero_s = xp.zeros_like(z_small)

        def schur(u):
            out = diag * u - q_small(q_big(u))
            if ridge_i:
                out = out + ridge_i * xp.exp(-2 * s) * u
            return xp.where(m_small, out, zero_s)

        z_big = xp.where(m_big, z_big, xp.zeros_like(z_big))
        rhs = xp.where(m_small, xp.exp(-s) * z_small - r_small(z_big), zero_s)
        # the stopping rule in the units of the unscaled system (r · exp(s)): scaled
        # residuals of tiny-mass entries would otherwise hide all the others
        u = self._run_solver(
            schur, rhs, lambda r: xp.where(m_small, r / diag, zero_s), weight=xp.exp(s)
        )
        w_big = xp.where(m_big, z_big - pe_big(u), xp.zeros_like(z_big))
        return w_big, xp.where(m_small, xp.exp(l_small - s) * u, zero_s)

    def _run_solver(self, matvec, rhs, precond, weight=None):
        xp = self.xp
        opts = dict(self.implicit.solver_kwargs)
        solver = self.implicit.solver
        if callable(solver):
            return solver(matvec, rhs, **opts)
        rtol0, atol0 = default_tolerances(rhs.dtype == xp.float64)
        if "atol" in opts:
            atol = opts["atol"]
        else:
            # the default floor is in units of the plan's mass (the system scales with
            # it): a plan of total mass 1e-10 would otherwise stop at once, its correction
            # dropped, wherever the right-hand side is marginal-error sized
            mass = self.adapter.stop_gradient(xp.sum(self.r, axis=-1, keepdims=True))
            atol = atol0 * xp.minimum(mass, xp.ones_like(mass))
        kw = {
            "rtol": opts.get("rtol", rtol0),
            "atol": atol,
            "max_iter": opts.get("max_iter"),
        }
        if solver == "normal_cg":
            return normal_cg(self.adapter, matvec, rhs, **kw)
        return cg(self.adapter, matvec, rhs, precond=precond, weight=weight, **kw)

    # -- pulling back --------------------------------------------------------------
    def pullback(self, wu, wv):
        """``θ̄ = -ε (∂G/∂θ)ᵀ w`` for ``geom.differentiable_arrays()`` and ``a, b``.

        The cost-matrix cotangent ``C̄ = P ∘ (wu ⊕ wv)`` is formed one row block at a
        time and handed to the geometry's :meth:`~otcore.Geometry.cost_pullback` (points,
        matrix or grid axes). This hand-written pull-back serves the manual rules
        (NumPy, CuPy); autodiff backends differentiate :meth:`conditions` instead. Returns
        a tuple aligned with ``geom.differentiable_arrays() + (a, b)``.
        """
        geom, prob = self.geom, self.prob
        grads = list(geom.cost_pullback(self._cost_cotangent_blocks(wu, wv)))
        if geom.has_epsilon_array:
            grads.append(geom.epsilon_pullback(self._epsilon_cotangent(wu, wv)))
        grads.append(self._weight_cotangent(prob.a, wu, self.gamma_a, prob.tau_a))
        grads.append(self._weight_cotangent(prob.b, wv, self.gamma_b, prob.tau_b))
        return tuple(grads)

    def _cost_cotangent_blocks(self, wu, wv):
        """``(start, C̄[start:start+k])`` with ``C̄ = P ∘ (wu ⊕ wv)``, by row blocks."""
        start = 0
        for p_blk, _ in self.ops.plan_blocks(self.fe, self.ge, 1):
            k = p_blk.shape[-2]
            yield start, p_blk * (wu[..., start : start + k, None] + wv[..., None, :])
            start += k

    def _weight_cotangent(self, w, wz, gamma, tau):
        xp = self.xp
        pos = w > 0
        if tau == 1.0:
            d = self.e1 * wz
        else:
            w_safe = xp.where(pos, w, xp.ones_like(w))
            d = self.e1 * wz * gamma / (tau * w_safe)
        return _xp.unbroadcast(xp, xp.where(pos, d, xp.zeros_like(d)), w.shape)

    def _epsilon_cotangent(self, wu, wv):
        """``ε̄``: the cotangent of the resolved ε (the geometry maps it to its array)."""
        xp = self.xp
        prob = self.prob
        total = 0.0
        start = 0
        for p_blk, ce in self.ops.plan_blocks(self.fe, self.ge, 1):
            k = p_blk.shape[-2]
            log_p = self.fe[..., start : start + k, None] + self.ge[..., None, :] - ce
            plogp = xp.where(
                p_blk > 0, p_blk * xp.where(p_blk > 0, log_p, 0.0 * log_p), 0.0 * log_p
            )
            weights = wu[..., start : start + k, None] + wv[..., None, :]
            total = total + xp.sum(weights * plogp, axis=(-2, -1))
            start += k
        for w, h, wz, gamma, tau in (
            (prob.a, self.f, wu, self.gamma_a, prob.tau_a),
            (prob.b, self.g, wv, self.gamma_b, prob.tau_b),
        ):
            if tau == 1.0:
                continue
            rho = _xp.expand_dims_right(prob.rho(tau), 1)
            pos = w > 0
            h_safe = xp.where(pos, h, xp.zeros_like(h))
            total = total + xp.sum(xp.where(pos, wz * gamma * h_safe / rho, 0.0 * h_safe), axis=-1)
        return total


def marginal_target(xp, w, h, e1, rho, log_scale=None):
    """``γ = w exp(-(h - ε log w)/ρ)`` (``w`` when balanced), 0 where ``w == 0``.

    ``log_scale`` (an array like ``h``): ``γ / exp(log_scale)``, divided inside the
    exponential (finite where ``exp(log_scale)`` is subnormal)."""
    if isinstance(rho, float) and math.isinf(rho):
        return w if log_scale is None else w * xp.exp(-log_scale)
    pos = w > 0
    h_tilde = xp.where(pos, h, xp.zeros_like(h)) - e1 * _xp.safe_log(
        xp, xp.where(pos, w, 1.0 + 0 * w)
    )
    expo = -h_tilde / _xp.expand_dims_right(rho, 1)
    if log_scale is not None:
        expo = expo - log_scale
    return xp.where(pos, w * xp.exp(expo), xp.zeros_like(h_tilde))


def _log_diag(xp, log_r, w, h, e1, prob, tau):
    """``log(r + ε γ / ρ)`` from ``log r`` (a log-sum-exp), 0 where ``w == 0``."""
    pos = w > 0
    zero = xp.zeros_like(log_r)
    log_r = xp.where(pos, log_r, zero)
    ratio = _ratio(e1, prob.rho(tau))
    if isinstance(ratio, float) and ratio == 0.0:
        return log_r
    w_safe = xp.where(pos, w, xp.ones_like(w))
    h_safe = xp.where(pos, h, zero)
    log_t = xp.log(ratio * xp.ones_like(log_r)) + xp.log(w_safe)
    log_t = log_t - (h_safe - e1 * xp.log(w_safe)) / _xp.expand_dims_right(prob.rho(tau), 1)
    top = xp.maximum(log_r, log_t)
    out = top + xp.log(xp.exp(log_r - top) + xp.exp(log_t - top))
    return xp.where(pos & xp.isfinite(out), out, zero)


def _ratio(e1, rho):
    if isinstance(rho, float) and math.isinf(rho):
        return 0.0
    return e1 / _xp.expand_dims_right(rho, 1)


def _safe_divide(xp, u, d, mask):
    """``u / d`` where ``mask & (d > 0)``, 0 elsewhere (removed rows, underflowed
    diagonals); a quotient, not ``u · (1/d)``, whose inverse overflows at subnormal ``d``."""
    ok = mask & (d > 0)
    return xp.where(ok, u / xp.where(ok, d, xp.ones_like(d)), xp.zeros_like(u))
