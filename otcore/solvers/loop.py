"""The monitored fixed-point loop shared by the solvers (Sinkhorn, both barycenters).

:func:`fixed_point_loop` runs ``variables <- step(t, variables)`` in blocks of
``inner_iterations`` steps. After each block it computes the error (one host sync on
eager backends, none under JAX), records it, and stops when

* the error is at most ``threshold`` (for every problem of a batch) and at least
  ``min_iterations`` steps have run: ``converged``;
* ``max_iterations`` steps (rounded up to whole blocks) have run: not ``converged``;
* the error, or one of the ``watch``-ed variables, is not finite: ``diverged``.

State in, state out: the variables are a dict of arrays (any pytree on JAX); the result
is that dict plus

==============  ====================================================================
``k``           0-d integer array: the number of blocks run (``n_iters = k · inner``)
``err``         ``batch_shape``: the last error (``inf`` before the first block)
``errors``      ``batch_shape + (n_blocks,)``: the error after each block, ``-1`` for
                blocks not run
``diverged``    0-d boolean array
``converged``   ``batch_shape`` boolean: ``err <= threshold`` and not ``diverged``
==============  ====================================================================

The loops are the adapter's: ``while_loop`` (JAX ``lax.while_loop``, a Python loop
elsewhere), ``while_loop_differentiable`` for unrolled derivatives (JAX: a recorded loop
replayed backwards; PyTorch: the recorded Python loop) and ``fori_loop`` for the steps of
a block. The loop body builds every array it needs (block ids, ``inf``) itself: an array
made outside and closed over would be captured across the traces of nested JAX loops
(a free-support barycenter runs Sinkhorn loops inside its own loop).
"""

from __future__ import annotations

import math

from otcore._lib import checks as _checks
from otcore._lib import xp as _xp

__all__ = ["Stopping", "fixed_point_loop", "n_blocks"]

_RESERVED = ("k", "err", "errors", "diverged", "converged")


def n_blocks(options) -> int:
    """Number of error checks at most: ``ceil(max_iterations / inner_iterations)``."""
    return math.ceil(options.max_iterations / options.inner_iterations)


class Stopping:
    """The stopping options of a monitored loop, validated (``ValueError`` naming the
    option).

    Any object with these four attributes may stand for it (:class:`~otcore.Sinkhorn`
    does).

    Attributes:
        threshold: stop when the error is at most this (a float ``>= 0``).
        inner_iterations: the error is computed every this many steps.
        min_iterations: do not stop on the threshold before this many steps.
        max_iterations: stop after at most this many steps (rounded up to a multiple of
            ``inner_iterations``).

    Example:
        >>> s = Stopping(1e-6, inner_iterations=10, max_iterations=95)
        >>> s.n_blocks
        10
        >>> Stopping(-1.0, max_iterations=5)
        Traceback (most recent call last):
        ...
        ValueError: threshold must be a finite number >= 0, got -1.0
    """

    def __init__(self, threshold, inner_iterations=1, min_iterations=0, max_iterations=1000):
        self.threshold, self.inner_iterations, self.min_iterations, self.max_iterations = (
            _checks.check_stopping(threshold, inner_iterations, min_iterations, max_iterations)
        )

    @property
    def n_blocks(self) -> int:
        """Number of error checks at most."""
        return n_blocks(self)

    def __repr__(self):
        return (
            f"Stopping(threshold={self.threshold}, inner_iterations={self.inner_iterations}, "
            f"min_iterations={self.min_iterations}, max_iterations={self.max_iterations})"
        )


