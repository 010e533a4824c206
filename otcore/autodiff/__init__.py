"""Framework-neutral differentiation: ``grad``, ``vjp``, ``hvp``, ``hessian``; the manual
rules used on backends without autodiff (NumPy, CuPy), registered explicitly in
:func:`otcore.autodiff.registry.manual_rules`; and the capability table of every
differentiable entry point (:mod:`otcore.autodiff.capabilities`)."""

from otcore.autodiff.transforms import grad, hessian, hvp, value_and_grad, vjp

__all__ = ["grad", "hessian", "hvp", "value_and_grad", "vjp"]
