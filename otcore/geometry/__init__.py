"""What is measured: the geometry protocol, its solver-facing operators, and the
geometries (cost matrix, point clouds, grids), costs and ε."""

from otcore.geometry import costs
from otcore.geometry.base import Geometry
from otcore.geometry.epsilon import EpsilonSchedule
from otcore.geometry.grid import Grid, GridOperators
from otcore.geometry.operators import DenseOperators, GeometryOperators
from otcore.geometry.pointcloud import PointCloud

__all__ = [
    "DenseOperators",
    "EpsilonSchedule",
    "Geometry",
    "GeometryOperators",
    "Grid",
    "GridOperators",
    "PointCloud",
    "costs",
]
