"""Free-support Wasserstein barycenters (Cuturi & Doucet 2014, Algorithm 2 with θ = 1).

The barycenter of ``k`` point clouds ``(y_s, b_s)`` with weights ``w`` is sought as
``n`` points ``X`` of uniform mass ``1/n`` minimising ``Σ_s w_s OT_ε(X, y_s)`` for the
squared Euclidean cost. Each iteration solves the ``k`` entropic problems between the
current support and the inputs with :class:`~otcore.Sinkhorn` and moves every point to
the weighted mean of its barycentric projections::

    T_s(X)_i = Σ_j P_s,ij y_s,j / Σ_j P_s,ij          X <- Σ_s w_s T_s(X)

(the minimiser in ``X`` of ``Σ_s w_s <P_s, C(X, y_s)>`` with the plans held fixed: the
fixed-point iteration of Álvarez-Esteban et al. 2016). The loop stops when no point moves
by more than ``threshold`` (``max_i,k |ΔX_ik|``) or after ``max_iterations`` updates.

Derivatives: on JAX and PyTorch the framework differentiates the outer loop (unrolled;
JAX records the iterates and replays the steps backwards) and every inner solve through
otcore's implicit differentiation (or unrolled, with ``sinkhorn_kwargs`` ``implicit_diff:
None``). NumPy has no autodiff and no manual rule exists: ``otcore.vjp`` raises.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from otcore._lib import checks as _checks
from otcore._lib import keywords as _keywords
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.backends import adapter_for
from otcore.geometry.costs import SqEuclidean, get_cost
from otcore.geometry.epsilon import DEFAULT_EPSILON_SCALE, check_epsilon_float
from otcore.geometry.pointcloud import PointCloud
from otcore.problem import LinearProblem
from otcore.solvers.loop import Stopping, fixed_point_loop
from otcore.solvers.output import report_flags
from otcore.solvers.sinkhorn import Sinkhorn

__all__ = ["FreeBarycenterOutput", "free_barycenter"]

# inner solves: tighter than Sinkhorn's own default (1e-3), which would make the
# barycentric projections, hence the barycenter, only accurate to about 1e-3
_INNER_DEFAULTS = {"threshold": 1e-6}


@_pytree.register
class FreeBarycenterOutput(_pytree.AttributeNode):
    """A free-support barycenter and how it was reached.

    Attributes:
        points: the support ``(n_points, d)``.
        weights: its masses ``(n_points,)``, uniform ``1/n_points``.
        n_iters: number of support updates performed (0-d integer array).
        converged: 0-d boolean: the last update moved no coordinate by more than
            ``threshold`` (and everything stayed finite).
        diverged: 0-d boolean: the iterates became NaN or infinite.
        errors: ``(max_iterations,)``: the largest coordinate displacement
            ``max |ΔX|`` of each update, ``-1`` for updates not performed.
        costs: 0-d: ``Σ_s w_s reg_ot_cost(points, y_s)`` at the returned points.
        linear_converged: 0-d boolean: every inner Sinkhorn solve at the returned
            points reached its threshold.
        epsilon: the ε of every inner solve (a float, or a 0-d array under tracing).
    """

    def __init__(
        self,
        points,
        weights,
        n_iters,
        converged,
        diverged,
        errors,
        costs,
        linear_converged,
        epsilon,
    ):
        self.points = points
        self.weights = weights
        self.n_iters = n_iters
        self.converged = converged
        self.diverged = diverged
        self.errors = errors
        self.costs = costs
        self.linear_converged = linear_converged
        self.epsilon = epsilon

    # -- pytree (registered with JAX by otcore.backends.jax) ---------------------------
    _tree_children = (
        "points",
        "weights",
        "n_iters",
        "converged",
        "diverged",
        "errors",
        "costs",
        "linear_converged",
        "epsilon",
    )

    def __repr__(self):
        return f"FreeBarycenterOutput(shape={tuple(self.points.shape)}, n_iters={self.n_iters})"


@_keywords.suggest_keywords("free_barycenter")
def free_barycenter(
    ys,
    bs=None,
    weights=None,
    n_points=None,
    *,
    x_init=None,
    epsilon=None,
    cost="sqeuclidean",
    threshold: float = 1e-6,
    max_iterations: int = 100,
    sinkhorn_kwargs=None,
    seed: int = 0,
    return_output: bool = False,
):
    """Free-support entropic Wasserstein barycenter of point clouds.

    Args:
        ys: the inputs: a sequence of ``k`` point clouds ``(m_s, d)`` (sizes may
            differ), or one array ``(k, m, d)``.
        bs: their weights: a sequence of ``k`` arrays ``(m_s,)`` or one array
            ``(k, m)``, each non-negative and summing to 1; ``None`` for uniform.
        weights: ``(k,)`` on the simplex (``None``: uniform ``1/k``).
        n_points: the number of barycenter points; may be omitted with ``x_init``.
        x_init: the initial support ``(n_points, d)``. Default: ``n_points`` points
            of the union of the inputs, drawn (without replacement when possible)
            with ``numpy.random.default_rng(seed)``: the same points on every backend.
            Points that coincide stay together, so ``n_points`` beyond the union's size
            gives duplicates; pass ``x_init`` then.
        epsilon: ε of every inner problem (absolute, a positive float). ``None``:
            ``0.05 · std`` of the squared distances between the initial support and
            the union of the inputs, computed once without gradient and kept fixed,
            so that the fixed point is well defined.
        cost: only ``"sqeuclidean"`` (or :class:`otcore.costs.SqEuclidean`): the
            barycentric update is the minimiser in ``X`` only for this cost.
        threshold: stop when an update moves no coordinate by more than this
            (``max |ΔX| <= threshold``); ``0`` runs ``max_iterations`` updates.
        max_iterations: at most this many support updates.
        sinkhorn_kwargs: options of the inner :class:`~otcore.Sinkhorn` solves
            (default here: ``threshold=1e-6``, the ℓ1 marginal error, instead of
            Sinkhorn's 1e-3; Sinkhorn's ``max_iterations=2000``). Each solve starts
            from the previous iteration's potentials, except when unrolled
            (``implicit_diff=None``): a warm start carries no derivative, so the inner
            solves then start from zero and the gradient is that of the map computed.
            At small ε (compared with the squared distances between neighbouring
            points) Sinkhorn needs many iterations: an ``epsilon_schedule`` helps.
        seed: seed of the default initial support.
        return_output: return a :class:`FreeBarycenterOutput` instead of the points.

    Returns:
        The support ``(n_points, d)`` (uniform weights), of the inputs' type, dtype and
        device, or a :class:`FreeBarycenterOutput`. The support alone cannot carry the
        flags: on eager backends it raises :class:`~otcore.NonFiniteIterationError` if the
        iterates became NaN or infinite, and warns :class:`~otcore.ConvergenceWarning` if
        ``max_iterations`` updates ran without reaching ``threshold`` (not with
        ``threshold=0``) or an inner solve did not converge; the
        :class:`FreeBarycenterOutput` reports them in ``diverged``, ``converged`` and
        ``linear_converged`` instead.

    The update is a fixed-point iteration: it converges linearly, slowly when the
    entropic blur is strong; the mean of the support is ``Σ_s w_s Σ_j b_sj y_sj`` at
    every iteration (up to the inner solves' marginal error).

    Works under ``jax.jit`` (the outer loop is a ``lax.while_loop``). Differentiable
    w.r.t. ``ys``, ``bs``, ``weights`` and ``x_init`` with JAX and PyTorch autodiff (the
    default ε carries no derivative).

    Example:
        >>> import numpy as np
        >>> from otcore import free_barycenter
        >>> y = np.random.default_rng(0).normal(size=(20, 2))
        >>> X = free_barycenter([y - 1.0, y + 3.0], n_points=10, epsilon=0.5, threshold=1e-3)
        >>> X.shape, np.round(X.mean(0) - y.mean(0), 4)  # the mean averages the inputs'
        ((10, 2), array([1., 1.]))
    """
    problem = _Problem(ys, bs, weights, n_points, x_init, epsilon, cost, seed)
    opts = _options(threshold, max_iterations, sinkhorn_kwargs)
    with problem.adapter.full_precision(), problem.adapter.quiet_float_errors():
        out = _run(problem, *opts)
    if return_output:
        return out
    _report(problem.adapter, out, *opts)
    return out.points


def _report(adapter, out, stopping, solver):
    """The points-only form's reports (eager backends): ``NonFiniteIterationError`` if
    the iterates diverged; ``ConvergenceWarning`` if ``max_iterations`` updates ran
    without reaching ``threshold`` (not with ``threshold=0``), or if an inner solve at
    the returned points did not reach its own threshold."""
    report_flags(
        adapter,
        out.diverged,
        out.converged if stopping.threshold > 0 else None,
        what="free barycenter",
        lse_mode=solver.lse_mode,
        threshold=stopping.threshold,
        max_iterations=stopping.max_iterations,
        stacklevel=4,
    )
    report_flags(
        adapter,
        out.diverged,
        out.linear_converged if solver.threshold > 0 else None,
        what="the free barycenter's inner Sinkhorn solves",
        lse_mode=solver.lse_mode,
        threshold=solver.threshold,
        max_iterations=solver.max_iterations,
        stacklevel=4,
    )


# -- validation ------------------------------------------------------------------------
def _options(threshold, max_iterations, sinkhorn_kwargs):
    stopping = Stopping(threshold, max_iterations=max_iterations)
    if sinkhorn_kwargs is None:
        sinkhorn_kwargs = {}
    if not isinstance(sinkhorn_kwargs, Mapping):
        raise TypeError(
            f"sinkhorn_kwargs must be a dict of Sinkhorn options, got "
            f"{type(sinkhorn_kwargs).__name__}"
        )
    _keywords.check_keywords(
        "free_barycenter",
        sinkhorn_kwargs,
        _keywords.accepted_keywords(Sinkhorn),
        in_what=" in sinkhorn_kwargs (options of ot.Sinkhorn)",
        outer=_keywords.accepted_keywords(free_barycenter),
    )
    kwargs = {**_INNER_DEFAULTS, **sinkhorn_kwargs}
    try:
        solver = Sinkhorn(**kwargs)
    except TypeError as err:
        raise TypeError(f"sinkhorn_kwargs: {err}") from None
    return stopping, solver


def _as_list(name, value):
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value), False
    if hasattr(value, "shape") and hasattr(value, "ndim"):
        return None, True
    raise TypeError(f"{name} must be a sequence of arrays or one array, got {type(value).__name__}")


class _Problem:
    """The validated inputs: ``k`` clouds (batched ``(k, m, d)`` when sizes agree)."""

    def __init__(self, ys, bs, weights, n_points, x_init, epsilon, cost, seed):
        cost_fn = get_cost(cost)
        if not isinstance(cost_fn, SqEuclidean):
            raise ValueError(
                f"free_barycenter supports only cost='sqeuclidean', got {cost!r}: the "
                "barycentric update (weighted mean of the projections) minimises the "
                "transport cost in the support only for the squared Euclidean cost"
            )
        ys_list, ys_array = _as_list("ys", ys)
        if ys_array:
            if ys.ndim != 3:
                raise ValueError(
                    "ys must be a sequence of point clouds (m_s, d) or one array (k, m, d), "
                    f"got an array of shape {tuple(ys.shape)}"
                )
            ys_list = [ys[s, ...] for s in range(ys.shape[0])]
        k = len(ys_list)
        if k == 0:
            raise ValueError("ys must hold at least one point cloud, got none")
        if bs is None:
            bs_list = [None] * k
        else:
            bs_list, bs_array = _as_list("bs", bs)
            if bs_array:
                if bs.ndim != 2:
                    raise ValueError(
                        f"bs given as one array must have shape (k, m), got {tuple(bs.shape)}"
                    )
                bs_list = [bs[s, ...] for s in range(bs.shape[0])]
            if len(bs_list) != k:
                raise ValueError(
                    f"bs must hold one weight vector per input cloud (k = {k}), got {len(bs_list)}"
                )
        names = (
            [f"ys[{s}]" for s in range(k)] + [f"bs[{s}]" for s in range(k)] + ["weights", "x_init"]
        )
        arrays = ys_list + bs_list + [weights, x_init]
        self.adapter = ad = adapter_for(*arrays, names=names)
        self.xp = xp = ad.xp
        _checks.check_same_device(names, arrays)
        _checks.check_same_dtype(names, arrays)
        for s, y in enumerate(ys_list):
            _checks.check_float_array(xp, f"ys[{s}]", y, min_ndim=2)
            if y.ndim != 2:
                raise ValueError(f"ys[{s}] must have shape (m_s, d), got {tuple(y.shape)}")
            if y.shape[0] < 1:
                raise ValueError(f"ys[{s}] must hold at least one point, got shape {y.shape}")
        d = ys_list[0].shape[1]
        for s, y in enumerate(ys_list):
            if y.shape[1] != d:
                raise ValueError(
                    f"all input clouds must have the same dimension d: ys[0] has d = {d}, "
                    f"ys[{s}] has d = {y.shape[1]}"
                )
            _checks.check_finite(ad, f"ys[{s}]", y)
        ref = ys_list[0]
        dt, dev = ref.dtype, _xp.device_of(ref)
        for s, (y, b) in enumerate(zip(ys_list, bs_list)):
            m = y.shape[0]
            if b is None:
                bs_list[s] = xp.full((m,), 1.0 / m, dtype=dt, device=dev)
                continue
            _checks.check_float_array(xp, f"bs[{s}]", b, min_ndim=1)
            if b.ndim != 1 or b.shape[0] != m:
                raise ValueError(
                    f"bs[{s}] must have shape ({m},), one weight per point of ys[{s}], got "
                    f"{tuple(b.shape)}"
                )
            _checks.check_simplex(ad, f"bs[{s}]", b, 1e-5)
        if weights is None:
            weights = xp.full((k,), 1.0 / k, dtype=dt, device=dev)
        else:
            _checks.check_float_array(xp, "weights", weights, min_ndim=1)
            if tuple(weights.shape) != (k,):
                raise ValueError(
                    f"weights must have shape (k,) = ({k},), one per input cloud, got "
                    f"{tuple(weights.shape)}"
                )
            _checks.check_simplex(ad, "weights", weights, 1e-5)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        if n_points is not None:
            n_points = _checks.check_positive_int("n_points", n_points)
        if x_init is None:
            if n_points is None:
                raise ValueError(
                    "n_points (the size of the barycenter's support) is required when "
                    "x_init is not given"
                )
            x_init = self._draw(ys_list, n_points, int(seed))
        else:
            _checks.check_float_array(xp, "x_init", x_init, min_ndim=2)
            n = x_init.shape[0] if n_points is None else n_points
            if x_init.ndim != 2 or tuple(x_init.shape) != (n, d):
                raise ValueError(
                    f"x_init must have shape (n_points, d) = ({n}, {d}), got {tuple(x_init.shape)}"
                )
            _checks.check_finite(ad, "x_init", x_init)
        self.k, self.d = k, d
        self.n = x_init.shape[0]
        self.x_init = x_init
        self.weights = weights
        self.batched = len({y.shape[0] for y in ys_list}) == 1
        if self.batched:
            self.Y = ys if ys_array else xp.stack(ys_list, axis=0)
            self.B = bs if (bs is not None and not isinstance(bs, Sequence)) else None
            if self.B is None:
                self.B = xp.stack(bs_list, axis=0)
        self.ys, self.bs = ys_list, bs_list
        self.a = xp.full((self.n,), 1.0 / self.n, dtype=dt, device=dev)
        self.epsilon = self._epsilon(epsilon)

    def _draw(self, ys_list, n_points, seed):
        xp = self.xp
        sizes = [y.shape[0] for y in ys_list]
        total = sum(sizes)
        rng = np.random.default_rng(seed)
        idx = rng.choice(total, size=n_points, replace=n_points > total)
        union = xp.concat(ys_list, axis=0) if len(ys_list) > 1 else ys_list[0]
        dev = _xp.device_of(ys_list[0])
        return xp.take(union, xp.asarray([int(i) for i in idx], device=dev), axis=0)

    def _epsilon(self, epsilon):
        if epsilon is not None:
            if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
                raise TypeError(
                    f"epsilon must be None or a positive float, got {type(epsilon).__name__}"
                )
            return check_epsilon_float(epsilon)
        xp, ad = self.xp, self.adapter
        sg = ad.stop_gradient
        x0 = sg(self.x_init)
        costs = [SqEuclidean().pairwise(x0, sg(y)) for y in self.ys]
        count = sum(c.shape[0] * c.shape[1] for c in costs)
        mean = sum(xp.sum(c) for c in costs) / count
        var = sum(xp.sum((c - mean) ** 2) for c in costs) / count
        eps = DEFAULT_EPSILON_SCALE * xp.sqrt(var)
        if ad.is_concrete(eps):
            eps = float(eps)
            if not eps > 0.0:
                raise ValueError(
                    "the default epsilon (0.05 * std of the squared distances between the "
                    "initial support and the inputs) is 0: all points coincide; pass epsilon"
                )
        return eps

    def leaves(self):
        return (*self.ys, *self.bs, self.weights, self.x_init)


# -- the iteration ---------------------------------------------------------------------
class _Step:
    """The ``k`` inner solves at a support ``X`` and the barycentric update."""

    def __init__(self, problem: _Problem, solver: Sinkhorn):
        self.p = problem
        self.xp = problem.xp
        self.solver = solver
        self.warm = solver.implicit_diff is not None

    def zero_potentials(self):
        """Zero potentials shaped like the solves' (the default start of a solve)."""
        p, xp = self.p, self.xp
        dt, dev = p.x_init.dtype, _xp.device_of(p.x_init)
        if p.batched:
            m = p.Y.shape[1]
            return (
                xp.zeros((p.k, p.n), dtype=dt, device=dev),
                xp.zeros((p.k, m), dtype=dt, device=dev),
            )
        return tuple(
            (xp.zeros((p.n,), dtype=dt, device=dev), xp.zeros((y.shape[0],), dtype=dt, device=dev))
            for y in p.ys
        )

    def __call__(self, X, inits):
        """``(Σ_s w_s T_s(X), Σ_s w_s reg_ot_cost_s, potentials, all converged)``."""
        p, xp = self.p, self.xp
        if p.batched:
            init = inits if self.warm else None
            out = self.solver(LinearProblem(PointCloud(X, p.Y, epsilon=p.epsilon), p.a, p.B), init)
            plan = out.matrix  # (k, n, m)
            proj = (plan @ p.Y) / xp.sum(plan, axis=-1)[..., None]
            update = xp.sum(p.weights[:, None, None] * proj, axis=0)
            cost = xp.sum(p.weights * out.reg_ot_cost)
            return update, cost, (out.f, out.g), xp.all(out.converged)
        update, cost, pots, conv = 0.0, 0.0, [], None
        for s in range(p.k):
            init = inits[s] if self.warm else None
            geom = PointCloud(X, p.ys[s], epsilon=p.epsilon)
            out = self.solver(LinearProblem(geom, p.a, p.bs[s]), init)
            plan = out.matrix
            proj = (plan @ p.ys[s]) / xp.sum(plan, axis=-1)[:, None]
            update = update + p.weights[s] * proj
            cost = cost + p.weights[s] * out.reg_ot_cost
            pots.append((out.f, out.g))
            conv = out.converged if conv is None else conv & out.converged
        return update, cost, tuple(pots), conv


def _run(p: _Problem, stopping, solver):
    xp, ad = p.xp, p.adapter
    solve = _Step(p, solver)
    x0 = p.x_init
    dt, dev = x0.dtype, _xp.device_of(x0)

    def step(i, v):
        """Move ``x`` to the update ``t`` computed at the previous support (in the
        prologue, ``i < 0``, stay at ``x0``) and solve there: the next update ``t``, the
        cost, the potentials (warm starts) and whether the solves converged."""
        x_new = xp.where(i < 0, v["x"], v["t"])
        finite = xp.all(xp.isfinite(x_new))
        # a non-finite support stops the loop; the solve below must not see it
        x_safe = xp.where(finite, x_new, xp.zeros_like(x_new))
        update, cost, pots, lin = solve(x_safe, v["pots"])
        return {"x": x_new, "t": update, "cost": cost, "pots": pots, "lin": lin}

    variables = {
        "x": x0,
        "t": x0,
        "cost": xp.asarray(0.0, dtype=dt, device=dev),
        "pots": solve.zero_potentials(),
        "lin": xp.asarray(False, device=dev),
    }
    # the prologue only solves at x0: one traced solve in the body, no update
    state = fixed_point_loop(
        ad,
        step,
        lambda new, old: xp.max(xp.abs(new["x"] - old["x"])),
        variables,
        stopping,
        watch=("x", "t"),
        unrolled=ad.is_differentiating(*p.leaves()),
        prologue=True,
    )
    return FreeBarycenterOutput(
        points=state["x"],
        weights=p.a,
        n_iters=state["k"],
        converged=state["converged"],
        diverged=state["diverged"],
        errors=state["errors"],
        costs=state["cost"],
        linear_converged=state["lin"],
        epsilon=p.epsilon,
    )
