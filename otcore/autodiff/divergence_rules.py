"""Manual first- and second-order rules of :func:`otcore.sinkhorn_divergence`.

The divergence is a fixed linear combination of three ``reg_ot_cost`` values and a mass
term, so its rules combine those of :mod:`otcore.autodiff.reg_ot_cost_rules`:

``S = OT(x, y; a, b) - OT(x, x; a, a)/2 - OT(y, y; b, b)/2 + ε (Σa - Σb)²/2``.

In a self term both point slots and both weight slots move together.
"""

from __future__ import annotations

import array_api_compat

from otcore._lib import xp as _xp
from otcore.autodiff.reg_ot_cost_rules import (
    Arguments,
    JointHVP,
    _vjp_from_output,
    _weight_gradient,
)
from otcore.solvers.divergence import sinkhorn_divergence, sinkhorn_divergence_costs


def _run(call):
    """Solve the three problems of a bound :func:`~otcore.sinkhorn_divergence` call once:
    ``((x, y, a, b), value, DivergenceOutput)``."""
    if call["return_output"]:
        raise TypeError("differentiate sinkhorn_divergence with return_output=False (the value)")
    value, dout = sinkhorn_divergence(**call.flat(return_output=True))
    return tuple(call[k] for k in ("x", "y", "a", "b")), value, dout


def _add(u, v):
    if u is None:
        return v
    if v is None:
        return u
    return u + v


def sinkhorn_divergence_vjp(call):
    """Manual VJP of :func:`~otcore.sinkhorn_divergence` w.r.t. ``(x, y, a, b)``."""
    inputs, value, dout = _run(call)
    return value, _divergence_pullback(inputs, value, dout, call.n_positional)


def _divergence_pullback(inputs, value, dout, n_args):
    """The VJP of the divergence from its three solved problems (no new solve)."""
    x, y, a, b = inputs
    out_xy, out_xx, out_yy = dout.outputs
    xp = out_xy.xp
    points = Arguments.POINTS

    def vjp_fn(ct):
        ct = xp.asarray(ct, dtype=value.dtype)
        dx, dy, da, db = _vjp_from_output(points, (x, y, a, b), out_xy, 4)[1](ct)
        sx, _, sa, sb = _vjp_from_output(points, (x, None, a, a), out_xx, 4)[1](-0.5 * ct)
        dx = dx + sx
        da = _add(da, None if a is None else sa + sb)
        if out_yy is not None:
            ty, _, ta, tb = _vjp_from_output(points, (y, None, b, b), out_yy, 4)[1](-0.5 * ct)
            dy = dy + ty
            db = _add(db, None if b is None else ta + tb)
        gap = _mass_gap(xp, out_xy)
        if a is not None:
            da = da + _xp.unbroadcast(xp, (ct * out_xy.epsilon * gap)[..., None] + 0 * a, a.shape)
        if b is not None:
            db = db - _xp.unbroadcast(xp, (ct * out_xy.epsilon * gap)[..., None] + 0 * b, b.shape)
        return (dx, dy, da, db)[: max(n_args, 1)]

    return vjp_fn


