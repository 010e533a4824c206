"""Manual first- and second-order rules of :func:`otcore.reg_ot_cost` (no-autodiff backends).

``R(θ) = R̃(z*(θ), θ)`` where ``z* = (f, g)`` solves the optimality conditions
``G(z, θ) = 0`` and ``R̃`` (the dual objective) is stationary in ``z`` at ``z*``:

* gradient: ``∇R = ∂_θ R̃`` (envelope), plus, when ``use_danskin=False``, the implicit
  term ``(∂_θ G)ᵀ`` pulled back from ``z̄ = ∂_z R̃`` (zero at the exact optimum);
* Hessian-vector product along ``δθ``: ``∂_θ(∂_θ R̃)[δθ] + ∂_z(∂_θ R̃)[ż]`` with the
  tangent of the potentials ``ż = -ε S⁻¹ ∂_θ G[δθ]`` from the implicit system (one linear
  solve per product; analytic, no finite differences).
"""

from __future__ import annotations

import enum

from otcore._lib import xp as _xp
from otcore.api import _cost_matrix_output, _point_cloud_output, reg_ot_cost, reg_ot_cost_matrix
from otcore.autodiff import sinkhorn_unrolled_rules as _sinkhorn_unrolled
from otcore.geometry.pointcloud import PointCloud
from otcore.implicit.system import ImplicitDiff, ImplicitSystem


class Arguments(enum.Enum):
    """The differentiable positional arguments of a cost entry point, in order."""

    POINTS = ("x", "y", "a", "b")  # reg_ot_cost
    MATRIX = ("cost_matrix", "a", "b")  # reg_ot_cost_matrix

    def inputs(self, call):
        return tuple(call[name] for name in self.value)


def _solve(call):
    """The solve of a bound ``reg_ot_cost`` call, with the entry point's own defaults."""
    return _point_cloud_output(**call.flat())


def _system(out):
    return ImplicitSystem(out.prob, out.f, out.g, out.solver.implicit_diff or ImplicitDiff())


def _side(out, side):
    """``(w, h, tau, other, e)`` of one side; ``e = exp(-h̃/ρ)`` (1 when balanced)."""
    xp = out.xp
    if side == "a":
        w, h, tau, other = out.a, out.f, out.prob.tau_a, out.b
    else:
        w, h, tau, other = out.b, out.g, out.prob.tau_b, out.a
    eps = _xp.expand_dims_right(out.epsilon, 1)
    pos = w > 0
    w_safe = xp.where(pos, w, xp.ones_like(w))
    h_tilde = xp.where(pos, h, xp.zeros_like(h)) - eps * xp.log(w_safe)
    e = 1.0 if tau == 1.0 else xp.exp(-h_tilde / _xp.expand_dims_right(out.prob.rho(tau), 1))
    return w, h_tilde, tau, other, e


def _weight_gradient(out, side):
    """``∂R̃/∂w``: balanced ``h̃ - ε``; unbalanced ``-ρ(e - 1) - ε e`` (``e - 1`` formed
    with ``expm1``: it keeps its digits when ``ρ ≫ |h̃|``); plus ``ε Σ other``."""
    xp = out.xp
    w, h_tilde, tau, other, e = _side(out, side)
    eps = _xp.expand_dims_right(out.epsilon, 1)
    if tau == 1.0:
        d = h_tilde - eps
    else:
        rho = _xp.expand_dims_right(out.prob.rho(tau), 1)
        d = -rho * xp.expm1(-h_tilde / rho) - eps * e
    # zero weights: like the autodiff backends (masked terms), only the mass term remains
    d = xp.where(w > 0, d, xp.zeros_like(d))
    return d + eps * xp.sum(other, axis=-1)[..., None]


def _points_gradients(out, weights):
    """Pull a scaled-cost cotangent ``weights (..., n, m)`` back to ``(dx, dy)``."""
    geom = out.geom
    return geom.cost_fn.vjp(geom.x, geom.y, weights * _xp.expand_dims_right(geom.inv_scale_cost, 2))


