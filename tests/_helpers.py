"""Shared helpers of the test suite: backends, conversions and reference computations.

The references are written independently of the library, so that a test compares otcore
against something it did not compute itself; only the backends come from otcore's registry
(:mod:`otcore.backends`): which frameworks exist, their adapters and namespaces.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import pytest

from otcore.backends import REGISTRY, adapter_by_name

CPU_BACKENDS = ("numpy", "array_api_strict", "jax", "torch")
GPU_BACKENDS = ("cupy", "torch-cuda", "jax-gpu")


def to_numpy(x) -> np.ndarray:
    """Any backend's array (or a Python scalar) as a NumPy array on the host."""
    if isinstance(x, np.ndarray | np.generic | float | int | bool):
        return np.asarray(x)
    module = type(x).__module__
    if module.startswith("torch"):
        return x.detach().cpu().numpy()
    if module.startswith("cupy"):
        return x.get()
    if module.startswith("array_api_strict"):
        # array_api_strict arrays live on a virtual CPU device; DLPack is the portable exit.
        return np.from_dlpack(x)
    return np.asarray(x)


class _ArrayType(type):
    """``isinstance(x, array_type)``: the registry's test for the framework's arrays."""

    def __instancecheck__(cls, x):
        return REGISTRY[cls.framework].recognise(x)


@dataclass
class Backend:
    """One array library on one device, as seen by the tests.

    ``name`` is the fixture's name (``"torch-cuda"``); ``framework`` the otcore backend
    it runs (``"torch"``), whose registry entry (:data:`otcore.backends.REGISTRY`) gives the
    adapter, the array API namespace used by ``to_xp`` and the test behind ``array_type``.
    ``to_xp(np_array)`` converts a NumPy array to this backend (keeping float64 unless
    ``dtype`` is given) and ``to_np(array)`` converts back. Attribute access falls through
    to the library's own module (``namespace``), so tests may write native code such as
    ``xp.sum(...)``.
    """

    name: str
    namespace: object
    device: object = None

    @property
    def framework(self) -> str:
        return self.name.split("-")[0]

    @property
    def adapter(self):
        return adapter_by_name(self.framework)

    @property
    def array_type(self) -> type:
        return _ArrayType(f"{self.framework}_array", (), {"framework": self.framework})

    def to_xp(self, arr, dtype=None):
        arr = np.array(arr, dtype=dtype, order="C", copy=True)  # keeps 0-d arrays 0-d
        return self.adapter.xp.asarray(arr, device=self.device)

    @staticmethod
    def to_np(x) -> np.ndarray:
        return to_numpy(x)

    def __getattr__(self, item):
        return getattr(self.namespace, item)


def make_backend(name: str) -> Backend:
    """Build the :class:`Backend` ``name``; skip the test when it is not available."""
    if name == "numpy":
        return Backend("numpy", np, "cpu")
    if name == "array_api_strict":
        xps = pytest.importorskip("array_api_strict")
        return Backend(name, xps, xps.asarray(0.0).device)
    if name in ("jax", "jax-gpu"):
        jax = pytest.importorskip("jax")
        jnp = importlib.import_module("jax.numpy")
        platform = "cpu" if name == "jax" else "gpu"
        try:
            dev = jax.devices(platform)[0]
        except RuntimeError:
            pytest.skip(f"jax has no {platform} device")
        return Backend(name, jnp, dev)
    if name in ("torch", "torch-cuda"):
        torch = pytest.importorskip("torch")
        if name == "torch-cuda" and not torch.cuda.is_available():
            pytest.skip("torch has no CUDA device")
        return Backend(name, torch, torch.device("cpu" if name == "torch" else "cuda"))
    if name == "cupy":
        cp = pytest.importorskip("cupy")
        try:
            if cp.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("cupy sees no GPU")
        except Exception:  # no driver / no device
            pytest.skip("cupy sees no GPU")
        return Backend(name, cp, cp.cuda.Device(0))
    raise ValueError(name)


def device_str(x) -> str:
    """The device of ``x`` as a string (array API ``device`` attribute, or jax's)."""
    import array_api_compat

    return str(array_api_compat.device(x))


# -- independent references ----------------------------------------------------------------


