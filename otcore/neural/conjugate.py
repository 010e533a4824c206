"""Numerical Fenchel conjugates: batched L-BFGS with a backtracking line search.

``f*(y) = sup_x ⟨x, y⟩ − f(x) = −inf_x f(x) − ⟨x, y⟩``. Every point ``y`` of a batch is an
independent problem; they are solved in lock-step, each with its own L-BFGS history,
step size and stopping test. Written in array API code with a bounded number of
iterations, so it runs eagerly on PyTorch and inside ``jax.jit`` on JAX (through the
adapter's ``while_loop``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

from otcore._lib import xp as _xp
from otcore.backends import adapter_for

__all__ = ["ConjugateResults", "FenchelConjugateLBFGS"]


class ConjugateResults(NamedTuple):
    """Result of a conjugate solve.

    Attributes:
        val: ``f*(y)`` estimated as ``⟨x*, y⟩ − f(x*)``, shape ``(n,)``.
        grad: the maximiser ``x*(y) = ∇f*(y)``, shape ``(n, d)``.
        num_iter: number of L-BFGS iterations run (0-d integer array).
    """

    val: object
    grad: object
    num_iter: object


@dataclass(frozen=True)
class FenchelConjugateLBFGS:
    """Batched L-BFGS for ``x*(y) = argmin_x f(x) − ⟨x, y⟩`` (Amos 2023's fine-tuning).

    Defaults follow OTT-JAX's ``DEFAULT_CONJUGATE_SOLVER`` (jaxopt ``LBFGS``): history 10,
    ``H₀ = γI`` with ``γ = sᵀy/yᵀy``, a backtracking line search (``c1 = 1e-4``) started
    at the previous step times ``increase_factor`` (at most ``max_stepsize``); the acceptance
    test is ``condition`` (see below). Each rejected trial step is replaced by the minimiser
    of the quadratic through ``h(0)``, ``h'(0)`` and ``h(t)``, kept in ``[0.1t, 0.5t]``
    (jaxopt multiplies by 0.8, which needs many more trials after a poor first guess: the
    lock-step batch waits for its slowest point). Unlike OTT 0.6 (which drops it), ``max_linesearch_iter``
    is honoured. A point stops once ``‖∇f(x) − y‖ ≤ gtol``; a line search that finds no
    decrease leaves the point where it is (never a worse or non-finite iterate).

    Args:
        gtol: gradient-norm tolerance per point.
        max_iter: maximum number of L-BFGS iterations.
        max_linesearch_iter: maximum number of trial steps per line search.
        linesearch_type: only ``"backtracking"`` is implemented.
        linesearch_init: ``"increase"`` (previous step × ``increase_factor``, reset to
            ``max_stepsize`` once below ``min_stepsize``), ``"max"`` or ``"current"``.
        increase_factor: see ``linesearch_init``.
        history_size: number of (s, y) pairs kept.
        max_stepsize, min_stepsize: step-size bounds of ``linesearch_init``.
        condition: ``"armijo"`` (sufficient decrease) or ``"strong-wolfe"`` (also
            ``|∇h(x+tp)ᵀp| ≤ 0.9|∇h(x)ᵀp|``, jaxopt's default). Backtracking can only
            shrink the step, so the curvature half of strong Wolfe often cannot be met and
            every trial is spent; Armijo with curvature-safe updates (pairs with
            ``sᵀy ≤ 0`` are skipped) is the default.

    Example:
        >>> import numpy as np
        >>> solver = FenchelConjugateLBFGS()
        >>> f = lambda x: 0.5 * np.sum(x * x, axis=-1)  # self-conjugate
        >>> vg = lambda x: (f(x), x)
        >>> out = solver.solve(f, np.array([[1.0, 2.0]]), value_and_grad=vg)
        >>> np.round(out.grad, 6).tolist(), np.round(out.val, 6).tolist()
        ([[1.0, 2.0]], [2.5])
    """

    gtol: float = 1e-5
    max_iter: int = 20
    max_linesearch_iter: int = 20
    linesearch_type: str = "backtracking"
    linesearch_init: str = "increase"
    increase_factor: float = 1.5
    history_size: int = 10
    max_stepsize: float = 1.0
    min_stepsize: float = 1e-6
    condition: str = "armijo"

    def __post_init__(self):
        if self.linesearch_type != "backtracking":
            raise ValueError(
                f"linesearch_type must be 'backtracking' (the only one implemented), "
                f"got {self.linesearch_type!r}"
            )
        if self.condition not in ("armijo", "strong-wolfe"):
            raise ValueError(
                f"condition must be 'armijo' or 'strong-wolfe', got {self.condition!r}"
            )
        if self.linesearch_init not in ("increase", "max", "current"):
            raise ValueError(
                "linesearch_init must be 'increase', 'max' or 'current', "
                f"got {self.linesearch_init!r}"
            )
        for name in ("max_iter", "max_linesearch_iter", "history_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("gtol", "increase_factor", "max_stepsize", "min_stepsize"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")

    def solve(self, f, y, x_init=None, value_and_grad=None):
        """Conjugate values and maximisers for a batch ``y`` of shape ``(n, d)``.

        Args:
            f: batched function ``(n, d) → (n,)`` (one value per point).
            y: the points ``(n, d)`` at which ``f*`` is evaluated.
            x_init: starting points ``(n, d)`` (default ``y``), e.g. the amortised
                prediction ``∇g(y)``.
            value_and_grad: optional ``x ↦ (f(x), ∇f(x))``; by default the input
                gradient comes from the arrays' framework (JAX or PyTorch), so NumPy
                users must pass it.

        Returns:
            :class:`ConjugateResults` ``(val, grad, num_iter)``.

        Example:
            >>> import numpy as np
            >>> A = np.array([[2.0, 0.5], [0.5, 1.0]])
            >>> f = lambda x: 0.5 * np.sum((x @ A) * x, axis=-1)
            >>> out = FenchelConjugateLBFGS().solve(
            ...     f, np.array([[1.0, -1.0]]), value_and_grad=lambda x: (f(x), x @ A)
            ... )
            >>> np.allclose(out.grad, np.linalg.solve(A, [1.0, -1.0]))
            True
        """
        xp = _xp.namespace(y, x_init, names=["y", "x_init"])
        adapter = adapter_for(y)
        if y.ndim != 2:
            raise ValueError(f"y must have shape (n, d), got {tuple(y.shape)}")
        x0 = y if x_init is None else x_init
        if tuple(x0.shape) != tuple(y.shape):
            raise ValueError(
                f"x_init must have the shape of y {tuple(y.shape)}, got {tuple(x0.shape)}"
            )
        if value_and_grad is None:
            value_and_grad = adapter.training().value_and_input_grad_fn(f)
        return _lbfgs(self, xp, adapter, value_and_grad, y, x0)


def _lbfgs(cfg, xp, adapter, value_and_grad, y, x0):
    """Lock-step batched L-BFGS on ``h(x) = f(x) − ⟨x, y⟩``."""
    n, d = y.shape
    m = cfg.history_size
    dtype, dev = y.dtype, _xp.device_of(y)

    def obj(x):
        fx, gx = value_and_grad(x)
        return fx - _xp.rowdot(xp, x, y), gx - y

    def zeros(shape):
        return xp.zeros(shape, dtype=dtype, device=dev)

    h0, g0 = obj(x0)
    state = (
        x0,
        h0,
        g0,
        zeros((m, n, d)),  # S history, newest last
        zeros((m, n, d)),  # Y history
        zeros((m, n)),  # rho history (0 = empty slot)
        xp.full((n,), cfg.max_stepsize, dtype=dtype, device=dev),
        xp.sqrt(_xp.rowdot(xp, g0, g0)) <= cfg.gtol,  # done
        xp.asarray(0, device=dev),
    )
    c1, c2 = 1e-4, 0.9
    rtol = 4 * xp.finfo(dtype).eps

    def direction(g, s_hist, y_hist, rho):
        q = g
        alphas = []
        for i in range(m - 1, -1, -1):
            a = rho[i, ...] * _xp.rowdot(xp, s_hist[i, ...], q)
            q = q - a[:, None] * y_hist[i, ...]
            alphas.append(a)
        sy = _xp.rowdot(xp, s_hist[m - 1, ...], y_hist[m - 1, ...])
        yy = _xp.rowdot(xp, y_hist[m - 1, ...], y_hist[m - 1, ...])
        has = rho[m - 1, ...] > 0
        gamma = xp.where(has, sy / xp.where(has, yy, xp.ones_like(yy)), xp.ones_like(yy))
        r = gamma[:, None] * q
        for i in range(m):
            b = rho[i, ...] * _xp.rowdot(xp, y_hist[i, ...], r)
            r = r + s_hist[i, ...] * (alphas[m - 1 - i] - b)[:, None]
        p = -r
        # fall back to steepest descent where the quasi-Newton direction is not descent
        ok = (_xp.rowdot(xp, p, g) < 0) & xp.all(xp.isfinite(p), axis=-1)
        return xp.where(ok[:, None], p, -g)

    def cond(s):
        *_, done, k = s
        return (k < cfg.max_iter) & xp.logical_not(xp.all(done))

    def body(s):
        x, h, g, s_hist, y_hist, rho, step, done, k = s
        p = direction(g, s_hist, y_hist, rho)
        slope = _xp.rowdot(xp, g, p)
        if cfg.linesearch_init == "increase":
            t0 = xp.where(step <= cfg.min_stepsize, cfg.max_stepsize, step * cfg.increase_factor)
            t0 = xp.clip(t0, max=cfg.max_stepsize)
        elif cfg.linesearch_init == "max":
            t0 = xp.full_like(step, cfg.max_stepsize)
        else:
            t0 = step

        def ls_cond(ls):
            *_, accepted, j = ls
            return (j < cfg.max_linesearch_iter) & xp.logical_not(xp.all(accepted))

        def ls_body(ls):
            t, t_next, x_new, h_new, g_new, accepted, j = ls
            t_try = xp.where(accepted, t, t_next)
            xt = x + t_try[:, None] * p
            ht, gt = obj(xt)
            ok = (ht <= h + c1 * t_try * slope + tol_h) & xp.isfinite(ht)
            if cfg.condition == "strong-wolfe":
                ok = ok & (xp.abs(_xp.rowdot(xp, gt, p)) <= c2 * xp.abs(slope))
            take = xp.logical_not(accepted)
            x_new = xp.where(take[:, None], xt, x_new)
            h_new = xp.where(take, ht, h_new)
            g_new = xp.where(take[:, None], gt, g_new)
            # next trial: minimiser of the quadratic through h(0), h'(0) and h(t),
            # safeguarded to [0.1 t, 0.5 t] (0.1 t after a non-finite value)
            curv = ht - h - slope * t_try
            finite = xp.isfinite(ht) & (curv > 0)
            t_quad = -slope * t_try * t_try / (2 * xp.where(finite, curv, xp.ones_like(curv)))
            t_quad = xp.where(finite, t_quad, 0.1 * t_try)
            t_next = xp.clip(t_quad, min=0.1 * t_try, max=0.5 * t_try)
            return t_try, t_next, x_new, h_new, g_new, accepted | ok, j + 1

        # values equal to rounding precision count as a decrease (float32 stalls otherwise)
        tol_h = rtol * xp.abs(h)
        ls0 = (t0, t0, x, h, g, done, xp.asarray(0, device=dev))
        t, _, x_new, h_new, g_new, _, _ = adapter.while_loop(ls_cond, ls_body, ls0)
        # never move to a worse or non-finite point; converged points stay put
        move = (
            xp.logical_not(done)
            & xp.isfinite(h_new)
            & (h_new <= h + tol_h)
            & xp.all(xp.isfinite(g_new), axis=-1)
        )
        x_new = xp.where(move[:, None], x_new, x)
        h_new = xp.where(move, h_new, h)
        g_new = xp.where(move[:, None], g_new, g)
        s_vec = x_new - x
        y_vec = g_new - g
        sy = _xp.rowdot(xp, s_vec, y_vec)
        good = move & (
            sy > 1e-10 * xp.sqrt(_xp.rowdot(xp, s_vec, s_vec) * _xp.rowdot(xp, y_vec, y_vec))
        )
        new_rho = xp.where(good, 1.0 / xp.where(good, sy, xp.ones_like(sy)), xp.zeros_like(sy))
        s_hist = xp.concat(
            [s_hist[1:, ...], xp.where(good[:, None], s_vec, 0.0 * s_vec)[None, ...]], axis=0
        )
        y_hist = xp.concat(
            [y_hist[1:, ...], xp.where(good[:, None], y_vec, 0.0 * y_vec)[None, ...]], axis=0
        )
        rho = xp.concat([rho[1:, ...], new_rho[None, ...]], axis=0)
        step = xp.where(move, t, step)
        done = done | (xp.sqrt(_xp.rowdot(xp, g_new, g_new)) <= cfg.gtol) | xp.logical_not(move)
        return x_new, h_new, g_new, s_hist, y_hist, rho, step, done, k + 1

    x, h, _, _, _, _, _, _, k = adapter.while_loop(cond, body, state)
    return ConjugateResults(val=-h, grad=x, num_iter=k)