def _assemble(xp, kind, inputs, dx, dy, da, db, n_args):
    """One cotangent per positional argument (``n_args``, at least one), in ``kind``'s order."""
    *points, a, b = inputs
    if kind is Arguments.MATRIX:
        head = (_xp.unbroadcast(xp, dx, points[0].shape),)
    elif points[1] is None:  # y is x: both slots' cotangents go to x
        head = (
            _xp.unbroadcast(xp, dx, points[0].shape) + _xp.unbroadcast(xp, dy, points[0].shape),
            None,
        )
    else:
        head = (_xp.unbroadcast(xp, dx, points[0].shape), _xp.unbroadcast(xp, dy, points[1].shape))
    da_out = None if a is None else _xp.unbroadcast(xp, da, a.shape)
    db_out = None if b is None else _xp.unbroadcast(xp, db, b.shape)
    return (*head, da_out, db_out)[: max(n_args, 1)]


def reg_ot_cost_vjp(call):
    """Manual VJP of :func:`~otcore.reg_ot_cost` w.r.t. ``(x, y, a, b)`` (a bound call)."""
    out = _solve(call)
    return _vjp_from_output(Arguments.POINTS, Arguments.POINTS.inputs(call), out, call.n_positional)


def _vjp_from_output(kind, inputs, out, n_args):
    """``(value, vjp_fn)`` of the cost at solution ``out``; ``inputs`` are the entry
    point's arguments in ``kind``'s order (the envelope, implicit or unrolled rule, as
    ``out.solver`` says)."""
    value = out.reg_ot_cost
    xp = out.xp

    def vjp_fn(ct):
        ct = xp.asarray(ct, dtype=value.dtype)
        c2, c1 = ct[..., None, None], ct[..., None]
        if kind is Arguments.MATRIX:
            dx, dy = c2 * out.matrix * _xp.expand_dims_right(out.geom.inv_scale_cost, 2), None
        else:
            dx, dy = _points_gradients(out, c2 * out.matrix)
        da = c1 * _weight_gradient(out, "a")
        db = c1 * _weight_gradient(out, "b")
        if out.solver.implicit_diff is None and not out.solver.use_danskin:
            # unrolled: back through the iterations the forward pass ran
            zu, zv = _sinkhorn_unrolled.potential_partials(out)
            c_bar, ua, ub = _sinkhorn_unrolled.pullback(out, c1 * zu, c1 * zv)
            if kind is Arguments.MATRIX:
                dx = dx + c_bar * _xp.expand_dims_right(out.geom.inv_scale_cost, 2)
            else:
                ux, uy = _points_gradients(out, c_bar)
                dx, dy = dx + ux, dy + uy
            da, db = da + ua, db + ub
        elif not out.solver.use_danskin:
            system = _system(out)
            zu = xp.where(out.a > 0, system.gamma_a - system.r, xp.zeros_like(system.r))
            zv = xp.where(out.b > 0, system.gamma_b - system.c, xp.zeros_like(system.c))
            wu, wv = system.solve(c1 * zu, c1 * zv)
            pulled = system.pullback(wu, wv)
            k = len(out.geom.data_arrays())
            if k == 1:
                dx = dx + (pulled[0] if dy is None else _xp.unbroadcast(xp, pulled[0], dx.shape))
            else:
                dx, dy = dx + pulled[0], dy + pulled[1]
            da, db = da + pulled[-2], db + pulled[-1]
        return _assemble(xp, kind, inputs, dx, dy, da, db, n_args)

    return value, vjp_fn


def reg_ot_cost_matrix_vjp(call):
    """Manual VJP of :func:`~otcore.reg_ot_cost_matrix` w.r.t. ``(cost_matrix, a, b)``."""
    out = _cost_matrix_output(**call.flat())
    return _vjp_from_output(Arguments.MATRIX, Arguments.MATRIX.inputs(call), out, call.n_positional)


