"""Fixed-support entropic Wasserstein barycenters by iterative Bregman projections.

Given ``k`` histograms ``A[:, s]`` on the rows of a cost ``C (n, m)`` and weights ``w``
on the simplex, the barycenter ``b`` on the columns minimises ``Σ_s w_s OT_ε(a_s, b)``
(Benamou et al. 2015). Each iteration, in the log domain (potentials divided by ε,
``Ĉ = C/ε``, one potential pair ``(φ_s, γ_s)`` per input)::

    φ_s  = log a_s − LSE_j(γ_s − Ĉ)              rows match a_s
    S_s  = LSE_i(φ_s − Ĉ)                        log Kᵀu_s
    log b = Σ_s w_s S_s (+ η)                    weighted geometric mean
    γ_s  = log b − S_s                           columns match b

and kernel mode runs the same on ``u = e^φ``, ``v = e^γ``. The debiased barycenter
(Janati et al. 2020) multiplies ``b`` by ``e^η``, where ``η`` is the symmetric Sinkhorn
potential of ``b`` with itself on the square cost, updated with the averaged step
``η <- (η + log b − LSE_i(η − Ĉ)) / 2`` in both modes (log and kernel agree).

Derivatives: JAX and PyTorch differentiate the iterations (unrolled, default) or the
fixed point (``implicit_diff``); NumPy/CuPy use the manual reverse recursion of one step
(:mod:`otcore._barycenter_rules`), replayed over the stored iterates, or the fixed-point
adjoint.
"""

from __future__ import annotations

from otcore._lib import checks as _checks
from otcore._lib import keywords as _keywords
from otcore._lib import pytree as _pytree
from otcore._lib import xp as _xp
from otcore.geometry.base import Geometry
from otcore.implicit.system import ImplicitDiff
from otcore.solvers.loop import Stopping, fixed_point_loop
from otcore.solvers.output import report_flags

__all__ = ["BarycenterOutput", "barycenter"]


@_pytree.register
class BarycenterOutput(_pytree.AttributeNode):
    """A barycenter and its potentials.

    Shapes, with ``...`` the batch axes of the weights (``()`` for one weight vector),
    ``k`` inputs on ``n`` points and the barycenter on ``m`` points:

    Attributes:
        histogram: the barycenter ``(..., m)`` (not renormalised: its mass is 1 up to
            the final marginal error).
        f: row potentials ``(..., k, n)`` in cost units (``-inf`` where ``A`` is 0).
        g: column potentials ``(..., k, m)`` in cost units; plan ``s`` is
            ``exp((f_s,i + g_s,j − C_ij)/ε)``.
        debiasing: ``ε η`` of the debiased barycenter ``(..., m)``, else ``None``.
        errors: the stopping error (see ``threshold`` in :func:`barycenter`) after each
            block of ``inner_iterations``, ``(..., n_blocks)``, ``-1`` for blocks not run.
        n_iters: number of iterations run.
        converged: ``(...)`` boolean: final error below ``threshold``.
        diverged: scalar boolean: the iterates became non-finite, or vanished where they
            must be positive (kernel-mode underflow).
        epsilon: the ε used.
    """

    def __init__(self, histogram, f, g, debiasing, errors, n_iters, converged, diverged, epsilon):
        self.histogram = histogram
        self.f, self.g = f, g
        self.debiasing = debiasing
        self.errors = errors
        self.n_iters = n_iters
        self.converged = converged
        self.diverged = diverged
        self.epsilon = epsilon

    # -- pytree (registered with JAX by otcore.backends.jax) ---------------------------
    _tree_children = (
        "histogram",
        "f",
        "g",
        "debiasing",
        "errors",
        "n_iters",
        "converged",
        "diverged",
        "epsilon",
    )

    def __repr__(self):
        return f"BarycenterOutput(shape={tuple(self.histogram.shape)}, n_iters={self.n_iters})"


