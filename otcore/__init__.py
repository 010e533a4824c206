"""otcore: differentiable entropic optimal transport, written once for every array library.

Pass NumPy, JAX, PyTorch or CuPy arrays; results come back as the same type, dtype and
device. See ``docs/`` for the conventions (ε, units, which way the plan goes).
"""

from . import _barycenter_rules as _barycenter_rules  # registers the manual rules
from . import _divergence_rules as _divergence_rules
from . import _reg_ot_cost_rules as _reg_ot_cost_rules
from . import costs, neural
from .api import reg_ot_cost, reg_ot_cost_matrix, solve
from .autodiff import grad, hessian, hvp, value_and_grad, vjp
from .barycenter import BarycenterOutput, barycenter
from .dictionary import WassersteinDictionary
from .divergence import DivergenceOutput, sinkhorn_divergence, sinkhorn_divergence_costs
from .epsilon import EpsilonSchedule
from .errors import ConvergenceWarning, NonFiniteIterationError
from .free_barycenter import FreeBarycenterOutput, free_barycenter
from .geometry import Geometry, PointCloud
from .grid import Grid
from .implicit import ImplicitDiff
from .output import SinkhornOutput
from .problem import LinearProblem
from .sinkhorn import Sinkhorn

__version__ = "0.1.0"

__all__ = [
    "BarycenterOutput",
    "ConvergenceWarning",
    "DivergenceOutput",
    "EpsilonSchedule",
    "FreeBarycenterOutput",
    "Geometry",
    "Grid",
    "ImplicitDiff",
    "LinearProblem",
    "NonFiniteIterationError",
    "PointCloud",
    "Sinkhorn",
    "SinkhornOutput",
    "WassersteinDictionary",
    "barycenter",
    "costs",
    "free_barycenter",
    "grad",
    "hessian",
    "hvp",
    "neural",
    "reg_ot_cost",
    "reg_ot_cost_matrix",
    "sinkhorn_divergence",
    "sinkhorn_divergence_costs",
    "solve",
    "value_and_grad",
    "vjp",
]
