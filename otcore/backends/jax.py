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
