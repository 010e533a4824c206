"""Backend adapters: the only place where jax, torch or cupy are imported.

One registry, :data:`REGISTRY`, maps a framework's name to how its arrays are recognised,
the module of its array API namespace and the adapter class that supplies what the array
API lacks (:class:`otcore.backends.base.Adapter`). Modules are imported only when one of
the framework's arrays is seen (or its name is asked for), so ``import otcore`` imports
neither JAX nor PyTorch.

Adding a backend is one adapter file (a subclass of :class:`~otcore.backends.base.Adapter`)
plus one :class:`BackendEntry` line in :data:`REGISTRY`.

Example:
    >>> import numpy as np
    >>> adapter_for(np.ones(2)).name
    'numpy'
    >>> "torch" in backend_names() and "numpy" in backend_names()
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import array_api_compat

from otcore._lib import xp as _xp

__all__ = ["REGISTRY", "BackendEntry", "adapter_by_name", "adapter_for", "backend_names"]


def _module_is(prefix: str) -> Callable[[object], bool]:
    def recognise(x) -> bool:
        return type(x).__module__.split(".")[0] == prefix

    return recognise


@dataclass(frozen=True)
class BackendEntry:
    """One framework: how to recognise its arrays and what to load (lazily) for it.

    Attributes:
        name: the backend's name (``adapter.name``, ``W2NeuralDual(backend=...)``).
        recognise: ``recognise(x)`` is true for this framework's arrays; it must not import
            the framework.
        adapter: ``"module:Class"`` of the adapter, imported on first use.
        namespace: the module of the framework's array API namespace (used when the
            backend is asked for by name; an array's own namespace is found from it).
    """

    name: str
    recognise: Callable[[object], bool]
    adapter: str
    namespace: str

    def load(self, xp=None):
        """The adapter bound to ``xp`` (default: the framework's own namespace)."""
        module, cls = self.adapter.split(":")
        if xp is None:
            xp = importlib.import_module(self.namespace)
        adapter = getattr(importlib.import_module(module), cls)(xp)
        adapter.name = self.name  # one adapter class may serve several entries
        return adapter


# Order matters only where two tests could match; none do today.
REGISTRY: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        BackendEntry("numpy", array_api_compat.is_numpy_array, "otcore.backends.numpy:NumpyAdapter", "array_api_compat.numpy"),
        BackendEntry("array_api_strict", _module_is("array_api_strict"), "otcore.backends.numpy:GenericAdapter", "array_api_strict"),
        BackendEntry("jax", array_api_compat.is_jax_array, "otcore.backends.jax:JaxAdapter", "jax.numpy"),
        BackendEntry("torch", array_api_compat.is_torch_array, "otcore.backends.torch:TorchAdapter", "array_api_compat.torch"),
        BackendEntry("cupy", array_api_compat.is_cupy_array, "otcore.backends.cupy:CupyAdapter", "array_api_compat.cupy"),
    )
}  # fmt: skip


def backend_names() -> tuple[str, ...]:
    """The registered backend names (installed or not), in registry order."""
    return tuple(REGISTRY)


def _entry_of(x) -> BackendEntry:
    for entry in REGISTRY.values():
        if entry.recognise(x):
            return entry
    raise TypeError(
        f"no otcore backend handles {type(x).__module__}.{type(x).__name__} arrays; "
        f"registered backends: {', '.join(REGISTRY)} (see otcore.backends.REGISTRY)"
    )


def adapter_for(*arrays, names=None):
    """The adapter for the arrays' framework (``None`` entries are skipped).

    Args:
        *arrays: the user's arrays; they must all come from one library.
        names: optional argument names, used in the error messages.

    Returns:
        An :class:`otcore.backends.base.Adapter` bound to the arrays' namespace.

    Raises:
        TypeError: no array, an argument that is not an array, arrays of several
            libraries, or arrays of a library with no registered backend.

    Example:
        >>> import numpy as np
        >>> adapter_for(np.ones(2), None, np.zeros(3)).name
        'numpy'
    """
    xp = _xp.namespace(*arrays, names=names)
    x = next(a for a in arrays if a is not None)
    return _entry_of(x).load(xp)


def adapter_by_name(name: str):
    """The adapter of the backend ``name`` on the framework's own array API namespace.

    Raises:
        ValueError: ``name`` is not registered.
        ImportError: the framework is not installed.

    Example:
        >>> adapter_by_name("numpy").xp.asarray([1.0, 2.0]).shape
        (2,)
    """
    try:
        entry = REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backend {name!r}; registered backends: {', '.join(REGISTRY)}"
        ) from None
    return entry.load()
