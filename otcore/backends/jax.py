"""JAX adapter: ``lax`` loops so that solvers run under ``jax.jit`` and ``jax.vmap``.

Importing this module also registers otcore's pytrees (geometries, problems, outputs: see
:mod:`otcore._lib.pytree`) with ``jax.tree_util``, so that they pass through ``jax.jit``,
``jax.vmap`` and ``lax.scan`` as arguments and results. It is imported as soon as otcore
meets a JAX array (:func:`otcore.backends.adapter_for`), hence before any geometry made of
JAX arrays exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from otcore._lib import pytree as _pytree
from otcore.backends.base import Adapter


class JaxAdapter(Adapter):
    """Adapter for ``jax.Array`` inputs."""

    name = "jax"

    def while_loop(self, cond, body, state):
        return lax.while_loop(lambda s: jnp.asarray(cond(s)), body, state)

    def while_loop_differentiable(self, cond, body, state, max_steps: int):
        """A while loop with a reverse-mode rule: the forward pass stores the state after
        each step (at most ``max_steps``), the backward pass replays the steps it ran, in
        reverse, each under ``jax.vjp``. Only the steps actually taken cost time; forward
        mode (``jax.hessian``'s outer ``jacfwd``) differentiates the rule's plain code.
        Reverse-over-reverse (``jacrev(jacrev(.))``) is not available when unrolling: use
        ``jax.hessian`` or implicit differentiation."""
        body_c, body_consts = jax.closure_convert(body, state)
        cond_c, cond_consts = jax.closure_convert(lambda s: jnp.asarray(cond(s)), state)
        cond_consts = [lax.stop_gradient(c) for c in cond_consts]
        return _replayed_while(cond_c, body_c, max_steps, state, cond_consts, body_consts)

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

    def fixed_point_output(self, step, z, value, leaves, rtol, max_iter):
        """``value`` (the output ``step(z, leaves)[1]`` of a solve that stopped at ``z``,
        a constant) with the reverse rule of the fixed point ``z = step(z, leaves)[0]``:
        the adjoint of ``step`` in ``z`` is iterated from 0 until it stops changing
        (relative ``rtol``), then pulled back to ``leaves`` once (first order)."""
        z = tuple(lax.stop_gradient(v) for v in z)
        value = lax.stop_gradient(value)

        @jax.custom_vjp
        def output(z, value, lv):
            return value

        def fwd(z, value, lv):
            return value, (z, value, lv)

        def bwd(res, o_bar):
            z, value, lv = res
            _, pull = jax.vjp(step, z, lv)

            def body(carry):
                lam, _, i = carry
                new = pull((lam, o_bar))[0]
                change = sum(jnp.sum((u - v) ** 2) for u, v in zip(new, lam))
                size = sum(jnp.sum(u * u) for u in new)
                return new, change > (rtol * rtol) * size, i + 1

            lam0 = tuple(jnp.zeros_like(v) for v in z)
            lam, _, _ = lax.while_loop(
                lambda c: c[1] & (c[2] < max_iter), body, (lam0, jnp.asarray(True), 0)
            )
            lv_bar = pull((lam, o_bar))[1]
            return tuple(jnp.zeros_like(v) for v in z), jnp.zeros_like(value), lv_bar

        output.defvjp(fwd, bwd)
        return output(z, value, tuple(leaves))

    def jit(self, fun):
        return jax.jit(fun)

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

    def training(self):
        from otcore.backends.neural_jax import JaxNeuralOps

        return JaxNeuralOps(self)

    def envelope(self, x):
        return _envelope(x)

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


@jax.custom_jvp
def _envelope(x):
    """Identity whose tangent is zero; the rule's primal output is ``x`` itself (not a
    constant), so an outer derivative (``jax.hessian``'s ``jacfwd``, or a second
    ``jacrev``) still differentiates it: envelope gradients, exact Hessians."""
    return x


@_envelope.defjvp
def _envelope_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x, jnp.zeros_like(t)


def _run_recorded(cond_c, body_c, max_steps, state, cond_consts, body_consts):
    """Forward loop that also returns every state it passed through and the step count."""
    tape = jax.tree_util.tree_map(
        lambda v: jnp.zeros((max_steps + 1, *jnp.shape(v)), jnp.result_type(v)).at[0].set(v),
        state,
    )

    def step(carry):
        s, tape, k = carry
        s = body_c(s, *body_consts)
        tape = jax.tree_util.tree_map(lambda t, v: t.at[k + 1].set(v), tape, s)
        return s, tape, k + 1

    def go_on(carry):
        s, _, k = carry
        return (k < max_steps) & cond_c(s, *cond_consts)

    return lax.while_loop(go_on, step, (state, tape, jnp.asarray(0)))


def _replayed_while(cond_c, body_c, max_steps, state, cond_consts, body_consts):
    @jax.custom_vjp
    def loop(state, cond_consts, body_consts):
        return _run_recorded(cond_c, body_c, max_steps, state, cond_consts, body_consts)[0]

    def fwd(state, cond_consts, body_consts):
        final, tape, k = _run_recorded(cond_c, body_c, max_steps, state, cond_consts, body_consts)
        return final, (tape, k, cond_consts, body_consts)

    def bwd(res, g_final):
        tape, k, cond_consts, body_consts = res
        zero_consts = jax.tree_util.tree_map(jnp.zeros_like, body_consts)

        def back(carry):
            i, g, g_consts = carry
            s_prev = jax.tree_util.tree_map(lambda t: t[i - 1], tape)
            _, pull = jax.vjp(body_c, s_prev, *body_consts)
            g_s, *g_c = pull(g)
            g_consts = jax.tree_util.tree_map(jnp.add, g_consts, list(g_c))
            return i - 1, g_s, g_consts

        _, g_state, g_consts = lax.while_loop(
            lambda c: c[0] > 0, back, (k, g_final, list(zero_consts))
        )
        g_cond = jax.tree_util.tree_map(jnp.zeros_like, cond_consts)
        return g_state, g_cond, g_consts

    loop.defvjp(fwd, bwd)
    return loop(state, list(cond_consts), list(body_consts))


# -- pytrees ------------------------------------------------------------------------------
_REGISTERED: set[type] = set()


def _register_pytree(cls) -> None:
    """Register ``cls`` (a class of :mod:`otcore._lib.pytree`) with ``jax.tree_util``."""
    if cls in _REGISTERED:
        return
    jax.tree_util.register_pytree_node(
        cls, lambda obj: obj.tree_flatten(), lambda aux, children: cls.tree_unflatten(aux, children)
    )
    _REGISTERED.add(cls)


_pytree.on_register(_register_pytree)
