"""Convenience entry points: :func:`solve` and :func:`reg_ot_cost`."""

from __future__ import annotations

from otcore._lib import keywords as _keywords
from otcore.geometry.base import Geometry
from otcore.geometry.pointcloud import PointCloud
from otcore.problem import LinearProblem
from otcore.solvers.output import SinkhornOutput, report
from otcore.solvers.sinkhorn import Sinkhorn

__all__ = ["reg_ot_cost", "solve"]

_GEOM_KEYS = ("epsilon", "relative_epsilon", "scale_cost")


def solve(
    geom,
    a=None,
    b=None,
    *,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    epsilon=None,
    relative_epsilon=None,
    scale_cost=1.0,
    init=None,
    **sinkhorn_kwargs,
) -> SinkhornOutput:
    """Solve entropic OT between ``a`` and ``b`` on a geometry or a cost matrix.

    Args:
        geom: a :class:`~otcore.Geometry` / :class:`~otcore.PointCloud`, or a cost matrix
            ``(..., n, m)`` (then ``epsilon``, ``relative_epsilon``, ``scale_cost`` build
            the geometry; with a geometry they must be left unset).
        a, b: weights ``(..., n)`` and ``(..., m)``; ``None`` for uniform.
        tau_a, tau_b: marginal relaxation in ``(0, 1]`` (1 = balanced).
        init: optional warm start ``(f, g)``.
        **sinkhorn_kwargs: options of :class:`~otcore.Sinkhorn`. An unknown keyword
            raises ``TypeError`` naming this function and the closest valid keyword
            (``reg=``, ``eps=``, ``blur=`` suggest ``epsilon``).

    Returns:
        :class:`~otcore.SinkhornOutput`.

    Example:
        >>> import numpy as np, otcore as ot
        >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
        >>> out = ot.solve(C, epsilon=0.1, threshold=1e-9)
        >>> out.matrix.round(4)
        array([[0.5, 0. ],
               [0. , 0.5]])
    """
    _keywords.check_forwarded("solve", solve, sinkhorn_kwargs, Sinkhorn)
    if not isinstance(geom, Geometry):
        geom = Geometry(
            geom, epsilon=epsilon, relative_epsilon=relative_epsilon, scale_cost=scale_cost
        )
    elif epsilon is not None or relative_epsilon is not None or scale_cost != 1.0:
        raise ValueError(
            "epsilon, relative_epsilon and scale_cost belong to the geometry: set them when "
            "building it, not in solve()"
        )
    prob = LinearProblem(geom, a, b, tau_a=tau_a, tau_b=tau_b)
    return Sinkhorn(**sinkhorn_kwargs)(prob, init=init)


def reg_ot_cost(
    x,
    y=None,
    a=None,
    b=None,
    *,
    cost="sqeuclidean",
    epsilon=None,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon=None,
    scale_cost=1.0,
    batch_size=None,
    **sinkhorn_kwargs,
):
    """Entropic OT cost between point clouds ``x (..., n, d)`` and ``y (..., m, d)``.

    Returns ``SinkhornOutput.reg_ot_cost``: an array of shape ``(...)`` (a scalar for one
    problem) of the inputs' type, dtype and device. Differentiable with the user's own
    framework (``jax.grad``, ``torch.autograd``); ``jax.jit`` and ``jax.vmap`` work.

    Other keywords are options of :class:`~otcore.Sinkhorn`; an unknown one raises
    ``TypeError`` naming ``reg_ot_cost`` and the closest valid keyword. Empty clouds,
    float16/bfloat16 arrays and PyTorch ``meta`` tensors are refused up front (see
    ``docs/backends.md``).

    On eager backends a solve whose iterates became non-finite raises
    :class:`~otcore.NonFiniteIterationError`, and one that hit ``max_iterations`` warns
    with :class:`~otcore.ConvergenceWarning`. (Under ``jax.jit`` nothing can be raised:
    use :class:`~otcore.Sinkhorn` to read ``converged``/``diverged``.)

    Example:
        >>> import numpy as np, otcore as ot
        >>> x = np.random.default_rng(0).normal(size=(16, 2))
        >>> float(ot.reg_ot_cost(x, x + 1.0, epsilon=0.5)) > 1.0
        True
    """
    _keywords.check_forwarded("reg_ot_cost", reg_ot_cost, sinkhorn_kwargs, Sinkhorn)
    out = _point_cloud_output(
        x,
        y,
        a,
        b,
        cost=cost,
        epsilon=epsilon,
        tau_a=tau_a,
        tau_b=tau_b,
        relative_epsilon=relative_epsilon,
        scale_cost=scale_cost,
        batch_size=batch_size,
        **sinkhorn_kwargs,
    )
    return out.reg_ot_cost


def _point_cloud_output(
    x,
    y,
    a,
    b,
    *,
    cost,
    epsilon,
    tau_a,
    tau_b,
    relative_epsilon,
    scale_cost,
    batch_size,
    **sinkhorn_kwargs,
):
    geom = PointCloud(
        x,
        y,
        cost=cost,
        epsilon=epsilon,
        relative_epsilon=relative_epsilon,
        scale_cost=scale_cost,
        batch_size=batch_size,
    )
    out = Sinkhorn(**sinkhorn_kwargs)(LinearProblem(geom, a, b, tau_a=tau_a, tau_b=tau_b))
    report(out)
    return out


def reg_ot_cost_matrix(
    cost_matrix,
    a=None,
    b=None,
    *,
    epsilon=None,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon=None,
    scale_cost=1.0,
    **sinkhorn_kwargs,
):
    """Entropic OT cost on a cost matrix ``(..., n, m)``: the scalar form of :func:`solve`.

    Like :func:`reg_ot_cost` (same reports, same differentiation) with the cost matrix as
    the first argument, so that ``ot.grad(ot.reg_ot_cost_matrix)`` differentiates w.r.t.
    ``C`` on every backend (the envelope gradient is the plan ``P``).

    Example:
        >>> import numpy as np, otcore as ot
        >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
        >>> ot.grad(ot.reg_ot_cost_matrix)(C, epsilon=0.1, threshold=1e-9).round(4)
        array([[0.5, 0. ],
               [0. , 0.5]])
    """
    _keywords.check_forwarded("reg_ot_cost_matrix", reg_ot_cost_matrix, sinkhorn_kwargs, Sinkhorn)
    out = _cost_matrix_output(
        cost_matrix,
        a,
        b,
        epsilon=epsilon,
        tau_a=tau_a,
        tau_b=tau_b,
        relative_epsilon=relative_epsilon,
        scale_cost=scale_cost,
        **sinkhorn_kwargs,
    )
    return out.reg_ot_cost


def _cost_matrix_output(
    cost_matrix, a, b, *, epsilon, tau_a, tau_b, relative_epsilon, scale_cost, **sinkhorn_kwargs
):
    geom = Geometry(
        cost_matrix, epsilon=epsilon, relative_epsilon=relative_epsilon, scale_cost=scale_cost
    )
    out = Sinkhorn(**sinkhorn_kwargs)(LinearProblem(geom, a, b, tau_a=tau_a, tau_b=tau_b))
    report(out)
    return out