@_keywords.suggest_keywords("barycenter")
def barycenter(
    A,
    C_or_geometry,
    weights=None,
    *,
    epsilon=None,
    lse_mode: bool = True,
    debiased: bool = False,
    threshold: float = 1e-4,
    inner_iterations: int = 10,
    min_iterations: int = 0,
    max_iterations: int = 2000,
    implicit_diff: ImplicitDiff | None = None,
    return_output: bool = False,
):
    """Entropic Wasserstein barycenter of histograms on a common support.

    Args:
        A: input histograms ``(n, k)``: column ``s`` is the ``s``-th histogram on the ``n``
            rows of the cost. Non-negative; all columns of equal mass (usually 1).
        C_or_geometry: a cost matrix ``(n, m)`` or a :class:`~otcore.Geometry` (e.g.
            :class:`~otcore.PointCloud`, :class:`~otcore.Grid`) without batch axes. The
            barycenter lives on its ``m`` columns.
        weights: ``(k,)`` on the simplex, or ``(..., k)`` for a batch of barycenters of
            the same inputs; ``None`` for uniform ``1/k``.
        epsilon: ε when a cost matrix is given (``None``: ``0.05·std(C)``); a geometry
            carries its own.
        lse_mode: log-domain updates (stable for any ε) or kernel (scaling) updates.
        debiased: the debiased barycenter of Janati et al. (2020) (square, symmetric
            cost: input and barycenter supports are the same).
        threshold: stop when the error, in mass units (ℓ1), is at most this: the larger
            of (i) the marginal constraint violation, ``max_s ‖P_s 1 − a_s‖₁`` over the
            ``k`` plans (their columns equal ``b`` after each iteration) plus, debiased,
            the self-transport's ``‖e^η ⊙ K e^η − b‖₁``, and (ii) the estimated distance
            ``‖b − b*‖₁`` of the histogram to its limit: the last iteration's change of
            ``b`` extrapolated geometrically with the contraction rate observed over the
            last blocks (``d r / (1 − r)``; the factor is capped at ``max_iterations``
            while the rate is unknown or ``r ≥ 1``). So a converged ``b`` is within about
            ``threshold`` of the limit as long as the convergence is geometric; a
            debiased barycenter at ε much larger than the squared spacing of the support
            converges sublinearly and then runs to ``max_iterations``. ``0`` runs a fixed
            number of iterations (``min_iterations = max_iterations``).
        inner_iterations: the error is checked every this many iterations (at least two
            blocks run before the rate is known).
        min_iterations, max_iterations: bounds on the iteration count (``converged`` is
            False if ``max_iterations`` is reached).
        implicit_diff: ``None`` (default): derivatives through the iterations (unrolled;
            the NumPy rule replays the stored iterates backwards). An
            :class:`~otcore.ImplicitDiff`: derivatives of the fixed point, by iterating
            the adjoint of one step at the solution until it converges (to
            ``solver_kwargs`` ``rtol``; no history is stored).
        return_output: return a :class:`BarycenterOutput` instead of the histogram.

    Returns:
        The barycenter histogram ``(..., m)``, or a :class:`BarycenterOutput` (which
        reports failures in ``diverged`` and ``converged``).

    Raises:
        NonFiniteIterationError: histogram form, eager backends: the iterates became NaN
            or infinite, or vanished where they must be positive (kernel mode underflows
            at small ε: use ``lse_mode=True``). Under ``jax.jit`` and other traces,
            ``return_output=True`` gives the flags.

    Warns:
        ConvergenceWarning: histogram form, eager backends: ``max_iterations`` was reached
            before ``threshold`` (not with ``threshold=0``).

    Example:
        >>> import numpy as np, otcore as ot
        >>> t = np.linspace(0, 1, 30)
        >>> A = np.stack([np.exp(-(t - 0.2) ** 2 / 0.005), np.exp(-(t - 0.8) ** 2 / 0.005)], 1)
        >>> A = A / A.sum(0)
        >>> C = (t[:, None] - t[None, :]) ** 2
        >>> b = ot.barycenter(A, C, epsilon=1e-3)
        >>> round(float(t @ b), 3)  # the mean moves half way
        0.5
    """
    solver = _Options(
        lse_mode, debiased, threshold, inner_iterations, min_iterations, max_iterations
    )
    if implicit_diff is not None and not isinstance(implicit_diff, ImplicitDiff):
        raise TypeError(
            f"implicit_diff must be None or an ImplicitDiff, got {type(implicit_diff).__name__}"
        )
    geom, A, weights = _prepare(A, C_or_geometry, weights, epsilon, debiased)
    adapter = geom.adapter
    with adapter.full_precision(), adapter.quiet_float_errors():
        out = _solve(geom, A, weights, solver, implicit_diff)
    if return_output:
        return out
    report(adapter, out, solver)
    return out.histogram


