"""The adapter interface, with the portable (eager, Python-loop) implementation.

An adapter supplies what the array API standard lacks and nothing algorithmic: loops,
compilation, stop-gradient, tests for traced values, the framework's autodiff (``vjp``,
``hvp``, ``hessian``), the implicit-derivative and fixed-point hooks, numerics (full
precision, a native ``logsumexp``) and the training helpers of :mod:`otcore.neural`.
Every hook is declared here with its contract; NumPy, array_api_strict and CuPy use this
class as is, and an autodiff framework overrides what it can do better. Hooks an eager
backend without autodiff cannot supply raise an error that names the backend.

Example:
    >>> import numpy as np
    >>> ad = Adapter(np)
    >>> ad.fori_loop(3, lambda i, s: s + i, 0), ad.stop_gradient(1.5), ad.is_concrete(2.0)
    (3, 1.5, True)
"""

from __future__ import annotations

import contextlib

from otcore._lib import xp as _xp

# what :meth:`Adapter.fixed_point_output`'s rule says when it is differentiated again
FIXED_POINT_SECOND_ORDER = (
    "the fixed-point (implicit_diff) derivative of the barycenter is first order: its "
    "reverse rule holds the solution constant, so a second derivative through it "
    "(jax.hessian, jax.jacfwd/jacrev of jax.grad, torch double backward, "
    "torch.func.hessian, ot.hvp, ot.hessian) would be wrong; use implicit_diff=None "
    "(unrolled, the default), whose second derivatives are exact"
)


