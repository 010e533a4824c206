"""Registry of manual derivative rules for backends without autodiff (NumPy, CuPy, ...).

A rule for an entry point ``fun`` is ``rule(args, kwargs) -> (value, vjp_fn)`` where
``vjp_fn(cotangent)`` returns one cotangent per positional argument (``None`` for
arguments that are not arrays), like ``jax.vjp``.
"""

from __future__ import annotations

RULES: dict = {}
HVP_RULES: dict = {}


def register(fun):
    """Decorator registering the manual VJP rule of entry point ``fun``."""

    def wrap(rule):
        RULES[fun] = rule
        return rule

    return wrap


def register_hvp(fun):
    """Decorator registering ``rule(args, kwargs, argnum) -> (gradient, v -> H v)``."""

    def wrap(rule):
        HVP_RULES[fun] = rule
        return rule

    return wrap
