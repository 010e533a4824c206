"""NumPy adapter (also serves array_api_strict and any other eager namespace)."""

from __future__ import annotations

from otcore.backends.base import Adapter


class NumpyAdapter(Adapter):
    """Eager adapter for NumPy arrays: the portable implementation of :class:`Adapter`."""

    name = "numpy"


class GenericAdapter(Adapter):
    """Eager adapter for any other array API namespace (e.g. ``array_api_strict``)."""

    name = "array_api"
