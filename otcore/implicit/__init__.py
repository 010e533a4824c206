"""Implicit differentiation: the optimality system of the Sinkhorn potentials and its
matrix-free linear solvers (conjugate gradients)."""

from otcore.implicit.system import ImplicitDiff, ImplicitSystem

__all__ = ["ImplicitDiff", "ImplicitSystem"]
