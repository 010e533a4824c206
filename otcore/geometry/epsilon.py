"""The entropic regularisation ε: its default, relative forms and annealing schedule.

Units: ε has the units of the cost ``C`` (after ``scale_cost``); the plan is
``P_ij = exp((f_i + g_j - C_ij) / ε)`` and the potentials ``f, g`` are in cost units.

* ``epsilon=None, relative_epsilon=None``: ``ε = 0.05 * std(C)``, computed without gradient.
* ``epsilon=e`` (a float or a 0-d array): ``ε = e``; an array stays differentiable.
* ``relative_epsilon="std"`` or ``"mean"``: ``ε = (e or 0.05) * std(C)`` (or ``mean(C)``),
  the statistic computed without gradient.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "DEFAULT_EPSILON_SCALE",
    "EpsilonSchedule",
    "check_epsilon_float",
    "validate_epsilon_args",
]

DEFAULT_EPSILON_SCALE = 0.05


class EpsilonSchedule:
    """Geometric ε annealing: ``ε_t = ε * max(init * decay**t, 1)`` at iteration ``t``.

    ``init`` multiplies the target ε at ``t = 0`` and the schedule decays to the target,
    never below it. Only the Sinkhorn updates use ``ε_t``; the plan, the costs and the
    convergence test use the target ε.

    Args:
        init: starting multiplier of the target (``>= 1``).
        decay: factor per iteration, in ``(0, 1]``.

    Example:
        >>> s = EpsilonSchedule(init=10.0, decay=0.5)
        >>> [s.factor(t) for t in range(5)]
        [10.0, 5.0, 2.5, 1.25, 1.0]
    """

    def __init__(self, init: float = 10.0, decay: float = 0.9):
        if not init >= 1.0:
            raise ValueError(f"epsilon_schedule init must be >= 1 (a multiple of ε), got {init!r}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"epsilon_schedule decay must be in (0, 1], got {decay!r}")
        self.init = float(init)
        self.decay = float(decay)

    def factor(self, t, xp=None, dtype=None):
        """Multiplier of the target ε at iteration ``t``.

        ``t`` is an integer (a Python int or a NumPy integer scalar: the result is then a
        Python float, which keeps float32 arrays float32 when it multiplies them), or an
        integer array with its namespace ``xp`` and the floating ``dtype`` of the result
        (array expression, no host sync).
        """
        if xp is None or isinstance(t, numbers.Integral):
            # int(t): ``decay ** np.int64`` would be an np.float64, which promotes float32
            return max(self.init * self.decay ** int(t), 1.0)
        value = self.init * xp.exp(xp.astype(t, dtype) * math.log(self.decay))
        return xp.where(value > 1.0, value, xp.ones_like(value))

    def __repr__(self):
        return f"EpsilonSchedule(init={self.init}, decay={self.decay})"


def check_epsilon_float(epsilon) -> float:
    """``epsilon`` (a real number) as a float, after checking it is positive and finite.

    Example:
        >>> check_epsilon_float(0.5)
        0.5
        >>> check_epsilon_float(0.0)
        Traceback (most recent call last):
        ...
        ValueError: epsilon must be a positive finite number, got 0.0
    """
    if not 0.0 < float(epsilon) < float("inf"):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
    return float(epsilon)


def validate_epsilon_args(epsilon, relative_epsilon):
    """Check ``epsilon``/``relative_epsilon`` types; return them normalised."""
    if relative_epsilon is not None and relative_epsilon not in ("mean", "std"):
        raise ValueError(
            f"relative_epsilon must be None, 'mean' or 'std', got {relative_epsilon!r}"
        )
    if epsilon is None:
        return None, relative_epsilon
    if isinstance(epsilon, bool):
        raise TypeError("epsilon must be a positive float or a 0-d array, got a bool")
    if isinstance(epsilon, numbers.Real):
        return check_epsilon_float(epsilon), relative_epsilon
    if not hasattr(epsilon, "shape"):
        raise TypeError(
            f"epsilon must be a positive float or an array, got {type(epsilon).__name__}"
        )
    return epsilon, relative_epsilon
