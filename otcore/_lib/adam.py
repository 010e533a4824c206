"""Adam on parameter trees, written once in array API code."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from otcore._lib import xp as _xp
from otcore._lib.tree import tree_leaves, tree_map

__all__ = ["Adam"]


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) on nested dicts/lists of arrays, any array API library.

    The defaults are OTT-JAX ``W2NeuralDual``'s (``lr = 1e-4``, ``β = (0.5, 0.9)``).
    ``init(params)`` returns the optimiser state and ``update(grads, state, params)``
    returns ``(new_params, new_state)`` without mutating anything, so the step can be
    compiled by ``jax.jit``.

    Args:
        learning_rate: a float, or a schedule ``count ↦ rate`` written in array API code
            (``count`` is the 0-d step number, starting at 1).
        b1, b2: exponential decay rates of the first and second moments.
        eps: added to the root of the second moment.

    Example:
        >>> import numpy as np
        >>> opt = Adam(learning_rate=0.1)
        >>> params = {"w": np.array([1.0, -2.0])}
        >>> state = opt.init(params)
        >>> params, state = opt.update({"w": np.array([0.5, -0.5])}, state, params)
        >>> np.round(params["w"], 6).tolist()  # first step moves each entry by lr
        [0.9, -1.9]
    """

    learning_rate: float | object = 1e-4
    b1: float = 0.5
    b2: float = 0.9
    eps: float = 1e-8

    def __post_init__(self):
        lr = self.learning_rate
        if not callable(lr) and (
            isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0
        ):
            raise ValueError(f"learning_rate must be a positive float or a schedule, got {lr!r}")
        for name in ("b1", "b2"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not isinstance(self.eps, numbers.Real) or self.eps < 0:
            raise ValueError(f"eps must be a non-negative float, got {self.eps!r}")

    def init(self, params):
        """Zero moments and a zero step count, like ``params``."""
        leaf = tree_leaves(params)[0]
        xp = _xp.namespace(leaf)
        zeros = tree_map(xp.zeros_like, params)
        count = xp.zeros((), dtype=leaf.dtype, device=_xp.device_of(leaf))
        return {"count": count, "mu": zeros, "nu": tree_map(xp.zeros_like, params)}

    def update(self, grads, state, params):
        """One Adam step: ``(new_params, new_state)``."""
        leaf = tree_leaves(params)[0]
        xp = _xp.namespace(leaf)
        count = state["count"] + 1
        b1, b2 = self.b1, self.b2
        mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["mu"], grads)
        nu = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["nu"], grads)
        # bias corrections; the step count as a 0-d array: one power kernel on every backend
        t = xp.asarray(count, dtype=leaf.dtype, device=_xp.device_of(leaf))
        c1, c2 = 1 - b1**t, 1 - b2**t
        lr = self.learning_rate(count) if callable(self.learning_rate) else self.learning_rate
        new = tree_map(
            lambda p, m, v: p - lr * (m / c1) / (xp.sqrt(v / c2) + self.eps), params, mu, nu
        )
        return new, {"count": count, "mu": mu, "nu": nu}