def fixed_point_loop(
    adapter,
    step,
    error,
    variables: dict,
    options,
    *,
    batch_shape=(),
    watch=(),
    unrolled: bool = False,
    prologue: bool = False,
    record: list | None = None,
) -> dict:
    """Iterate ``step`` until the ``error`` is below the threshold (see the module doc).

    Args:
        adapter: the backend adapter (its ``while_loop``, ``while_loop_differentiable``,
            ``fori_loop``).
        step: ``step(t, variables) -> variables``, one iteration; ``t`` is the iteration
            index (a Python int or a 0-d integer array: ``k · inner_iterations + i``).
        error: ``error(new, old) -> err`` of shape ``batch_shape``, from the variables
            after (``new``) and before (``old``) a block of steps.
        variables: the initial iterates, a dict (its first value gives the dtype and
            device of the error history); the keys ``k``, ``err``, ``errors``,
            ``diverged`` and ``converged`` are reserved.
        options: the stopping options (a :class:`Stopping`, or any object with its
            four attributes).
        batch_shape: the shape of the error: one error, and one ``converged``, per
            problem of a batch; the loop runs until all are below the threshold.
        watch: names of variables that must stay finite (else ``diverged``), besides
            the error.
        unrolled: run the adapter's differentiable loop (derivatives through the
            iterations) instead of its plain one.
        prologue: run one more block first, with ``k = -1`` (its steps see ``t < 0``),
            whose error is neither recorded nor compared with the threshold: for a step
            that also evaluates quantities at the current iterate, which then run once
            per block in a single traced body (the free-support barycenter's inner
            solves: the prologue solves at the initial support, without moving it).
        record: a list (eager backends only) that receives the variables before each
            step (for a manual reverse pass over the iterates).

    Returns:
        The final variables, plus ``k``, ``err``, ``errors``, ``diverged`` and
        ``converged`` (the module doc gives their shapes).

    Example: ``x <- cos(x)`` converges to the Dottie number 0.739085...

        >>> import numpy as np
        >>> from otcore.backends import adapter_for
        >>> ad = adapter_for(np.zeros(1))
        >>> st = fixed_point_loop(
        ...     ad,
        ...     lambda t, v: {"x": np.cos(v["x"])},
        ...     lambda new, old: np.abs(np.cos(new["x"]) - new["x"]),
        ...     {"x": np.asarray(1.0)},
        ...     Stopping(1e-8, inner_iterations=5, max_iterations=200),
        ... )
        >>> round(float(st["x"]), 6), int(st["k"]) * 5, bool(st["converged"])
        (0.739085, 45, True)
        >>> st["errors"].shape
        (40,)
    """
    clash = [name for name in _RESERVED if name in variables]
    if clash:
        raise ValueError(f"the loop's variables must not be named {clash} (reserved)")
    xp = adapter.xp
    names = tuple(variables)
    ref = variables[names[0]]
    dtype, dev = ref.dtype, _xp.device_of(ref)
    inner = options.inner_iterations
    blocks = n_blocks(options)
    min_blocks = math.ceil(options.min_iterations / inner)
    threshold = options.threshold
    state = dict(variables)
    state["k"] = xp.asarray(-1 if prologue else 0, device=dev)
    state["err"] = xp.full(tuple(batch_shape), math.inf, dtype=dtype, device=dev)
    state["diverged"] = xp.asarray(False, device=dev)
    state["errors"] = xp.full(tuple(batch_shape) + (blocks,), -1.0, dtype=dtype, device=dev)

    def cond(st):
        more = xp.any(st["err"] > threshold) | (st["k"] < min_blocks)
        return (st["k"] < blocks) & more & ~st["diverged"]

    def body(st):
        k = st["k"]
        old = {name: st[name] for name in names}

        def one(i, v):
            if record is not None:
                record.append(v)
            return step(k * inner + i, v)

        new = adapter.fori_loop(inner, one, old)
        err = error(new, old)
        diverged = ~xp.all(xp.isfinite(err))
        for name in watch:
            diverged = diverged | ~xp.all(xp.isfinite(new[name]))
        out = dict(new)
        out["k"] = k + 1
        # built here, not closed over: a nested differentiable loop (JAX) must not
        # capture an array of an enclosing trace
        out["errors"] = xp.where(xp.arange(blocks, device=dev) == k, err[..., None], st["errors"])
        if prologue:  # the prologue's error is no error: keep going
            err = xp.where(k < 0, xp.full(err.shape, math.inf, dtype=err.dtype, device=dev), err)
        out["err"] = err
        out["diverged"] = diverged
        return out

    if unrolled:
        state = adapter.while_loop_differentiable(cond, body, state, blocks + int(prologue))
    else:
        state = adapter.while_loop(cond, body, state)
    state["converged"] = (state["err"] <= threshold) & ~state["diverged"]
    return state