class JointHVP:
    """Hessian-vector products of ``reg_ot_cost`` at one solution, in every argument.

    ``__call__(dx, dy, da, db)`` (``None`` for no motion) returns ``(hx, hy, ha, hb)``:
    the Hessian of ``reg_ot_cost`` w.r.t. (geometry points ``x``, ``y``, weights ``a``,
    ``b``) applied to that direction. When the geometry's ``y`` is its ``x`` the caller moves
    both slots and sums ``hx + hy``; ``hx, hy`` are ``None`` for cost-matrix geometries.
    """

    def __init__(self, out):
        self.out = out
        self.xp = out.xp
        self.system = _system(out)
        self.plan = out.matrix
        self.e1 = _xp.expand_dims_right(out.epsilon, 1)
        self.e2 = _xp.expand_dims_right(out.epsilon, 2)
        self.points = isinstance(out.geom, PointCloud)

    def _weight_forcing(self, side, v):
        """``∂G/∂w · δw`` for one side (masked)."""
        xp, system = self.xp, self.system
        w, _, tau, _, _ = _side(self.out, side)
        pos = w > 0
        w_safe = xp.where(pos, w, xp.ones_like(w))
        gamma = system.gamma_a if side == "a" else system.gamma_b
        g_w = -v if tau == 1.0 else -gamma * v / (tau * w_safe)
        return xp.where(pos, g_w, xp.zeros_like(g_w))

    def _weight_response(self, side, z_side, v):
        """``d(∂R̃/∂w)`` from the potential's tangent and the own direction ``v``."""
        xp = self.xp
        w, _, tau, _, e = _side(self.out, side)
        pos = w > 0
        w_safe = xp.where(pos, w, xp.ones_like(w))
        h_dot = z_side if v is None else z_side - self.e1 * v / w_safe
        return xp.where(pos, (e / tau) * h_dot, xp.zeros_like(h_dot))

    def __call__(self, dx=None, dy=None, da=None, db=None):
        xp, out, system, plan = self.xp, self.out, self.system, self.plan
        geom, e1, e2 = out.geom, self.e1, self.e2
        g_u = xp.zeros_like(system.r)
        g_v = xp.zeros_like(system.c)
        c_dot = 0.0
        moves_points = self.points and (dx is not None or dy is not None)
        if moves_points:
            s2 = _xp.expand_dims_right(geom.inv_scale_cost, 2)
            c_dot = geom.cost_fn.jvp(geom.x, geom.y, dx, dy) * s2
            pc = plan * c_dot
            g_u = g_u - xp.sum(pc, axis=-1) / e1
            g_v = g_v - xp.sum(pc, axis=-2) / e1
        if da is not None:
            g_u = g_u + self._weight_forcing("a", da)
        if db is not None:
            g_v = g_v + self._weight_forcing("b", db)
        # tangent of the potentials: ż = -ε S⁻¹ Ġ
        zf, zg = system.solve(-e1 * g_u, -e1 * g_v)
        hx = hy = None
        if self.points:
            s2 = _xp.expand_dims_right(geom.inv_scale_cost, 2)
            p_dot = plan * (zf[..., :, None] + zg[..., None, :] - c_dot) / e2
            hx, hy = geom.cost_fn.vjp(geom.x, geom.y, p_dot * s2)
            if moves_points:
                sx, sy = geom.cost_fn.vjp_jvp(geom.x, geom.y, plan * s2, dx, dy)
                hx, hy = hx + sx, hy + sy
        ha = self._weight_response("a", zf, da)
        hb = self._weight_response("b", zg, db)
        if db is not None:
            ha = ha + e1 * xp.sum(db, axis=-1, keepdims=True)
        if da is not None:
            hb = hb + e1 * xp.sum(da, axis=-1, keepdims=True)
        return hx, hy, ha, hb


def reg_ot_cost_hvp(call, argnum: int):
    """``(gradient, v -> H v)`` of :func:`~otcore.reg_ot_cost` w.r.t. argument ``argnum``
    (the implicit Hessian, whatever ``use_danskin`` says: see the capability table)."""
    out = _solve(call)
    xp = out.xp
    if getattr(out.reg_ot_cost, "ndim", 0) != 0:
        raise TypeError("hvp needs a scalar output: pass unbatched inputs")
    inputs = Arguments.POINTS.inputs(call)
    shared = inputs[1] is None
    _, grad_fn = _vjp_from_output(Arguments.POINTS, inputs, out, call.n_positional)
    gradient = grad_fn(xp.asarray(1.0, dtype=out.f.dtype))[argnum]
    joint = JointHVP(out)

    def hvp(v):
        if argnum == 0:
            hx, hy, _, _ = joint(dx=v, dy=v if shared else None)
            return hx + hy if shared else hx
        if argnum == 1:
            return joint(dy=v)[1]
        if argnum == 2:
            return joint(da=v)[2]
        return joint(db=v)[3]

    return gradient, hvp


def register(registry):
    """Add the rules of :func:`~otcore.reg_ot_cost` and :func:`~otcore.reg_ot_cost_matrix`."""
    registry.add(reg_ot_cost, vjp=reg_ot_cost_vjp, hvp=reg_ot_cost_hvp)
    registry.add(reg_ot_cost_matrix, vjp=reg_ot_cost_matrix_vjp)
