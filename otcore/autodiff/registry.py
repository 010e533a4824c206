"""The manual derivative rules (NumPy, CuPy, array_api_strict), bound by signature.

A rule never sees raw ``(args, kwargs)``: it receives a :class:`Call`, the call bound to
the entry point's own signature with its defaults applied
(``inspect.signature(fun).bind(*args, **kwargs).apply_defaults()``), and reads every
option from it. No rule copies a default, so a default changed in an entry point is the
default its rule uses. Unknown keywords are refused with a ``TypeError`` naming them; an
entry point that forwards ``**options`` to another callable (``Sinkhorn``) declares it,
and the forwarded keywords are checked against that callable's signature too.

A rule is

* first order: ``vjp(call) -> (value, vjp_fn)``, ``vjp_fn(cotangent)`` returning one
  cotangent per positional argument of the call (``None`` for non-arrays), like
  ``jax.vjp``;
* second order: ``hvp(call, argnum) -> (gradient, v -> H v)``.

Registration is explicit: each rules module has ``register(registry)``, and
:func:`manual_rules` calls them, in one place, the first time a rule is needed.

Example:
    >>> import numpy as np, otcore as ot
    >>> call = Call(ot.reg_ot_cost, (np.zeros((3, 2)),), {"epsilon": 0.5})
    >>> call["tau_a"], call["epsilon"], call.options
    (1.0, 0.5, {})
    >>> Call(ot.reg_ot_cost, (np.zeros((3, 2)),), {"epsilom": 0.5})
    Traceback (most recent call last):
    ...
    TypeError: reg_ot_cost() got an unexpected keyword argument 'epsilom'; did you mean 'epsilon'?
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

from otcore._lib import keywords as _keywords
from otcore.api import reg_ot_cost, reg_ot_cost_matrix, solve
from otcore.autodiff import barycenter_rules, divergence_rules, reg_ot_cost_rules
from otcore.solvers.divergence import sinkhorn_divergence, sinkhorn_divergence_costs
from otcore.solvers.sinkhorn import Sinkhorn

__all__ = ["Call", "Registry", "manual_rules"]


def _signature(fun):
    # not cached: a default changed at run time is the default the rule sees
    return inspect.signature(fun)


def _keyword_names(sig):
    return {
        name
        for name, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _var_keyword(sig):
    for name, p in sig.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            return name
    return None


# entry points whose ``**options`` go to another callable: checked against its signature
FORWARDS = {
    reg_ot_cost: Sinkhorn,
    reg_ot_cost_matrix: Sinkhorn,
    solve: Sinkhorn,
    sinkhorn_divergence: Sinkhorn,
    sinkhorn_divergence_costs: Sinkhorn,
}


class Call:
    """A call of entry point ``fun`` bound to its signature, defaults applied.

    Attributes:
        fun: the entry point.
        arguments: every parameter by name (defaults included); the ``**options`` of an
            entry point that has them are one dict under their own name.
        options: that dict (``{}`` when the entry point takes none).
        n_positional: how many positional arguments the caller passed (the rules return
            that many cotangents).
    """

    def __init__(self, fun, args, kwargs):
        self.fun = fun
        name = getattr(fun, "__name__", repr(fun))
        sig = _signature(fun)
        var_kw = _var_keyword(sig)
        known = _keyword_names(sig)
        unknown = set() if var_kw is not None else set(kwargs) - known
        target = FORWARDS.get(fun)
        if var_kw is not None and target is not None:
            unknown = set(kwargs) - known - _keyword_names(_signature(target))
        if unknown:
            accepted = known | (_keyword_names(_signature(target)) if target else set())
            _keywords.check_keywords(name, sorted(unknown), sorted(accepted))
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{name}(): {err}") from None
        bound.apply_defaults()
        self.arguments = dict(bound.arguments)
        self.options = dict(self.arguments.get(var_kw, {})) if var_kw else {}
        self.n_positional = len(args)
        self._var_kw = var_kw

    def __getitem__(self, name):
        return self.arguments[name]

    def flat(self, **overrides) -> dict:
        """Every argument by keyword, ``**options`` spread out, then ``overrides``."""
        out = {k: v for k, v in self.arguments.items() if k != self._var_kw}
        out.update(self.options)
        out.update(overrides)
        return out


@dataclasses.dataclass
class Registry:
    """Manual rules by entry point: ``vjp[fun]`` (first order), ``hvp[fun]`` (second)."""

    vjp: dict = dataclasses.field(default_factory=dict)
    hvp: dict = dataclasses.field(default_factory=dict)

    def add(self, fun, vjp=None, hvp=None):
        """Register the rules of ``fun`` (either may be ``None``)."""
        if vjp is not None:
            self.vjp[fun] = vjp
        if hvp is not None:
            self.hvp[fun] = hvp

    def names(self) -> str:
        return ", ".join(sorted(f"otcore.{f.__name__}" for f in self.vjp))


@functools.cache
def manual_rules() -> Registry:
    """The registry, built once, in this one place, from every rules module's ``register``."""
    registry = Registry()
    for module in (reg_ot_cost_rules, divergence_rules, barycenter_rules):
        module.register(registry)
    return registry