def report(adapter, out, opts, stacklevel=4):
    """The histogram-only form's reports (eager backends): ``NonFiniteIterationError``
    if the iterates diverged, ``ConvergenceWarning`` if ``max_iterations`` was reached
    first (not with ``threshold=0``, which asks for a fixed iteration count)."""
    report_flags(
        adapter,
        out.diverged,
        out.converged if opts.threshold > 0 else None,
        what="barycenter",
        lse_mode=opts.lse_mode,
        threshold=opts.threshold,
        max_iterations=opts.max_iterations,
        stacklevel=stacklevel,
    )


# -- options and validation ------------------------------------------------------------
class _Options(Stopping):
    def __init__(self, lse_mode, debiased, threshold, inner, min_iter, max_iter):
        super().__init__(threshold, inner, min_iter, max_iter)
        self.lse_mode = bool(lse_mode)
        self.debiased = bool(debiased)


def _prepare(A, C_or_geometry, weights, epsilon, debiased):
    if isinstance(C_or_geometry, Geometry):
        if epsilon is not None:
            raise ValueError(
                "epsilon is given by the geometry: pass it to the geometry, not to barycenter"
            )
        geom = C_or_geometry
    else:
        _checks.check_float_array(
            _xp.namespace(C_or_geometry, names=["C_or_geometry"]),
            "C_or_geometry",
            C_or_geometry,
            min_ndim=2,
        )
        geom = Geometry(C_or_geometry, epsilon=epsilon)
    geom = geom.bind_to(A)
    if geom.batch_shape != ():
        raise ValueError(
            f"the barycenter's geometry must have no batch axes, got batch shape {geom.batch_shape}"
        )
    ref = geom.data_arrays()[0]
    names = ["geometry arrays", "A", "weights"]
    _xp.namespace(ref, A, weights, names=names)
    xp, ad = geom.xp, geom.adapter
    _checks.check_float_array(xp, "A", A, min_ndim=2)
    n, m = geom.shape
    if A.ndim != 2 or A.shape[0] != n:
        raise ValueError(
            f"A must have shape (n, k) = ({n}, k): one histogram per column on the {n} rows of "
            f"the cost, got shape {tuple(A.shape)}"
        )
    k = A.shape[1]
    _checks.check_same_device(names, [ref, A, weights])
    _checks.check_same_dtype(names, [ref, A, weights])
    _checks.check_finite(ad, "A", A)
    if _checks.fails(ad, A >= 0):
        raise ValueError("A must be non-negative, got a negative entry")
    mass = xp.sum(A, axis=0)
    if _checks.fails(ad, mass > 0):
        raise ValueError("every column of A must have positive mass, got an all-zero column")
    tol = 1e-5 if A.dtype == xp.float64 else 1e-4  # float32 sums are off by ~1e-5
    if _checks.fails(ad, xp.abs(mass - mass[0]) <= tol * mass[0]):
        raise ValueError(
            "the columns of A must all have the same mass (balanced barycenter), got column "
            f"sums that differ by more than {tol} relative; normalise them"
        )
    if weights is None:
        weights = xp.full((k,), 1.0 / k, dtype=A.dtype, device=_xp.device_of(A))
    else:
        _checks.check_float_array(xp, "weights", weights, min_ndim=1)
        if weights.shape[-1] != k:
            raise ValueError(
                f"weights must have length k = {k} (the number of columns of A) on its last "
                f"axis, got shape {tuple(weights.shape)}"
            )
        _checks.check_simplex(ad, "weights", weights, tol)
    if debiased:
        if n != m:
            raise ValueError(
                f"debiased=True needs a square cost (inputs and barycenter on one support), "
                f"got shape {geom.shape}"
            )
    return geom, A, weights


