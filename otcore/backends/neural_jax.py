"""JAX side of :mod:`otcore.neural`: ``jax.vjp`` input gradients, ``jax.value_and_grad``
over parameter pytrees, ``jax.jit`` of the whole training step, optax optimisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from otcore.backends.neural import TrainingOps


class _OtcoreOptimizer:
    """An :class:`otcore.neural.Adam` (pure array code) as a functional optimiser."""

    def __init__(self, opt):
        self.opt = opt

    def init(self, params):
        return self.opt.init(params)

    def update(self, params, grads, state):
        return self.opt.update(grads, state, params)


class _OptaxOptimizer:
    def __init__(self, tx):
        import optax

        self.tx = tx
        self._apply = optax.apply_updates

    def init(self, params):
        return self.tx.init(params)

    def update(self, params, grads, state):
        updates, state = self.tx.update(grads, state, params)
        return self._apply(params, updates), state


class JaxNeuralOps(TrainingOps):
    """Autodiff, jit and optimiser plumbing for JAX arrays (``JaxAdapter.training()``)."""

    # -- arrays -----------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """A NumPy (or other host) array as a JAX array."""
        return jnp.asarray(np.asarray(x), dtype=dtype)

    # -- input gradients ----------------------------------------------------------
    def input_grad(self, fn, x):
        """``∇ fn(x)`` per row (``fn`` maps ``(n, d)`` to ``(n,)``), differentiable."""
        vals, pull = jax.vjp(fn, x)
        return pull(jnp.ones_like(vals))[0]

    def value_and_input_grad_fn(self, fn):
        def vg(x):
            vals, pull = jax.vjp(fn, x)
            return vals, pull(jnp.ones_like(vals))[0]

        return vg

    # -- optimisers ---------------------------------------------------------------
    def _wrap_adam(self, opt):
        return _OtcoreOptimizer(opt)

    def _wrap_other(self, opt, name):
        if hasattr(opt, "init") and hasattr(opt, "update"):
            return _OptaxOptimizer(opt)
        raise TypeError(
            f"{name} must be an otcore.neural.Adam or an optax GradientTransformation for "
            f"JAX data, got {type(opt).__name__}"
        )

    def prepare_params(self, params):
        return params

    # -- steps ----------------------------------------------------------------------
    def make_train_step(self, loss_fn, opt_a, opt_b, update_a, update_b, project_a, project_b):
        """Jitted ``(params_a, params_b, state_a, state_b, x, y) -> (..., metrics)``."""

        def step(pa, pb, sa, sb, x, y):
            (loss, aux), (ga, gb) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
                pa, pb, x, y
            )
            if update_a:
                pa, sa = opt_a.update(pa, ga, sa)
            if update_b:
                pb, sb = opt_b.update(pb, gb, sb)
            return project_a(pa), project_b(pb), sa, sb, (loss, *aux)

        return jax.jit(step)

    def make_eval_step(self, loss_fn):
        def step(pf, pg, x, y):
            loss, aux = loss_fn(pf, pg, x, y)
            return (loss, *aux)

        return jax.jit(step)

    def detach_params(self, params):
        return params
