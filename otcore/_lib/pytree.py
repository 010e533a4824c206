"""A framework-free registry of the classes that are pytrees (geometries, problems, outputs).

A pytree is an object that a tracing framework (``jax.jit``, ``jax.vmap``, ``lax.scan``)
takes apart into its arrays (the *children*) and a hashable description of everything else
(the *aux data*), and rebuilds from new arrays. Core classes declare themselves here with
:func:`register` and provide

* ``tree_flatten(self) -> (children, aux)``: ``children`` a sequence of arrays (or nested
  pytrees, or ``None``), ``aux`` hashable and comparable with ``==``;
* ``tree_unflatten(cls, aux, children)`` (a classmethod): the object rebuilt from them.

The JAX adapter (``otcore.backends.jax``) registers every class of this registry with
``jax.tree_util`` when it is imported, and every class registered later through
:func:`on_register`; the core never imports a framework. ``tree_unflatten`` must not
validate its children: a framework passes tracers, ``None`` or placeholder objects.
Registration is per class, as in JAX: a subclass is a pytree only if it is decorated too.

:class:`Static` makes any option object (a solver, a cost function, an adapter) usable as
aux data: it compares by value (type and attributes, recursively), so two solvers built
with the same options give the same tree structure (``lax.scan`` requires that of its
carry; ``jax.jit`` reuses its compilation).

A class declares itself so::

    @register
    class Pair:
        def tree_flatten(self):
            return (self.u, self.v), Static(self.options)

        @classmethod
        def tree_unflatten(cls, aux, children):
            obj = cls.__new__(cls)  # no __init__: no validation of the children
            obj.u, obj.v = children
            obj.options = aux.value
            return obj

Example:
    >>> Static([1, {"a": 2.0}]) == Static([1, {"a": 2.0}]), Static(1) == Static(1.0)
    (True, False)
    >>> import numpy as np
    >>> children, layout = split((0.5, np.ones(2), None))  # numbers and None are static
    >>> children, join(layout, ["new"])
    ([array([1., 1.])], (0.5, 'new', None))
"""

from __future__ import annotations

import types

__all__ = [
    "CHILD",
    "AttributeNode",
    "Static",
    "flatten_attrs",
    "join",
    "on_register",
    "register",
    "registered",
    "split",
    "unflatten_attrs",
]

_REGISTRY: list[type] = []
_CALLBACKS: list = []


def register(cls):
    """Class decorator: declare ``cls`` a pytree (see the module docstring)."""
    if not (hasattr(cls, "tree_flatten") and hasattr(cls, "tree_unflatten")):
        raise TypeError(f"{cls.__name__} must define tree_flatten and tree_unflatten")
    if cls not in _REGISTRY:
        _REGISTRY.append(cls)
        for callback in tuple(_CALLBACKS):
            callback(cls)
    return cls


def on_register(callback) -> None:
    """Call ``callback(cls)`` for every registered class, now and whenever one is added."""
    _CALLBACKS.append(callback)
    for cls in tuple(_REGISTRY):
        callback(cls)


def registered() -> tuple[type, ...]:
    """The registered classes, in registration order."""
    return tuple(_REGISTRY)


# -- static (aux) data ------------------------------------------------------------------
_IDENTITY_TYPES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


def _key(obj, depth: int = 0):
    """A hashable key equal for equal option values (see :class:`Static`)."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return (type(obj).__name__, obj)
    if depth > 8:  # deep or cyclic structures: compare by identity
        return ("id", id(obj))
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_key(v, depth + 1) for v in obj))
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return ("dict", tuple((repr(k), _key(v, depth + 1)) for k, v in items))
    if isinstance(obj, Static):
        return obj._key
    if isinstance(obj, _IDENTITY_TYPES):
        return ("obj", obj)
    if hasattr(obj, "__dict__") and type(obj).__eq__ is object.__eq__:
        items = sorted(vars(obj).items())
        return (type(obj), tuple((k, _key(v, depth + 1)) for k, v in items))
    try:
        hash(obj)
    except TypeError:  # arrays and other unhashable values: by identity
        return ("id", id(obj))
    return ("obj", obj)


class Static:
    """Wraps an option value for aux data: equal when type and attributes are equal.

    Plain Python values compare by type and value (``1 != 1.0``), containers and objects
    without their own ``__eq__`` item by item, functions, modules and classes by identity,
    arrays by identity. The wrapped object is :attr:`value`.
    """

    __slots__ = ("_key", "value")

    def __init__(self, value):
        self.value = value
        self._key = _key(value)

    def __eq__(self, other):
        return isinstance(other, Static) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return f"Static({self.value!r})"


CHILD = None
"""Marks a child slot in a layout (see :func:`split`)."""


def _is_static(value) -> bool:
    return value is None or type(value) in (bool, int, float, complex, str)


def split(values, layout=None):
    """Sort ``values`` into children and a hashable layout.

    ``None``, Python numbers and strings are static (kept in the layout, as
    :class:`Static`); everything else is a child. With ``layout`` given (that of an object
    rebuilt by :func:`join`), it is followed as is: a framework may have put ``None`` or
    a number in a child's place, and the structure must not change.

    Returns:
        ``(children, layout)``: a list, and a tuple holding :data:`CHILD` or a
        :class:`Static` per value.
    """
    if layout is None:
        layout = tuple(Static(v) if _is_static(v) else CHILD for v in values)
    children = [v for v, slot in zip(values, layout) if slot is CHILD]
    return children, layout


def join(layout, children) -> tuple:
    """The values of :func:`split` back, in order, from ``layout`` and ``children``."""
    it = iter(children)
    return tuple(next(it) if slot is CHILD else slot.value for slot in layout)


# -- attribute-based flattening (outputs, problems) ----------------------------------------
_LAYOUT_ATTR = "_pytree_layout"


def flatten_attrs(obj, names, skip=()):
    """``(children, aux)`` of an object whose state is its attributes.

    The attributes ``names`` are split by :func:`split` (arrays and nested pytrees are
    children); every other attribute except ``skip`` is aux data, as :class:`Static`.
    """
    state = vars(obj)
    children, layout = split(tuple(state[n] for n in names), state.get(_LAYOUT_ATTR))
    drop = set(names) | set(skip) | {_LAYOUT_ATTR}
    static = tuple(sorted((k, Static(v)) for k, v in state.items() if k not in drop))
    return children, (tuple(names), layout, static)


def unflatten_attrs(cls, aux, children):
    """The object of :func:`flatten_attrs` rebuilt without calling ``__init__`` (no
    validation: children may be tracers or placeholders); ``skip`` attributes are unset."""
    names, layout, static = aux
    obj = cls.__new__(cls)
    obj.__dict__.update((k, s.value) for k, s in static)
    obj.__dict__.update(zip(names, join(layout, children)))
    obj.__dict__[_LAYOUT_ATTR] = layout
    return obj


class AttributeNode:
    """Mixin for a class whose pytree state is its attributes: the attributes named in
    ``_tree_children`` are children (arrays, nested pytrees; Python numbers and ``None``
    among them go to aux), every other attribute is aux (see :func:`flatten_attrs`).
    Decorate the subclass with :func:`register`."""

    _tree_children: tuple[str, ...] = ()

    def tree_flatten(self):
        return flatten_attrs(self, self._tree_children)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return unflatten_attrs(cls, aux, children)
