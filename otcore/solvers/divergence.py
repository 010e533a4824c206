"""The Sinkhorn divergence (Ramdas et al. 2017; Genevay et al. 2018; Feydy et al. 2019).

``S(a, b) = OT(a, b) - OT(a, a)/2 - OT(b, b)/2 + ε (Σa - Σb)² / 2``

where ``OT`` is :attr:`~otcore.SinkhornOutput.reg_ot_cost` with one shared ε (that of the
``x``-``y`` problem, its default ``0.05·std(C_xy)``). The last term vanishes for balanced
problems of equal masses; it makes the unbalanced divergence of two measures with
different masses correct (Séjourné et al. 2019). The self-transport terms ``OT(a, a)``
use the symmetric averaged updates (``symmetric_sinkhorn=True``), which converge in fewer
iterations than the ``x``-``y`` problem.
"""

from __future__ import annotations

from otcore._lib import checks as _checks
from otcore._lib import keywords as _keywords
from otcore._lib import pytree as _pytree
from otcore.geometry.base import Geometry
from otcore.geometry.pointcloud import PointCloud
from otcore.problem import LinearProblem
from otcore.solvers.output import report
from otcore.solvers.sinkhorn import Sinkhorn

__all__ = ["DivergenceOutput", "sinkhorn_divergence", "sinkhorn_divergence_costs"]


@_pytree.register
class DivergenceOutput(_pytree.AttributeNode):
    """The divergence and its three solves.

    Attributes:
        divergence: the value (shape ``(...)`` of the batch).
        outputs: ``(xy, xx, yy)`` :class:`~otcore.SinkhornOutput` (``yy`` is ``None`` with
            ``static_b``).
        potentials: ``((f_xy, g_xy), (f_xx, g_xx), (f_yy, g_yy))`` (the last ``None`` with
            ``static_b``).
        converged: all three solves converged.
        n_iters: iterations of each solve.
        errors: the marginal-error traces of each solve.
    """

    def __init__(self, divergence, outputs):
        self.divergence = divergence
        self.outputs = outputs

    @property
    def potentials(self):
        return tuple(None if o is None else o.potentials for o in self.outputs)

    @property
    def converged(self):
        xy = self.outputs[0]
        flags = [o.converged for o in self.outputs if o is not None]
        out = flags[0]
        for flag in flags[1:]:
            out = out & flag
        return xy.xp.all(out)

    @property
    def n_iters(self):
        return tuple(None if o is None else o.n_iters for o in self.outputs)

    @property
    def errors(self):
        return tuple(None if o is None else o.errors for o in self.outputs)

    # -- pytree (registered with JAX by otcore.backends.jax) ---------------------------
    _tree_children = ("divergence", "outputs")

    def __repr__(self):
        return f"DivergenceOutput(n_iters={self.n_iters})"


def sinkhorn_divergence(
    x,
    y,
    a=None,
    b=None,
    *,
    cost="sqeuclidean",
    epsilon=None,
    relative_epsilon=None,
    scale_cost=1.0,
    batch_size=None,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    static_b: bool = False,
    offset_static_b=None,
    symmetric_sinkhorn: bool = True,
    return_output: bool = False,
    **solve_kwargs,
):
    """Sinkhorn divergence between point clouds ``x (..., n, d)`` and ``y (..., m, d)``.

    Args:
        x, y: points; ``a``, ``b``: weights (``None`` for uniform).
        cost, relative_epsilon, scale_cost, batch_size: as in :class:`~otcore.PointCloud`;
            ``scale_cost`` statistics come from the ``x``-``y`` cost.
        epsilon: ε of the ``x``-``y`` problem (default ``0.05·std(C_xy)``), shared by the
            three solves.
        tau_a, tau_b: marginal relaxation; the self terms use ``tau_a`` (x-x) and ``tau_b``
            (y-y) on both sides.
        static_b: skip the ``y``-``y`` term (``b``, ``y`` fixed, e.g. a fixed target); its
            value is then ``offset_static_b`` (0 if ``None``).
        symmetric_sinkhorn: averaged symmetric updates for the self terms.
        return_output: also return the :class:`DivergenceOutput`.
        **solve_kwargs: options of :class:`~otcore.Sinkhorn`, e.g. ``implicit_diff`` and
            ``use_danskin`` (``{"implicit_diff": None}`` for unrolling).

    Returns:
        The divergence (shape ``(...)``), or ``(divergence, DivergenceOutput)``.

    Example:
        >>> import numpy as np, otcore as ot
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(20, 2)), rng.normal(size=(15, 2)) + 1.0
        >>> abs(float(ot.sinkhorn_divergence(x, x, epsilon=0.1))) < 1e-5
        True
        >>> float(ot.sinkhorn_divergence(x, y, epsilon=0.1)) > 0.5
        True
    """
    _keywords.check_forwarded("sinkhorn_divergence", sinkhorn_divergence, solve_kwargs, Sinkhorn)
    geom_xy = PointCloud(
        x,
        y,
        cost=cost,
        epsilon=epsilon,
        relative_epsilon=relative_epsilon,
        scale_cost=scale_cost,
        batch_size=batch_size,
    )

    def self_geometry(z):
        geom = PointCloud(z, cost=geom_xy.cost_fn, epsilon=1.0, batch_size=batch_size)
        return geom.sharing(geom_xy.epsilon, geom_xy.inv_scale_cost)

    return _divergence(
        geom_xy,
        lambda: self_geometry(x),
        lambda: self_geometry(y),
        a,
        b,
        tau_a=tau_a,
        tau_b=tau_b,
        static_b=static_b,
        offset_static_b=offset_static_b,
        symmetric_sinkhorn=symmetric_sinkhorn,
        return_output=return_output,
        solve_kwargs=solve_kwargs,
    )


