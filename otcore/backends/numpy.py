"""NumPy adapter (also serves array_api_strict and any other eager namespace)."""

from __future__ import annotations

import numpy as np

from otcore.backends.base import Adapter


class _NumpyErrors:
    """NumPy's notices off: ``RuntimeWarning``s on overflow or 0/0 (NumPy-backed
    namespaces such as ``array_api_strict`` included)."""

    def quiet_float_errors(self):
        return np.errstate(all="ignore")


class NumpyAdapter(_NumpyErrors, Adapter):
    """Eager adapter for NumPy arrays: the portable implementation of :class:`Adapter`."""

    name = "numpy"


class GenericAdapter(_NumpyErrors, Adapter):
    """Eager adapter for any other array API namespace (e.g. ``array_api_strict``)."""

    name = "array_api"
