"""The adapter interface, with the portable (eager, Python-loop) implementation.

An adapter supplies what the array API standard lacks and nothing algorithmic:
loops, stop-gradient, a test for concrete (non-traced) values, and optionally a native
fused ``logsumexp``. NumPy and array_api_strict use this class as is.
"""

from __future__ import annotations

import contextlib

from otcore._lib import xp as _xp


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

    def vjp(self, fun, args, kwargs):
        """``(fun(*args, **kwargs), vjp_fn)`` with the framework's autodiff."""
        raise NotImplementedError(f"{self.name} has no autodiff; otcore uses manual rules")

    def implicit_potentials(self, make_system, f, g, leaves):
        """Attach implicit derivatives to constant potentials ``(f, g)``.

        ``make_system(leaves, f, g)`` builds the :class:`~otcore.implicit.ImplicitSystem`
        from (possibly differentiable) arrays. Eager backends without autodiff return
        ``(f, g)``: their derivatives come from the manual rules.
        """
        return f, g

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

    # -- numerics -------------------------------------------------------------
    def full_precision(self):
        """Context in which matrix products run in full precision (no TF32 shortcuts)."""
        return contextlib.nullcontext()

    def logsumexp(self, x, axis: int):
        """``log(sum(exp(x), axis))``, ``-inf``-safe (see :func:`otcore._xp.logsumexp`)."""
        return _xp.logsumexp(self.xp, x, axis)
