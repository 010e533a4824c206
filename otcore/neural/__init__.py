"""Neural optimal transport: the W2 neural dual with ICNN / MLP potentials.

Written once in array API code; training runs on JAX or PyTorch (the batches' framework,
or ``backend=`` for NumPy batches). See ``docs/neural.md``.
"""

from .conjugate import ConjugateResults, FenchelConjugateLBFGS
from .networks import ICNN, PotentialMLP, gaussian_map
from .neuraldual import DEFAULT_CONJUGATE_SOLVER, W2NeuralDual
from .optim import Adam
from .potentials import DualPotentials

__all__ = [
    "DEFAULT_CONJUGATE_SOLVER",
    "ICNN",
    "Adam",
    "ConjugateResults",
    "DualPotentials",
    "FenchelConjugateLBFGS",
    "PotentialMLP",
    "W2NeuralDual",
    "gaussian_map",
]
