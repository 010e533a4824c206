"""Warnings and errors raised by otcore's convenience functions."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "NonFiniteIterationError", "UnsupportedDerivativeError"]


class ConvergenceWarning(UserWarning):
    """A solve stopped at ``max_iterations`` before its error fell below ``threshold``."""


class NonFiniteIterationError(FloatingPointError):
    """The iterates became NaN or infinite (e.g. kernel-mode underflow at small ε).

    Raised by the scalar convenience functions on eager backends; under ``jax.jit`` the
    value is NaN and :attr:`SinkhornOutput.diverged` is True.
    """


class UnsupportedDerivativeError(NotImplementedError, TypeError):
    """``ot.grad``/``ot.vjp``/``ot.hvp``/``ot.hessian`` asked for a derivative that the
    entry point's capability table (:mod:`otcore.autodiff.capabilities`) does not offer on
    this backend, in this mode, at this order; the message says what to use instead."""