def sinkhorn_divergence_costs(
    cost_xy,
    cost_xx,
    cost_yy=None,
    a=None,
    b=None,
    *,
    epsilon=None,
    relative_epsilon=None,
    scale_cost=1.0,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    static_b: bool = False,
    offset_static_b=None,
    symmetric_sinkhorn: bool = True,
    return_output: bool = False,
    **solve_kwargs,
):
    """Sinkhorn divergence from three cost matrices (or geometries) ``C_xy``, ``C_xx``, ``C_yy``.

    Histograms on one :class:`~otcore.Grid` pass the grid three times:
    ``sinkhorn_divergence_costs(grid, grid, grid, a, b)``.

    ``C_xx`` and ``C_yy`` must be symmetric. ε and ``scale_cost`` of the ``x``-``y``
    geometry are shared by the three solves (geometries passed in keep only their cost).
    ``cost_yy`` may be ``None`` with ``static_b``. Other arguments as in
    :func:`sinkhorn_divergence`.

    Example:
        >>> import numpy as np, otcore as ot
        >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
        >>> float(ot.sinkhorn_divergence_costs(C, C, C, epsilon=0.1))
        0.0
    """
    _keywords.check_forwarded(
        "sinkhorn_divergence_costs", sinkhorn_divergence_costs, solve_kwargs, Sinkhorn
    )
    weights = a if a is not None else b
    geom_xy = _as_geometry(cost_xy, epsilon, relative_epsilon, scale_cost, weights)

    def self_geometry(c):
        geom = _as_geometry(c, 1.0, None, 1.0, weights)
        return geom.sharing(geom_xy.epsilon, geom_xy.inv_scale_cost)

    if cost_yy is None and not static_b:
        raise ValueError("cost_yy is required unless static_b=True")
    return _divergence(
        geom_xy,
        lambda: self_geometry(cost_xx),
        lambda: self_geometry(cost_yy),
        a,
        b,
        tau_a=tau_a,
        tau_b=tau_b,
        static_b=static_b,
        offset_static_b=offset_static_b,
        symmetric_sinkhorn=symmetric_sinkhorn,
        return_output=return_output,
        solve_kwargs=solve_kwargs,
    )


def _as_geometry(c, epsilon, relative_epsilon, scale_cost, weights=None):
    if isinstance(c, Geometry):
        # a Grid made from a shape takes the weights' namespace, dtype and device
        return c if weights is None else c.bind_to(weights)
    return Geometry(c, epsilon=epsilon, relative_epsilon=relative_epsilon, scale_cost=scale_cost)


def _divergence(
    geom_xy,
    make_xx,
    make_yy,
    a,
    b,
    *,
    tau_a,
    tau_b,
    static_b,
    offset_static_b,
    symmetric_sinkhorn,
    return_output,
    solve_kwargs,
):
    tau_a = _checks.check_tau("tau_a", tau_a)
    tau_b = _checks.check_tau("tau_b", tau_b)
    solver = Sinkhorn(**solve_kwargs)
    prob_xy = LinearProblem(geom_xy, a, b, tau_a=tau_a, tau_b=tau_b)
    a, b = prob_xy.a, prob_xy.b
    out_xy = solver(prob_xy)
    out_xx = solver(
        LinearProblem(make_xx(), a, a, tau_a=tau_a, tau_b=tau_a), symmetric=symmetric_sinkhorn
    )
    out_yy = None
    if not static_b:
        out_yy = solver(
            LinearProblem(make_yy(), b, b, tau_a=tau_b, tau_b=tau_b), symmetric=symmetric_sinkhorn
        )
    outputs = (out_xy, out_xx, out_yy)
    for out in outputs:
        if out is not None:
            report(out)
    xp = geom_xy.xp
    mass_gap = xp.sum(a, axis=-1) - xp.sum(b, axis=-1)
    value = out_xy.reg_ot_cost - 0.5 * out_xx.reg_ot_cost + 0.5 * geom_xy.epsilon * mass_gap**2
    if static_b:
        value = value - 0.5 * (0.0 if offset_static_b is None else offset_static_b)
    else:
        value = value - 0.5 * out_yy.reg_ot_cost
    if return_output:
        return value, DivergenceOutput(value, outputs)
    return value
