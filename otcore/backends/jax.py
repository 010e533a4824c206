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
            with self.full_precision():
                return _attach_jvp(primals, tangents)

        def _attach_jvp(primals, tangents):
            f_c, g_c, lv = primals
            lv_dot = tangents[2]
            fz, gz = attach(f_c, g_c, lv)
            _, g_dot = jax.jvp(lambda p: make_system(p, fz, gz).conditions(), (lv,), (lv_dot,))
            system = make_system(lv, fz, gz)
            n = fz.shape[-1]

            def split(w):
                return w[..., :n], w[..., n:]

            def matvec(w):
                return jnp.concatenate(system.matvec(*split(w)), axis=-1)

            def solve(_matvec, rhs):
                return jnp.concatenate(system.solve(*split(rhs)), axis=-1)

            # one array right-hand side: custom_linear_solve transposes only when every
            # leaf of it is linear in the tangents (a direction may move only G_a)
            rhs = -system.e1 * jnp.concatenate(g_dot, axis=-1)
            z_dot = split(lax.custom_linear_solve(matvec, rhs, solve, symmetric=True))
            return (fz, gz), z_dot

        return attach(f, g, leaves)

    def fori_loop(self, n: int, body, state):
        if n == 1:
            return body(0, state)
        return lax.fori_loop(0, n, body, state)

    has_autodiff = True

    def vjp(self, fun, args, kwargs):
        return jax.vjp(lambda *a: fun(*a, **kwargs), *args)

    def hvp(self, fun, argnum, args, kwargs):
        def grad_at(t):
            full = (*args[:argnum], t, *args[argnum + 1 :])
            return jax.grad(lambda *a: fun(*a, **kwargs), argnums=argnum)(*full)

        return jax.jit(lambda v: jax.jvp(grad_at, (args[argnum],), (v,))[1])

    def hessian(self, fun, argnum, args, kwargs):
        return jax.jit(jax.hessian(lambda *a: fun(*a, **kwargs), argnums=argnum))(*args)

    def stop_gradient(self, x):
        return lax.stop_gradient(x)

    def is_concrete(self, x) -> bool:
        return not isinstance(x, jax.core.Tracer)

    def is_differentiating(self, *arrays) -> bool:
        return any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)

    def full_precision(self):
        # XLA on GPUs may run float32 matmuls in TF32 by default, which is too coarse for
        # costs, plans and the implicit linear solve (OTT-JAX's implicit Hessians fail so)
        return jax.default_matmul_precision("highest")

    def logsumexp(self, x, axis: int):
        return jax.nn.logsumexp(x, axis=axis)
