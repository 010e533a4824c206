"""JAX adapter: ``lax`` loops so that solvers run under ``jax.jit`` and ``jax.vmap``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._base import Adapter


class JaxAdapter(Adapter):
    """Adapter for ``jax.Array`` inputs."""

    name = "jax"

    def while_loop(self, cond, body, state):
        return lax.while_loop(lambda s: jnp.asarray(cond(s)), body, state)

    def while_loop_differentiable(self, cond, body, state, max_steps: int):
        step = jax.checkpoint(body)

        def guarded(_, s):
            return lax.cond(jnp.asarray(cond(s)), step, lambda t: t, s)

        return lax.fori_loop(0, max_steps, guarded, state)

    def implicit_potentials(self, make_system, f, g, leaves):
        leaves = tuple(leaves)

        @jax.custom_jvp
        def attach(f_c, g_c, lv):
            return f_c, g_c

        @attach.defjvp
        def attach_jvp(primals, tangents):
            f_c, g_c, lv = primals
            lv_dot = tangents[2]
            fz, gz = attach(f_c, g_c, lv)
            _, g_dot = jax.jvp(lambda p: make_system(p, fz, gz).conditions(), (lv,), (lv_dot,))
            system = make_system(lv, fz, gz)
            rhs = (-system.e1 * g_dot[0], -system.e1 * g_dot[1])
            z_dot = lax.custom_linear_solve(
                lambda w: system.matvec(*w),
                rhs,
                lambda _mv, b: system.solve(*b),
                symmetric=True,
            )
            return (fz, gz), z_dot

        return attach(f, g, leaves)

    def fori_loop(self, n: int, body, state):
        if n == 1:
            return body(0, state)
        return lax.fori_loop(0, n, body, state)

    has_autodiff = True

    def vjp(self, fun, args, kwargs):
        return jax.vjp(lambda *a: fun(*a, **kwargs), *args)

    def stop_gradient(self, x):
        return lax.stop_gradient(x)

    def is_concrete(self, x) -> bool:
        return not isinstance(x, jax.core.Tracer)

    def is_differentiating(self, *arrays) -> bool:
        return any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)

    def logsumexp(self, x, axis: int):
        return jax.nn.logsumexp(x, axis=axis)