# -- the iteration ---------------------------------------------------------------------
_VARIABLES = ("x", "y", "z", "lb")  # (φ, γ, η, log b), or kernel mode's (u, v, c, log b)
_RATE_WINDOW = 5  # the contraction rate is the largest of the last this many blocks'
_RATES = tuple(f"r{j}" for j in range(1, _RATE_WINDOW))


class _IBP:
    """Iterative Bregman projections on constant or differentiable inputs.

    ``A`` is ``(n, k)``; internally histograms are rows ``a (k, n)``; weights ``(..., k)``.
    The log-domain state is ``γ (..., k, m)`` and ``η (..., m)`` (dimensionless);
    kernel mode keeps ``v = e^γ``, ``c = e^η``.
    """

    def __init__(self, geom, A, weights, opts):
        self.xp = geom.xp
        self.ad = geom.adapter
        self.geom = geom
        self.opts = opts
        self.eps = geom.epsilon
        self.ops = geom.operators(self.eps, kernel=not opts.lse_mode)
        self.a = self.xp.permute_dims(A, (1, 0))
        self.log_a = _xp.safe_log(self.xp, self.a)
        self.w = weights
        self.batch = tuple(weights.shape[:-1])
        self.k, self.n = self.a.shape
        self.m = geom.shape[1]

    # -- log domain ----------------------------------------------------------------
    def log_step(self, gam, eta):
        """One iteration: ``(γ, η) -> (φ, γ', η', log b)``."""
        lse = self.ops.apply_lse
        phi = self.log_a - lse(gam, axis=1)
        s2 = lse(phi, axis=0)
        lb = self.xp.sum(self.w[..., :, None] * s2, axis=-2)
        if self.opts.debiased:
            lb = lb + eta
            eta = 0.5 * (eta + lb - lse(eta, axis=0))
        return phi, lb[..., None, :] - s2, eta, lb

    def kernel_step(self, v, c):
        """One iteration on scalings: ``(v, c) -> (u, v', c', log b)``."""
        xp, kern = self.xp, self.ops.apply_kernel
        u = self.a / kern(v, axis=1)
        xi = kern(u, axis=0)
        lb = xp.sum(self.w[..., :, None] * xp.log(xi), axis=-2)
        if self.opts.debiased:
            lb = lb + xp.log(c)
            c = xp.sqrt(c * xp.exp(lb) / kern(c, axis=0))
        return u, xp.exp(lb)[..., None, :] / xi, c, lb

    def violation(self, x, y, z, lb):
        """The marginal constraint violation, in mass units, ``(...)``: the ℓ1 row-marginal
        error ``‖P_s 1 − a_s‖₁`` of each plan, maxed over the inputs (the columns of
        every plan are ``b`` after each step); debiased, plus the ℓ1 error
        ``‖e^η ⊙ K e^η − b‖₁`` of the self-transport of ``b``. NaN where an iterate that
        must be positive (``u_s`` where ``a_s > 0``, ``v_s``, ``e^η``, ``b``) is 0 or not
        finite: the loop then stops as ``diverged``."""
        xp = self.xp
        if self.opts.lse_mode:
            row = xp.exp(x + self.ops.apply_lse(y, axis=1))
            ok_x = xp.isfinite(x) | ~(self.a > 0)
            ok_yz = xp.all(xp.isfinite(y)) & xp.all(xp.isfinite(z))
        else:
            row = x * self.ops.apply_kernel(y, axis=1)
            ok_x = (xp.isfinite(x) & (x > 0)) | ~(self.a > 0)
            ok_yz = xp.all(xp.isfinite(y) & (y > 0)) & xp.all(xp.isfinite(z) & (z > 0))
        err = xp.max(xp.sum(xp.abs(row - self.a), axis=-1), axis=-1)
        if self.opts.debiased:
            if self.opts.lse_mode:
                self_marginal = xp.exp(z + self.ops.apply_lse(z, axis=0))
            else:
                self_marginal = z * self.ops.apply_kernel(z, axis=0)
            err = err + xp.sum(xp.abs(self_marginal - xp.exp(lb)), axis=-1)
        ok = xp.all(ok_x) & ok_yz & xp.all(xp.isfinite(lb))
        return xp.where(ok, err, xp.full_like(err, float("nan")))

    def drift(self, t, old_lb, lb, tracker):
        """Track the change of ``b`` per iteration (on constant values): ``d`` the ℓ1
        change of the latest step, ``d_ref`` the change of the step before the current
        block; at a block's last step, the block's per-iteration contraction rate
        ``(d / d_ref)^(1/inner)``, and ``rate``, the largest of the last ``_RATE_WINDOW`` blocks'
        rates (one block's rate can miss a slow mode still hidden under faster ones;
        ``-inf`` until a rate is known)."""
        xp, sg = self.xp, self.ad.stop_gradient
        inner = self.opts.inner_iterations
        d = xp.sum(xp.abs(xp.exp(sg(lb)) - xp.exp(sg(old_lb))), axis=-1)
        i = t % inner
        d_ref = xp.where(i == 0, tracker["d"], tracker["d_ref"])
        pos = (d_ref > 0) & xp.isfinite(d_ref)
        ratio = (d / xp.where(pos, d_ref, xp.ones_like(d_ref))) ** (1.0 / inner)
        grows = xp.where(d > 0, xp.full_like(d, xp.inf), xp.zeros_like(d))  # from rest
        ratio = xp.where(pos, ratio, xp.where(d_ref == 0, grows, xp.full_like(d, -xp.inf)))
        last = i == inner - 1
        rates = [ratio] + [tracker[key] for key in _RATES]
        rate = rates[0]
        for r in rates[1:]:
            rate = xp.maximum(rate, r)
        new = {"d": d, "d_ref": d_ref, "rate": xp.where(last, rate, tracker["rate"])}
        for key, r in zip(_RATES, rates[:-1]):  # shift: the newest rate first
            new[key] = xp.where(last, r, tracker[key])
        return new

    def distance_estimate(self, d, rate, lb):
        """Estimated ℓ1 distance of ``b`` to the limit, ``(...)``: the last change ``d``
        extrapolated geometrically, ``d r / (1 − r)``, with the factor capped at
        ``max_iterations`` (also while the rate is not known, or ``r ≥ 1``); 0 once ``d`` is
        at the rounding level of ``b``."""
        xp = self.xp
        cap = float(self.opts.max_iterations)
        known = (rate >= 0) & (rate < 1)
        factor = xp.where(known, rate / xp.where(known, 1 - rate, xp.ones_like(rate)), cap)
        factor = xp.minimum(factor, xp.full_like(factor, cap))
        noise = 64 * xp.finfo(lb.dtype).eps * xp.sum(xp.exp(self.ad.stop_gradient(lb)), axis=-1)
        return xp.where(d <= noise, xp.zeros_like(d), d * factor)

    def error(self, new):
        """The stopping error ``(...)``: the larger of the marginal violation
        (:meth:`violation`) and the estimated distance of ``b`` to the limit
        (:meth:`distance_estimate`), both ℓ1 in mass units."""
        viol = self.violation(new["x"], new["y"], new["z"], new["lb"])
        return self.xp.maximum(viol, self.distance_estimate(new["d"], new["rate"], new["lb"]))

    def initial(self):
        xp = self.xp
        dt, dev = self.a.dtype, _xp.device_of(self.a)
        fill = 0.0 if self.opts.lse_mode else 1.0
        y = xp.full(self.batch + (self.k, self.m), fill, dtype=dt, device=dev)
        z = xp.full(self.batch + (self.m,), fill, dtype=dt, device=dev)
        x = xp.full(self.batch + (self.k, self.n), fill, dtype=dt, device=dev)
        lb = xp.zeros(self.batch + (self.m,), dtype=dt, device=dev)
        return x, y, z, lb

    def step(self, x, y, z, lb):
        if self.opts.lse_mode:
            return self.log_step(y, z)
        return self.kernel_step(y, z)

    def run(self, unrolled: bool, record=None):
        """The loop (:func:`~otcore.solvers.loop.fixed_point_loop` on ``x, y, z, lb``);
        ``record`` (a list, eager backends only) receives each step's input state
        ``(γ, η)`` in log units."""
        x0, y0, z0, lb0 = self.initial()
        xp = self.xp
        dt, dev = lb0.dtype, _xp.device_of(lb0)
        inf = xp.full(self.batch, xp.inf, dtype=dt, device=dev)
        unknown = xp.full(self.batch, -xp.inf, dtype=dt, device=dev)
        tracker = {"d": inf, "d_ref": inf, "rate": unknown, **{key: unknown for key in _RATES}}

        def step(t, v):
            new = dict(zip(_VARIABLES, self.step(v["x"], v["y"], v["z"], v["lb"])))
            new.update(self.drift(t, v["lb"], new["lb"], v))
            return new

        history = None if record is None else []
        state = fixed_point_loop(
            self.ad,
            step,
            lambda new, old: self.error(new),
            {**dict(zip(_VARIABLES, (x0, y0, z0, lb0))), **tracker},
            self.opts,
            batch_shape=self.batch,
            watch=("lb",),
            unrolled=unrolled,
            record=history,
        )
        if record is not None:
            record.extend(self.to_log(v["y"], v["z"]) for v in history)
        return state

    def to_log(self, y, z):
        """``(γ, η)`` from the loop variables."""
        if self.opts.lse_mode:
            return y, z
        return _xp.safe_log(self.xp, y), _xp.safe_log(self.xp, z)

    def output(self, state):
        xp = self.xp
        e = self.eps  # a float or a 0-d array (the geometry has no batch axes)
        if self.opts.lse_mode:
            phi, gam, eta = state["x"], state["y"], state["z"]
        else:
            phi = _xp.safe_log(xp, state["x"])
            gam, eta = self.to_log(state["y"], state["z"])
        o = self.opts
        return BarycenterOutput(
            histogram=xp.exp(state["lb"]),
            f=_scale_potential(xp, phi, e),
            g=gam * e,
            debiasing=eta * e if o.debiased else None,
            errors=state["errors"],
            n_iters=state["k"] * o.inner_iterations,
            converged=state["converged"],
            diverged=state["diverged"],
            epsilon=e,
        )


