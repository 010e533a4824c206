"""otcore: differentiable entropic optimal transport, written once for every array library.

Pass NumPy, JAX, PyTorch or CuPy arrays; results come back as the same type, dtype and
device. See ``docs/`` for the conventions (ε, units, which way the plan goes).
"""

from otcore import neural
from otcore.api import reg_ot_cost, reg_ot_cost_matrix, solve
from otcore.autodiff.transforms import grad, hessian, hvp, value_and_grad, vjp
from otcore.errors import (
    ConvergenceWarning,
    NonFiniteIterationError,
    UnsupportedDerivativeError,
)
from otcore.geometry import costs
from otcore.geometry.base import Geometry
from otcore.geometry.epsilon import EpsilonSchedule
from otcore.geometry.grid import Grid
from otcore.geometry.pointcloud import PointCloud
from otcore.implicit.system import ImplicitDiff
from otcore.problem import LinearProblem
from otcore.solvers.barycenter import BarycenterOutput, barycenter
from otcore.solvers.divergence import (
    DivergenceOutput,
    sinkhorn_divergence,
    sinkhorn_divergence_costs,
)
from otcore.solvers.free_barycenter import FreeBarycenterOutput, free_barycenter
from otcore.solvers.output import SinkhornOutput
from otcore.solvers.sinkhorn import Sinkhorn
from otcore.tools.dictionary import WassersteinDictionary

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
    "UnsupportedDerivativeError",
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