def gen_kl(p, q) -> float:
    """Generalised KL ``Σ p log(p/q) - p + q`` with ``0 log 0 = 0``."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def primal_objective(P, C, a, b, eps, rho_a=np.inf, rho_b=np.inf) -> float:
    """``<P,C> + ε KL(P||a⊗b) + ρ_a KL(P1||a) + ρ_b KL(Pᵀ1||b)`` (∞ ρ: term dropped)."""
    val = float(np.sum(P * C)) + eps * gen_kl(P, np.outer(a, b))
    if np.isfinite(rho_a):
        val += rho_a * gen_kl(P.sum(1), a)
    if np.isfinite(rho_b):
        val += rho_b * gen_kl(P.sum(0), b)
    return val


def solve_primal(C, a, b, eps, rho_a=np.inf, rho_b=np.inf):
    """Minimise the entropic primal directly (no Sinkhorn, no dual): an independent reference.

    ``min_P <P,C> + ε KL(P||a⊗b) + ρ_a KL(P1||a) + ρ_b KL(Pᵀ1||b)``, where an infinite
    ``ρ`` means the marginal is constrained (``P1 = a`` or ``Pᵀ1 = b``). At most one side
    may be constrained; weights must be positive.

    Stage 1: L-BFGS over ``L`` with ``P = exp(L)`` (both sides free) or
    ``P = a_i softmax_j(L_ij)`` (rows constrained; columns likewise), so every iterate is
    positive and feasible. Stage 2: Newton steps on ``P`` with the constraint in the KKT
    system; the objective is strictly convex in ``P``, so from L-BFGS's point the full
    Newton steps converge quadratically, to machine precision.

    Returns ``(value, P)``.
    """
    from scipy.optimize import minimize

    C, a, b = (np.asarray(v, float) for v in (C, a, b))
    if np.isinf(rho_a) and np.isinf(rho_b):
        raise ValueError("solve_primal handles at most one constrained marginal")
    n, m = C.shape
    ab = np.outer(a, b)

    def grad_p(P):
        G = C + eps * np.log(P / ab)
        if np.isfinite(rho_a):
            G = G + rho_a * np.log(P.sum(1) / a)[:, None]
        if np.isfinite(rho_b):
            G = G + rho_b * np.log(P.sum(0) / b)[None, :]
        return G

    def plan(L):
        if np.isinf(rho_a):
            S = np.exp(L - L.max(1, keepdims=True))
            return a[:, None] * S / S.sum(1, keepdims=True)
        if np.isinf(rho_b):
            S = np.exp(L - L.max(0, keepdims=True))
            return b[None, :] * S / S.sum(0, keepdims=True)
        return np.exp(L)

    def fun(flat):
        P = plan(flat.reshape(n, m))
        G = grad_p(P)
        if np.isinf(rho_a):
            dL = P * (G - np.sum(P * G, 1, keepdims=True) / a[:, None])
        elif np.isinf(rho_b):
            dL = P * (G - np.sum(P * G, 0, keepdims=True) / b[None, :])
        else:
            dL = P * G
        return primal_objective(P, C, a, b, eps, rho_a, rho_b), dL.ravel()

    res = minimize(
        fun,
        np.log(ab).ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxcor": 30, "ftol": 0.0, "gtol": 1e-12},
    )
    P = plan(res.x.reshape(n, m))

    rows = np.kron(np.eye(n), np.ones((1, m)))  # (n, n*m): row sums of vec(P)
    cols = np.kron(np.ones((1, n)), np.eye(m))  # (m, n*m): column sums
    A = rows if np.isinf(rho_a) else cols if np.isinf(rho_b) else np.zeros((0, n * m))
    for _ in range(8):
        hess = np.diag(eps / P.ravel())
        if np.isfinite(rho_a):
            hess = hess + rho_a * rows.T @ np.diag(1.0 / P.sum(1)) @ rows
        if np.isfinite(rho_b):
            hess = hess + rho_b * cols.T @ np.diag(1.0 / P.sum(0)) @ cols
        k = A.shape[0]
        kkt = np.block([[hess, A.T], [A, np.zeros((k, k))]])
        rhs = np.concatenate([-grad_p(P).ravel(), np.zeros(k)])
        step = np.linalg.solve(kkt, rhs)[: n * m].reshape(n, m)
        if np.any(P + step <= 0):
            raise RuntimeError("Newton polish left the positive orthant; L-BFGS was too far")
        P = P + step
    return primal_objective(P, C, a, b, eps, rho_a, rho_b), P


def jax_subset(backend_name: str, keep: bool) -> None:
    """Run only a representative subset of a parametrisation on JAX.

    Each eager otcore solve on JAX traces and compiles its ``lax.while_loop`` (0.3-1 s,
    against milliseconds on NumPy), so the widest parametrisations run in full on the
    other backends and on a few representative cases on JAX.
    """
    if backend_name.startswith("jax") and not keep:
        pytest.skip("JAX runs a representative subset of this parametrisation (compile time)")
