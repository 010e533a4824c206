"""Backend adapters: the only place where jax, torch or cupy are imported.

A framework module is imported only when one of its arrays is seen, so ``import otcore``
imports neither JAX nor PyTorch.
"""

from __future__ import annotations

import array_api_compat

from otcore._lib import xp as _xp

__all__ = ["adapter_for"]


def adapter_for(*arrays, names=None):
    """The adapter for the arrays' framework (``None`` entries are skipped).

    Args:
        *arrays: the user's arrays; they must all come from one library.
        names: optional argument names, used in the error message for mixed types.

    Returns:
        An :class:`otcore.backends._base.Adapter` bound to the arrays' namespace.

    Example:
        >>> import numpy as np
        >>> adapter_for(np.ones(2)).name
        'numpy'
    """
    xp = _xp.namespace(*arrays, names=names)
    x = next(a for a in arrays if a is not None)
    if array_api_compat.is_jax_array(x):
        from otcore.backends.jax import JaxAdapter

        return JaxAdapter(xp)
    if array_api_compat.is_torch_array(x):
        from otcore.backends.torch import TorchAdapter

        return TorchAdapter(xp)
    if array_api_compat.is_cupy_array(x):
        from otcore.backends.cupy import CupyAdapter

        return CupyAdapter(xp)
    if array_api_compat.is_numpy_array(x):
        from otcore.backends.numpy import NumpyAdapter

        return NumpyAdapter(xp)
    from otcore.backends.numpy import GenericAdapter

    return GenericAdapter(xp)
