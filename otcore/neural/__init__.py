"""Neural optimal transport: the W2 neural dual with ICNN / MLP potentials.

Written once in array API code; training runs on JAX or PyTorch (the batches' framework,
or ``backend=`` for NumPy batches). See ``docs/neural.md``.
"""

from otcore._lib.adam import Adam
from otcore.neural.conjugate import ConjugateResults, FenchelConjugateLBFGS
from otcore.neural.networks import ICNN, PotentialMLP, gaussian_map
from otcore.neural.neuraldual import DEFAULT_CONJUGATE_SOLVER, W2NeuralDual
from otcore.neural.potentials import DualPotentials

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
