"""Matrix-free Krylov solvers written against the array API.

Vectors may carry leading batch axes: ``(..., k)``; inner products reduce the last axis,
so every problem of a batch runs its own recursion, and the loop stops when all of them
meet ``|r| <= max(rtol |b|, atol)`` or after ``max_iter`` steps. Loops go through the
adapter (``lax.while_loop`` on JAX, a Python loop elsewhere).
"""

from __future__ import annotations

__all__ = ["cg", "default_tolerances", "normal_cg"]


def default_tolerances(dtype_is_64: bool):
    """``(rtol, atol)`` defaults: tight in float64, reachable in float32.

    The absolute floor matters when the right-hand side is itself tiny (e.g. a marginal
    error near the solver's threshold): a relative test alone would chase rounding noise
    until ``max_iter``. Residuals are in mass units (marginals sum to about 1).
    """
    return (1e-13, 1e-15) if dtype_is_64 else (1e-5, 1e-8)


def _dot(xp, u, v):
    return xp.sum(u * v, axis=-1, keepdims=True)


def cg(adapter, matvec, rhs, *, precond=None, rtol=1e-6, atol=0.0, max_iter=None, weight=None):
    """Preconditioned conjugate gradients for a symmetric positive (semi-)definite operator.

    Args:
        adapter: the backend adapter (loops).
        matvec: ``v -> A v`` on arrays shaped like ``rhs``.
        rhs: right-hand side ``(..., k)``; for a singular ``A`` it must lie in its range.
        precond: optional diagonal preconditioner: an array broadcastable to ``rhs``
            holding ``1 / diag(A)`` (or any positive approximation of it), or a callable
            ``r -> r / diag(A)`` (which stays finite where ``1 / diag(A)`` would overflow).
        rtol, atol: stop when ``|r| <= max(rtol |rhs|, atol)`` for every batch entry
            (``atol`` a number or an array broadcastable to ``(..., 1)``).
        max_iter: at most this many steps (default ``2 k + 10``).
        weight: optional positive array broadcastable to ``rhs``: the stopping rule then
            measures ``|weight · r|`` and ``|weight · rhs|`` (the residual of a system
            that was scaled by ``1/weight``, in its original units).

    Returns:
        The solution, shaped like ``rhs``.

    Example:
        >>> import numpy as np
        >>> from otcore.backends import adapter_for
        >>> A = np.array([[4.0, 1.0], [1.0, 3.0]]); b = np.array([1.0, 2.0])
        >>> x = cg(adapter_for(b), lambda v: A @ v, b, rtol=1e-12)
        >>> np.allclose(A @ x, b)
        True
    """
    xp = adapter.xp
    k = rhs.shape[-1]
    max_iter = 2 * k + 10 if max_iter is None else int(max_iter)
    if precond is None:
        m = lambda r: r  # noqa: E731
    elif callable(precond):
        m = precond
    else:
        m = lambda r: precond * r  # noqa: E731
    wt = (lambda r: r) if weight is None else (lambda r: weight * r)
    bnorm = xp.sqrt(_dot(xp, wt(rhs), wt(rhs)))
    atol = xp.full_like(bnorm, atol) if isinstance(atol, (int, float)) else atol + 0 * bnorm
    tol2 = xp.maximum(rtol * bnorm, atol) ** 2
    x0 = xp.zeros_like(rhs)
    r0 = rhs
    z0 = m(r0)
    state = {
        "x": x0,
        "r": r0,
        "p": z0,
        "rz": _dot(xp, r0, z0),
        "rr": _dot(xp, wt(r0), wt(r0)),
        "i": xp.asarray(0),
    }

    def cond(s):
        return (s["i"] < max_iter) & xp.any(s["rr"] > tol2)

    def body(s):
        ap = matvec(s["p"])
        pap = _dot(xp, s["p"], ap)
        active = s["rr"] > tol2
        safe = xp.where(active & (pap != 0), pap, xp.ones_like(pap))
        alpha = xp.where(active & (pap != 0), s["rz"] / safe, xp.zeros_like(pap))
        x = s["x"] + alpha * s["p"]
        r = s["r"] - alpha * ap
        z = m(r)
        rz = _dot(xp, r, z)
        rz_safe = xp.where(s["rz"] != 0, s["rz"], xp.ones_like(rz))
        beta = xp.where(s["rz"] != 0, rz / rz_safe, xp.zeros_like(rz))
        return {
            "x": x,
            "r": r,
            "p": z + beta * s["p"],
            "rz": rz,
            "rr": _dot(xp, wt(r), wt(r)),
            "i": s["i"] + 1,
        }

    return adapter.while_loop(cond, body, state)["x"]


def normal_cg(adapter, matvec, rhs, *, rmatvec=None, precond=None, **kwargs):
    """Conjugate gradients on the normal equations ``Aᵀ A x = Aᵀ b`` (any square ``A``).

    ``rmatvec`` applies ``Aᵀ`` (default: ``matvec``, for symmetric ``A``). ``precond`` is
    ignored (the normal operator's diagonal is not available matrix-free).

    Example:
        >>> import numpy as np
        >>> from otcore.backends import adapter_for
        >>> A = np.array([[2.0, 1.0], [0.0, 3.0]]); b = np.array([1.0, 2.0])
        >>> x = normal_cg(adapter_for(b), lambda v: A @ v, b, rmatvec=lambda v: A.T @ v, rtol=1e-12)
        >>> np.allclose(A @ x, b)
        True
    """
    del precond
    rmatvec = matvec if rmatvec is None else rmatvec
    return cg(adapter, lambda v: rmatvec(matvec(v)), rmatvec(rhs), **kwargs)
