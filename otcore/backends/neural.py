"""Dispatch to the framework-side helpers of :mod:`otcore.neural` (autodiff, jit, optimisers).

Training a neural dual needs gradients with respect to parameters and inputs, which the
array API does not have: only JAX and PyTorch can train. The helpers are selected by the
adapter's ``name``.
"""

from __future__ import annotations

__all__ = ["ops_for", "ops_for_name"]

_TRAINABLE = ("jax", "torch")


def ops_for_name(name: str):
    """The neural helpers of backend ``name`` (``"jax"`` or ``"torch"``)."""
    if name == "jax":
        from otcore.backends.neural_jax import JaxNeuralOps

        return JaxNeuralOps()
    if name == "torch":
        from otcore.backends.neural_torch import TorchNeuralOps

        return TorchNeuralOps()
    raise TypeError(
        f"the neural dual needs automatic differentiation: backend must be 'jax' or "
        f"'torch', got {name!r}"
    )


def ops_for(adapter):
    """The neural helpers for an adapter from :func:`otcore.backends.adapter_for`."""
    if adapter.name not in _TRAINABLE:
        raise TypeError(
            f"{adapter.name} arrays have no automatic differentiation, which the neural dual "
            "needs (gradients w.r.t. parameters and inputs): pass JAX or PyTorch arrays, or "
            "NumPy arrays together with backend='jax' or backend='torch'"
        )
    return ops_for_name(adapter.name)
