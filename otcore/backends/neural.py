"""The framework side of :mod:`otcore.neural`: what the adapters' ``training()`` returns.

Training a neural dual needs gradients with respect to parameters and inputs, which the
array API does not have: only JAX and PyTorch can train. Their adapters' ``training()``
hook (declared on :class:`otcore.backends.base.Adapter`) returns a subclass of
:class:`TrainingOps` from :mod:`otcore.backends.neural_jax` or
:mod:`otcore.backends.neural_torch`. Nothing here imports :mod:`otcore.neural`.
"""

from __future__ import annotations

import numpy as np

from otcore._lib.adam import Adam

__all__ = ["TrainingOps"]


class TrainingOps:
    """Autodiff, jit and optimiser plumbing of one framework, bound to its adapter.

    Subclasses supply ``asarray``, ``is_native``, ``to_numpy``, ``input_grad``,
    ``value_and_input_grad_fn``, ``wrap_optimizer`` (via :meth:`_wrap_other`),
    ``prepare_params``, ``detach_params``, ``make_train_step`` and ``make_eval_step``.

    Attributes:
        name: the backend's name.
        xp: the framework's array API namespace.
    """

    def __init__(self, adapter):
        self._adapter = adapter
        self.name = adapter.name
        self.xp = adapter.xp

    def stop_gradient(self, x):
        """``x`` as a constant (the adapter's :meth:`~otcore.backends.base.Adapter.stop_gradient`)."""
        return self._adapter.stop_gradient(x)

    def jit(self, fn):
        """``fn`` compiled when the framework compiles (the adapter's ``jit``)."""
        return self._adapter.jit(fn)

    def is_native(self, x) -> bool:
        """True when ``x`` is an array of this framework (the registry's test)."""
        from otcore.backends import REGISTRY

        return REGISTRY[self.name].recognise(x)

    def to_numpy(self, x):
        """A host NumPy copy of ``x``."""
        return np.asarray(x)

    def wrap_optimizer(self, opt, name):
        """``opt`` (an :class:`otcore.neural.Adam` or a native optimiser) as an object
        with ``init(params)`` and ``update(params, grads, state)``; ``name`` is the
        argument named in errors."""
        if isinstance(opt, Adam):
            return self._wrap_adam(opt)
        return self._wrap_other(opt, name)

    def _wrap_adam(self, opt):
        raise NotImplementedError

    def _wrap_other(self, opt, name):
        raise NotImplementedError
