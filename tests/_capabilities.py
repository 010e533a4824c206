"""Test helpers around the capability tables (``otcore/autodiff/capabilities.py``).

* :func:`expect` answers "should this derivative work here?" from the table: tests call it
  to decide between running a derivative and expecting the table's error;
* :func:`skip_unless_supported` skips a test whose cell is not supported;
* :func:`example_call` builds a tiny call of an entry point that lands in a given cell
  (backend, mode, geometry), and :func:`transform` the ``ot.*`` transform of an order.
"""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot
from otcore.autodiff import capabilities as cap

ANY = cap.ANY
EPS = 0.3

# the options that select each mode, per family of entry points
COST_MODE_KWARGS = {
    "envelope": {"use_danskin": True},
    "implicit": {"use_danskin": False},
    "unrolled": {"implicit_diff": None},
}
BARYCENTER_MODE_KWARGS = {
    "implicit": {"implicit_diff": ot.ImplicitDiff()},
    "unrolled": {"implicit_diff": None},
}
COSTS = {
    "built-in cost": "sqeuclidean",
    "cosine cost": "cosine",
    "callable cost": lambda x, y: ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1),
    ANY: "sqeuclidean",
}


def expect(fun, backend: str, mode: str, order: int, geometry: str = ANY) -> cap.Support:
    """The table's cell: ``.supported`` decides "run it" versus "expect the error"."""
    return cap.support(fun, backend, mode, order, geometry)


def skip_unless_supported(fun, backend, mode, order, geometry=ANY):
    cell = expect(fun, backend, mode, order, geometry)
    if not cell.supported:
        pytest.skip(f"{fun.__name__}: {backend}/{mode}/order {order}: {cell.reason}")
    return cell


def transform(order: int):
    """The ``ot`` transforms of an order: ``vjp`` for 1 (any output), ``hessian`` for 2."""
    return "vjp" if order == 1 else "hessian"


def _problem():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(4, 2)), rng.uniform(size=(3, 2)) + 0.5
    a, b = np.full(4, 0.25), np.full(3, 1 / 3)
    return x, y, a, b


def example_call(fun, mode: str, geometry: str = ANY, to_xp=np.asarray):
    """``(args, kwargs)`` of a tiny call of ``fun`` in ``mode`` (and ``geometry``)."""
    x, y, a, b = (to_xp(t) for t in _problem())
    if fun in (ot.reg_ot_cost, ot.sinkhorn_divergence):
        kw = dict(epsilon=EPS, cost=COSTS[geometry], threshold=1e-9, **COST_MODE_KWARGS[mode])
        return (x, y, a, b), kw
    if fun is ot.reg_ot_cost_matrix:
        C = to_xp(ot.PointCloud(*_problem()[:2]).cost_matrix)
        return (C, a, b), dict(epsilon=EPS, threshold=1e-9, **COST_MODE_KWARGS[mode])
    if fun is ot.sinkhorn_divergence_costs:
        px, py = _problem()[:2]
        costs = [to_xp(ot.PointCloud(u, v).cost_matrix) for u, v in ((px, py), (px, px), (py, py))]
        return (*costs, a, b), dict(epsilon=EPS, threshold=1e-9, **COST_MODE_KWARGS[mode])
    if fun is ot.solve:
        return (ot.PointCloud(x, y, epsilon=EPS), a, b), dict(
            threshold=1e-9, **({"implicit_diff": None} if mode == "unrolled" else {})
        )
    if fun is ot.barycenter:
        t = np.linspace(0.0, 1.0, 5)
        A = np.stack([np.exp(-((t - 0.3) ** 2) / 0.05), np.exp(-((t - 0.7) ** 2) / 0.05)], 1)
        A = A / A.sum(0)
        C = (t[:, None] - t[None, :]) ** 2
        args = (to_xp(A), to_xp(C), to_xp(np.array([0.4, 0.6])))
        return args, dict(epsilon=0.05, threshold=1e-9, **BARYCENTER_MODE_KWARGS[mode])
    if fun is ot.free_barycenter:
        ys = to_xp(np.stack([_problem()[1], _problem()[1] + 1.0]))
        inner = {"implicit_diff": None} if mode == "unrolled" else {}
        # threshold=0: exactly 3 updates (a fixed count does not warn)
        return (ys,), dict(
            n_points=2, epsilon=0.5, threshold=0.0, max_iterations=3, sinkhorn_kwargs=inner
        )
    raise KeyError(fun)