def _solve(geom, A, weights, opts, implicit_diff):
    adapter = geom.adapter
    differentiating = adapter.is_differentiating(*geom.differentiable_arrays(), A, weights)
    if implicit_diff is not None and differentiating:
        return implicit_barycenter(geom, A, weights, opts, implicit_diff)
    ibp = _IBP(geom, A, weights, opts)
    state = ibp.run(unrolled=differentiating)
    return ibp.output(state)


def _scale_potential(xp, h, eps):
    """``ε h`` for a dimensionless potential that is ``-inf`` at zero weights (finite
    derivatives w.r.t. an array ε)."""
    finite = xp.isfinite(h)
    return xp.where(finite, xp.where(finite, h, xp.zeros_like(h)) * eps, h)


def implicit_barycenter(geom, A, weights, opts, implicit_diff):
    """Solve on constants, then attach the fixed-point derivatives (JAX/PyTorch): the
    framework differentiates one step at the solution, and the adapter iterates its
    adjoint to the fixed point (first order)."""
    ad = geom.adapter
    sg = ad.stop_gradient
    ibp_c = _IBP(geom.stop_gradient(), sg(A), sg(weights), opts)
    state = ibp_c.run(unrolled=False)
    out = ibp_c.output(state)
    z = ibp_c.to_log(state["y"], state["z"])
    leaves = (*geom.differentiable_arrays(), A, weights)
    k = len(geom.differentiable_arrays())
    rtol, max_iter = _adjoint_tolerances(implicit_diff, A.dtype, geom.xp)

    def step(z, lv):
        """``((γ', η'), log b)`` of one step from ``z``, as a function of the leaves."""
        ibp = _IBP(geom.with_arrays(tuple(lv[:k])), lv[k], lv[k + 1], opts)
        _, gam, eta, lb = ibp.log_step(*z)
        return (gam, eta), lb

    lb = ad.fixed_point_output(step, z, state["lb"], leaves, rtol, max_iter)
    out.histogram = geom.xp.exp(lb)
    return out


def _adjoint_tolerances(implicit_diff, dtype, xp):
    kw = implicit_diff.solver_kwargs
    rtol = kw.get("rtol", 1e-12 if dtype == xp.float64 else 1e-6)
    return rtol, kw.get("max_iter", 10000)
