"""Unknown keyword arguments: a ``TypeError`` naming the public function, with suggestions.

Entry points that forward ``**options`` to :class:`~otcore.Sinkhorn` would otherwise fail
inside it (``Sinkhorn.__init__() got an unexpected keyword argument 'reg'``), naming an
internal call. :func:`check_keywords` names the public function instead and suggests the
closest accepted keyword (:func:`difflib.get_close_matches`), plus the names other
libraries use for the same thing (POT's ``reg``, GeomLoss's ``blur``, ...).
"""

from __future__ import annotations

import difflib
import functools
import inspect

__all__ = ["accepted_keywords", "check_forwarded", "check_keywords", "suggest_keywords"]

_EPS_NOTE = "epsilon is the entropic regularisation ε, in the units of the cost"

# names other libraries (or habits) use, mapped to otcore's name and a note
ALIASES = {
    "reg": ("epsilon", f"POT's reg: {_EPS_NOTE}"),
    "eps": ("epsilon", _EPS_NOTE),
    "blur": (
        "epsilon",
        "GeomLoss's blur is not ε: GeomLoss uses ε = blur**p with its own cost |x-y|^p/p, so "
        "with cost='sqeuclidean' (|x-y|², no 1/2) blur=σ matches epsilon=2*σ**2",
    ),
    "reg_m": (
        "tau_a",
        "POT's reg_m is a marginal penalty ρ: otcore takes tau_a, tau_b = ρ/(ρ + ε)",
    ),
    "reach": (
        "tau_a",
        "GeomLoss's reach r is a marginal penalty ρ = r**p: otcore takes tau_a, tau_b = ρ/(ρ + ε)",
    ),
    "stopThr": ("threshold", "the stopping tolerance on the marginal error"),
    "tol": ("threshold", "the stopping tolerance on the marginal error"),
    "numItermax": ("max_iterations", "the iteration cap"),
    "max_iter": ("max_iterations", "the iteration cap"),
    "maxiter": ("max_iterations", "the iteration cap"),
}

_ELSEWHERE = {
    "epsilon": "it is set on the geometry (ot.Geometry, ot.PointCloud, ot.Grid) or passed to "
    "ot.solve / ot.reg_ot_cost",
    "tau_a": "it is set on the problem (ot.LinearProblem) or passed to ot.solve / ot.reg_ot_cost",
}


@functools.cache
def accepted_keywords(*callables) -> tuple[str, ...]:
    """The keyword names accepted by the callables (a class: its ``__init__``), sorted.

    Example:
        >>> def f(x, *, epsilon=None, **options): ...
        >>> accepted_keywords(f)
        ('epsilon', 'x')
    """
    names = set()
    for fun in callables:
        sig = inspect.signature(fun)
        names.update(
            name
            for name, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self"
        )
    return tuple(sorted(names))


def _hint(where, key, accepted, outer) -> str:
    if key in ALIASES:
        target, note = ALIASES[key]
        if target in accepted:
            return f"did you mean {target!r}? ({note})"
        if target in outer:
            return f"did you mean {target!r}, an argument of {where}() itself? ({note})"
        where_else = _ELSEWHERE.get(target)
        return f"did you mean {target!r}? ({note}; {where_else})" if where_else else ""
    close = difflib.get_close_matches(key, accepted, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def check_keywords(where: str, given, accepted, in_what: str = "", outer=()) -> None:
    """Raise ``TypeError`` if ``given`` (names) holds a name not in ``accepted``.

    Args:
        where: the public function's name as the user wrote it (``"reg_ot_cost"``).
        given: the keyword names passed (a dict's keys, for instance).
        accepted: every name the function accepts (its own and those it forwards).
        in_what: where the keywords came from, e.g. ``" in sinkhorn_kwargs"``.
        outer: for keywords in a dict of options (``in_what``), the names of the
            function's own arguments (``reg`` in ``sinkhorn_kwargs`` suggests the
            function's own ``epsilon``).

    Example:
        >>> check_keywords("reg_ot_cost", {"treshold": 1e-6}, ("epsilon", "threshold"))
        Traceback (most recent call last):
        ...
        TypeError: reg_ot_cost() got an unexpected keyword argument 'treshold'; did you mean 'threshold'?
    """
    accepted = tuple(accepted)
    unknown = [k for k in given if k not in accepted]
    if not unknown:
        return
    hints = [(key, _hint(where, key, accepted, tuple(outer))) for key in unknown]
    if len(unknown) == 1:
        key, hint = hints[0]
        tail = f"; {hint}" if hint else ""
        raise TypeError(f"{where}() got an unexpected keyword argument {key!r}{in_what}{tail}")
    listing = ", ".join(repr(k) for k in unknown)
    tail = "".join(f"; for {key!r}: {hint}" for key, hint in hints if hint)
    raise TypeError(f"{where}() got unexpected keyword arguments {listing}{in_what}{tail}")


def check_forwarded(where: str, fun, options, target) -> None:
    """Check the ``**options`` that ``fun`` (public name ``where``) forwards to ``target``
    (e.g. :class:`~otcore.Sinkhorn`): a name neither accepts raises :func:`check_keywords`'
    ``TypeError``, with suggestions among both sets of names."""
    if all(k in accepted_keywords(target) for k in options):
        return
    check_keywords(where, options, accepted_keywords(fun, target))


def suggest_keywords(name: str):
    """Decorator: unknown keywords of the decorated function (or class ``__init__``) raise
    :func:`check_keywords`' ``TypeError`` (naming ``name``, with a suggestion) instead of
    Python's. The signature seen by :func:`inspect.signature` is unchanged."""

    def decorate(fun):
        accepted = accepted_keywords(fun)
        has_var_kw = any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(fun).parameters.values()
        )

        @functools.wraps(fun)
        def wrapper(*args, **kwargs):
            if not has_var_kw:
                check_keywords(name, kwargs, accepted)
            return fun(*args, **kwargs)

        return wrapper

    return decorate
