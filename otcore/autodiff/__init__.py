"""Framework-neutral differentiation: ``grad``, ``vjp``, ``hvp``, ``hessian`` and the
registry of manual rules used on backends without autodiff (NumPy, CuPy)."""

# the manual rules register themselves with the registry when their modules load
from otcore.autodiff import barycenter_rules, divergence_rules, reg_ot_cost_rules
from otcore.autodiff.transforms import grad, hessian, hvp, value_and_grad, vjp

__all__ = [
    "barycenter_rules",
    "divergence_rules",
    "grad",
    "hessian",
    "hvp",
    "reg_ot_cost_rules",
    "value_and_grad",
    "vjp",
]
