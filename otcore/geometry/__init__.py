"""What is measured: the geometry protocol, its solver-facing operators, and the
geometries (cost matrix, point clouds, grids), costs and ε."""

from otcore.geometry import costs
from otcore.geometry.base import Geometry, PointCloud
from otcore.geometry.epsilon import EpsilonSchedule
from otcore.geometry.grid import Grid

__all__ = ["EpsilonSchedule", "Geometry", "Grid", "PointCloud", "costs"]