class Adapter:
    """Eager adapter: Python loops; the convergence test is the only host sync.

    Attributes:
        name: short backend name (``"numpy"``, ``"jax"``, ``"torch"``, ``"cupy"``, ...).
    """

    name = "numpy"

    def __init__(self, xp):
        self.xp = xp

    # -- loops -----------------------------------------------------------------
    def while_loop(self, cond, body, state):
        """Run ``state = body(state)`` while ``cond(state)`` (a 0-d boolean array) holds.

        ``cond`` is evaluated on the host once per call of ``body``: that is the only
        device synchronisation of a solve.
        """
        while bool(cond(state)):
            state = body(state)
        return state

    def while_loop_differentiable(self, cond, body, state, max_steps: int):
        """Like :meth:`while_loop`, but reverse-differentiable (for unrolled gradients).

        Eager backends record the Python loop itself; JAX runs a fixed-length scan.
        """
        return self.while_loop(cond, body, state)

    def fori_loop(self, n: int, body, state):
        """``state = body(i, state)`` for ``i`` in ``range(n)`` (no host sync)."""
        for i in range(n):
            state = body(i, state)
        return state

    def jit(self, fun):
        """``fun`` compiled for repeated calls (``jax.jit``); the identity elsewhere."""
        return fun

    # -- differentiation helpers -------------------------------------------------
    has_autodiff = False
    """True when the hooks :meth:`vjp`, :meth:`hvp`, :meth:`hessian` and :meth:`training`
    are supplied by the framework's autodiff (JAX, PyTorch)."""

    def _no_autodiff(self, what: str):
        return NotImplementedError(
            f"the {self.name} backend has no automatic differentiation, so it cannot supply "
            f"{what}; otcore differentiates {self.name} arrays with its manual rules "
            "(otcore.grad, otcore.vjp, otcore.hvp, otcore.hessian)"
        )

    def vjp(self, fun, args, kwargs):
        """``(fun(*args, **kwargs), vjp_fn)`` with the framework's autodiff.

        ``vjp_fn(cotangent)`` returns one cotangent per positional argument (``None`` for
        non-arrays). Eager backends without autodiff raise ``NotImplementedError``.
        """
        raise self._no_autodiff("vjp")

    def hvp(self, fun, argnum, args, kwargs):
        """``v -> ∇²_x fun · v`` at ``x = args[argnum]`` (``fun`` returns a scalar).

        Eager backends without autodiff raise ``NotImplementedError``.
        """
        raise self._no_autodiff("hvp")

    def hessian(self, fun, argnum, args, kwargs):
        """The Hessian of scalar ``fun`` w.r.t. ``args[argnum]``, shape ``x.shape * 2``.

        Eager backends without autodiff raise ``NotImplementedError``.
        """
        raise self._no_autodiff("hessian")

    def implicit_potentials(self, make_system, f, g, leaves):
        """Attach implicit derivatives to constant potentials ``(f, g)``.

        ``make_system(leaves, f, g)`` builds the :class:`~otcore.implicit.ImplicitSystem`
        from (possibly differentiable) arrays. Eager backends without autodiff return
        ``(f, g)``: their derivatives come from the manual rules.
        """
        return f, g

    def fixed_point_output(self, step, z, value, leaves, rtol, max_iter):
        """``value`` with the reverse rule of the fixed point ``z = step(z, leaves)[0]``.

        ``value`` is ``step(z, leaves)[1]`` at the solution ``z`` (a tuple of arrays),
        computed on constants; the rule iterates the adjoint of ``step`` in ``z`` until
        its relative change is below ``rtol`` (at most ``max_iter`` times) and pulls it
        back to ``leaves`` (first order). Eager backends without autodiff return
        ``value``: their derivatives come from the manual rules.
        """
        return value

    def cost_vjp(self, cost_fn, x, y, g):
        """Pull a cost-matrix cotangent ``g`` back to the points (manual rule)."""
        return cost_fn.vjp(x, y, g)

    def stop_gradient(self, x):
        """``x`` as a constant for the autodiff framework (identity without one)."""
        return x

    def envelope(self, x):
        """``x`` held constant in *first* derivatives only (Danskin's envelope theorem):
        its first-order tangent is zero, while a second derivative still sees how ``x``
        moves. Default: :meth:`stop_gradient` (a backend whose autodiff cannot tell the
        orders apart gets envelope first derivatives and no second-order term through
        ``x``)."""
        return self.stop_gradient(x)

    def is_concrete(self, x) -> bool:
        """True when ``x`` holds values that may be inspected (not a tracer)."""
        return True

    def is_differentiating(self, *arrays) -> bool:
        """True when any of ``arrays`` takes part in an autodiff trace or graph."""
        return False

    # -- training (otcore.neural) ------------------------------------------------
    def training(self):
        """The training helpers of :mod:`otcore.neural` for this framework.

        Returns an object with the interface of
        :class:`otcore.backends.neural_jax.JaxNeuralOps`: ``xp``, ``name``, ``asarray``,
        ``is_native``, ``to_numpy``, ``stop_gradient``, ``input_grad``,
        ``value_and_input_grad_fn``, ``wrap_optimizer``, ``prepare_params``,
        ``detach_params``, ``make_train_step``, ``make_eval_step`` and ``jit``.
        Training needs gradients w.r.t. parameters and inputs: backends without
        autodiff raise ``TypeError``.
        """
        raise TypeError(
            f"the {self.name} backend has no automatic differentiation, which the neural "
            "dual needs (gradients w.r.t. parameters and inputs): pass JAX or PyTorch "
            "arrays, or NumPy arrays together with backend='jax' or backend='torch'"
        )

    # -- numerics -------------------------------------------------------------
    def full_precision(self):
        """Context in which matrix products run in full precision (no TF32 shortcuts)."""
        return contextlib.nullcontext()

    def quiet_float_errors(self):
        """Context in which the library emits no floating-point notices (overflow, 0/0):
        solvers detect a non-finite or vanishing iterate themselves and report it through
        ``diverged``. Nothing to silence by default."""
        return contextlib.nullcontext()

    def logsumexp(self, x, axis: int):
        """``log(sum(exp(x), axis))``, ``-inf``-safe (see :func:`otcore._lib.xp.logsumexp`).

        An adapter may overwrite ``x`` when it is not being differentiated (callers pass
        a fresh temporary).
        """
        return _xp.logsumexp(self.xp, x, axis)