def sinkhorn_divergence_costs_vjp(call):
    """Manual VJP of :func:`~otcore.sinkhorn_divergence_costs` w.r.t. the weights ``a``,
    ``b`` and cost matrices given as arrays (geometries, e.g. a Grid, get ``None``).

    Envelope (Danskin) gradients only (the capability table refuses the other modes).
    """
    if call["return_output"]:
        raise TypeError(
            "differentiate sinkhorn_divergence_costs with return_output=False (the value)"
        )
    names = ("cost_xy", "cost_xx", "cost_yy", "a", "b")
    costs_and_weights = [call[k] for k in names]
    a, b = costs_and_weights[3], costs_and_weights[4]
    value, dout = sinkhorn_divergence_costs(**call.flat(return_output=True))
    out_xy, out_xx, out_yy = dout.outputs
    xp = out_xy.xp
    n_args = call.n_positional

    def cost_bar(c, out, ct):
        if c is None or not array_api_compat.is_array_api_obj(c):
            return None  # a geometry: no cotangent
        scale = _xp.expand_dims_right(out.geom.inv_scale_cost, 2)
        return _xp.unbroadcast(xp, ct[..., None, None] * out.matrix * scale, c.shape)

    def vjp_fn(ct):
        ct = xp.asarray(ct, dtype=value.dtype)
        c1 = ct[..., None]
        gap = _mass_gap(xp, out_xy)
        da = c1 * _weight_gradient(out_xy, "a") + (ct * out_xy.epsilon * gap)[..., None]
        db = c1 * _weight_gradient(out_xy, "b") - (ct * out_xy.epsilon * gap)[..., None]
        half = -0.5 * c1
        da = da + half * (_weight_gradient(out_xx, "a") + _weight_gradient(out_xx, "b"))
        if out_yy is not None:
            db = db + half * (_weight_gradient(out_yy, "a") + _weight_gradient(out_yy, "b"))
        grads = [
            cost_bar(costs_and_weights[0], out_xy, ct),
            cost_bar(costs_and_weights[1], out_xx, -0.5 * ct),
            None if out_yy is None else cost_bar(costs_and_weights[2], out_yy, -0.5 * ct),
            None if a is None else _xp.unbroadcast(xp, da, a.shape),
            None if b is None else _xp.unbroadcast(xp, db, b.shape),
        ]
        return tuple(grads[:n_args])

    return value, vjp_fn


def _mass_gap(xp, out_xy):
    return xp.sum(out_xy.a, axis=-1) - xp.sum(out_xy.b, axis=-1)


def sinkhorn_divergence_hvp(call, argnum: int):
    """``(gradient, v -> H v)`` of :func:`~otcore.sinkhorn_divergence` w.r.t. ``argnum``;
    the three problems are solved once, for the gradient and every product."""
    inputs, value, dout = _run(call)
    if getattr(value, "ndim", 0) != 0:
        raise TypeError("hvp needs a scalar output: pass unbatched inputs")
    out_xy, out_xx, out_yy = dout.outputs
    xp = out_xy.xp
    grad_fn = _divergence_pullback(inputs, value, dout, 4)
    gradient = grad_fn(xp.asarray(1.0, dtype=value.dtype))[argnum]
    h_xy, h_xx = JointHVP(out_xy), JointHVP(out_xx)
    h_yy = None if out_yy is None else JointHVP(out_yy)
    eps = out_xy.epsilon

    def hvp(v):
        if argnum == 0:
            hx, _, _, _ = h_xy(dx=v)
            sx, sy, _, _ = h_xx(dx=v, dy=v)
            return hx - 0.5 * (sx + sy)
        if argnum == 1:
            _, hy, _, _ = h_xy(dy=v)
            if h_yy is None:
                return hy
            sx, sy, _, _ = h_yy(dx=v, dy=v)
            return hy - 0.5 * (sx + sy)
        if argnum == 2:
            ha = h_xy(da=v)[2]
            _, _, sa, sb = h_xx(da=v, db=v)
            return ha - 0.5 * (sa + sb) + eps * xp.sum(v) + 0 * v
        hb = h_xy(db=v)[3]
        if h_yy is not None:
            _, _, sa, sb = h_yy(da=v, db=v)
            hb = hb - 0.5 * (sa + sb)
        return hb + eps * xp.sum(v) + 0 * v

    return gradient, hvp


def register(registry):
    """Add the rules of :func:`~otcore.sinkhorn_divergence` and
    :func:`~otcore.sinkhorn_divergence_costs`."""
    registry.add(sinkhorn_divergence, vjp=sinkhorn_divergence_vjp, hvp=sinkhorn_divergence_hvp)
    registry.add(sinkhorn_divergence_costs, vjp=sinkhorn_divergence_costs_vjp)
