"""Sinkhorn divergence Hessians: OTT-JAX's tutorial "Sinkhorn Divergence Hessians", with otcore.

The seed (``docs/tutorials/linear/400_Hessians.ipynb`` in ott-jax) samples two point clouds
``x (17, 3)``, ``y (15, 3)`` in ``[0, 1]^3`` with random weights ``a``, ``b``, takes

    loss(a, x) = S_ε((x, a), (y, b))      (Sinkhorn divergence, squared Euclidean cost)

and computes its Hessian w.r.t. the weights ``a`` (``n x n``) and the points ``x``
(``n x d x n x d``) twice: by *unrolling* the Sinkhorn iterations (``implicit_diff=None``)
and by *implicit differentiation* of the optimality conditions (``ImplicitDiff()``), both
with ``use_danskin=False`` (the potentials' response is needed for second order). It checks
the quadratic form ``<δ, H δ>`` against finite differences.

This script runs the same experiment with otcore on every installed backend:

* JAX: ``jax.jit(jax.hessian(loss))``, unrolled and implicit;
* PyTorch: ``torch.autograd.functional.hessian``, unrolled and implicit, and an attempt
  with ``torch.func.hessian``;
* NumPy: ``ot.hessian(ot.sinkhorn_divergence, argnums=...)``, otcore's analytic rules
  (implicit only: NumPy has no autodiff, hence no unrolled mode).

It prints the timings, the ``<δ, H δ>`` table (Hessians vs finite differences of the value
with ``h = 1e-3`` as in the seed, and a central difference of the gradient ``ot.grad``
with ``h = 1e-5``, which is far more accurate), the eigenvalues of the centred
``a``-Hessian, the agreements as digits, and the cross-backend differences. It saves a
figure of the Hessians (unrolled | implicit).

Two choices differ from the seed, so that the comparisons are meaningful in float64:

* ``threshold = 1e-9`` (float64) instead of OTT's default ``1e-3``: derivatives of a solve
  are exact only at its fixed point.
* ε is the default ``0.05 · std(C_xy)`` computed **once at the base point** and then held
  fixed. The default rule recomputes ε from the perturbed ``x`` at ``x ± hδ``, while every
  derivative (otcore's and OTT-JAX's) treats ε as a constant; finite differences in ``x``
  of the seed's loss therefore miss the ``dε/dx`` terms (the script prints the size of
  that effect: about 3 digits).

In float64 the script exits with status 1 unless unrolled and implicit Hessians agree to
at least 5 digits and every ``<δ, H δ>`` agrees with the gradient finite difference to at
least 4 digits.

Run::

    python benchmarks/sinkhorn_divergence_hessians.py --figure hessians.png
    python benchmarks/sinkhorn_divergence_hessians.py --backends numpy,torch --dtype float32
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import otcore as ot
from otcore.backends import adapter_by_name

ALL_BACKENDS = ("numpy", "jax", "torch")
MODES = ("unrolled", "implicit")
ARGS = ("a", "x")
H_VALUE = 1e-3  # finite differences of the value (the seed's step)
H_GRAD = 1e-5  # central differences of the gradient
DIGITS_HESSIAN = 5.0  # float64 targets
DIGITS_QUADRATIC = 4.0
# XLA options of ``jax_disable_most_optimizations``: ~3x faster compilation, slower code
FAST_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# -- the seed's problem -------------------------------------------------------------------
@dataclass
class Setup:
    """The sampled problem (NumPy float64 arrays) and its fixed ε."""

    a: np.ndarray
    x: np.ndarray
    b: np.ndarray
    y: np.ndarray
    delta_a: np.ndarray
    delta_x: np.ndarray
    epsilon: float

    @property
    def deltas(self):
        return {"a": self.delta_a, "x": self.delta_x}


def sample(n: int = 17, m: int = 15, d: int = 3, seed: int = 0) -> Setup:
    """The seed's sampler, with NumPy's ``default_rng(seed)`` instead of JAX keys.

    ``x, y ~ U[0,1]^d``; ``a, b = U + 0.1`` normalised; ``delta_a = U - 0.5`` centred (it
    sums to 0, so ``a ± h delta_a`` stays on the simplex); ``delta_x = U - 0.5``.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d))
    y = rng.uniform(size=(m, d))
    a = rng.uniform(size=n) + 0.1
    b = rng.uniform(size=m) + 0.1
    a, b = a / a.sum(), b / b.sum()
    delta_a = rng.uniform(size=n) - 0.5
    delta_a = delta_a - delta_a.mean()
    delta_x = rng.uniform(size=(n, d)) - 0.5
    return Setup(a, x, b, y, delta_a, delta_x, default_epsilon(x, y))


def default_epsilon(x, y) -> float:
    """otcore's (and OTT-JAX's) default ε of the ``x``-``y`` problem: ``0.05 · std(C_xy)``."""
    return float(ot.PointCloud(x, y).epsilon)


def solve_kwargs(mode: str, threshold: float, epsilon, cg_atol: float | None = None) -> dict:
    """Options of the loss: the seed's ``solve_kwargs`` plus a tight threshold and ε.

    ``cg_atol``: an absolute tolerance for the conjugate gradients of the implicit solve
    (otcore's default: ``rtol = 1e-13``, ``atol = 1e-15`` in float64).
    """
    implicit = ot.ImplicitDiff(solver_kwargs={"atol": cg_atol} if cg_atol else None)
    return {
        "implicit_diff": implicit if mode == "implicit" else None,
        "use_danskin": False,
        "threshold": threshold,
        "epsilon": epsilon,
    }


def default_threshold(dtype: str) -> float:
    return 1e-9 if dtype == "float64" else 1e-5


# -- linear algebra of the results ----------------------------------------------------
def centre_two_sided(h: np.ndarray) -> np.ndarray:
    """``P H P`` with ``P = I - 11ᵀ/n``: the ``a``-Hessian on the simplex's tangent space.

    A balanced problem is defined only for ``Σa = Σb``, so the Hessian in ``a`` is defined
    only on ``{δ : Σδ = 0}``; off it, unrolling and implicit differentiation (and OTT-JAX)
    follow different conventions, which differ by terms ``1vᵀ + v1ᵀ``. The seed's
    row-centring ``H - mean(H, axis=1)[:, None] = H P`` removes ``v1ᵀ`` only (it keeps the
    eigenvalues of ``P H P``, plus the zero of the direction ``1``); comparisons need
    both sides.
    """
    return h - h.mean(axis=0, keepdims=True) - h.mean(axis=1, keepdims=True) + h.mean()


def comparable(arg: str, h: np.ndarray) -> np.ndarray:
    return centre_two_sided(h) if arg == "a" else h


def quadratic_form(h: np.ndarray, delta: np.ndarray) -> float:
    """``<δ, H δ>`` for a Hessian of shape ``delta.shape * 2``."""
    hd = np.tensordot(h, delta, axes=delta.ndim)
    return float(np.sum(delta * hd))


def digits(u, v) -> float:
    """Agreement of ``u`` with the reference ``v``: ``-log10(max|u - v| / max|v|)``."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    err = float(np.max(np.abs(u - v)))
    scale = float(np.max(np.abs(v)))
    if not (math.isfinite(err) and math.isfinite(scale)):
        return float("nan")
    if err == 0.0:
        return 16.0
    return -math.log10(err / max(scale, np.finfo(np.float64).tiny))


def eigen_summary(h: np.ndarray) -> dict:
    """The seed's eigenvalues of the row-centred ``a``-Hessian, and those on ``Σδ = 0``.

    ``H - mean(H, axis=1)[:, None]`` always has the eigenvalue 0 (direction ``1``), so its
    minimum says little; the smallest eigenvalue of ``Qᵀ H Q`` (``Q``: an orthonormal basis
    of ``{Σδ = 0}``) is the real positive-semi-definiteness test.
    """
    row_centred = h - h.mean(axis=1)[:, None]
    eig = np.real(np.linalg.eigvals(row_centred))
    n = h.shape[0]
    q = np.linalg.qr(np.eye(n) - 1.0 / n)[0][:, : n - 1]
    tangent = np.linalg.eigvalsh(q.T @ (0.5 * (h + h.T)) @ q)
    return {"min": float(eig.min()), "max": float(eig.max()), "tangent_min": float(tangent[0])}


# -- timing ---------------------------------------------------------------------------
@dataclass
class Timing:
    first_s: float  # the warm-up call (includes jax.jit compilation)
    median_s: float
    runs: int


def measure(fn, sync, repeats: int, budget_s: float):
    """``(result, Timing)``: one warm-up call, then up to ``repeats`` timed calls (at least
    one) while their total stays under ``budget_s``; the median of the timed calls."""
    t0 = time.perf_counter()
    out = sync(fn())
    first = time.perf_counter() - t0
    times = []
    while len(times) < max(repeats, 1):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return out, Timing(first, statistics.median(times), len(times))


# -- backends -------------------------------------------------------------------------
class Backend:
    """One framework: native inputs, Hessians per (mode, arg), and value/gradient functions
    for the finite differences (always in float64, whatever the Hessians' dtype)."""

    name = "?"
    modes = MODES

    def __init__(self, setup: Setup, dtype: str, threshold: float, options: dict):
        self.setup = setup
        self.dtype = dtype
        self.threshold = threshold
        self.options = options
        self.notes: list[str] = []

    # native conversion, through otcore's backend registry (the name is the registry's)
    def to(self, arr, dtype=None):
        xp = adapter_by_name(self.name).xp
        return xp.asarray(np.array(arr, dtype=dtype or self.dtype, copy=True))

    @staticmethod
    def to_numpy(arr) -> np.ndarray:
        return np.asarray(arr, dtype=np.float64)

    @staticmethod
    def sync(out):
        return out

    def kwargs(self, mode, dtype=None):
        dtype = dtype or self.dtype
        thr = self.threshold if dtype == self.dtype else default_threshold(dtype)
        return solve_kwargs(mode, thr, self.setup.epsilon, self.options.get("cg_atol"))

    def hessian(self, mode: str, arg: str):
        """A function of no argument computing the Hessian (native array)."""
        raise NotImplementedError

    def value_and_grads64(self):
        """``(a, x) -> (value, grad_a, grad_x)`` in float64 NumPy, implicit mode."""
        raise NotImplementedError

    def after_hessians(self, result):
        """Backend-specific extra experiments (e.g. ``torch.func.hessian``)."""


class NumpyBackend(Backend):
    name = "numpy"
    modes = ("implicit",)

    def __init__(self, *args):
        super().__init__(*args)
        self.notes.append(
            "NumPy has no autodiff, hence no unrolled mode: ot.hessian uses otcore's "
            "analytic Hessian-vector products (one implicit solve per column)."
        )

    def hessian(self, mode, arg):
        s, kw = self.setup, self.kwargs(mode)
        x, y, a, b = (self.to(v) for v in (s.x, s.y, s.a, s.b))
        argnum = 2 if arg == "a" else 0
        return lambda: ot.hessian(ot.sinkhorn_divergence, argnums=argnum)(x, y, a, b, **kw)

    def value_and_grads64(self):
        s, kw = self.setup, self.kwargs("implicit", "float64")

        def fn(a, x):
            value, (gx, ga) = ot.value_and_grad(ot.sinkhorn_divergence, argnums=(0, 2))(
                x, s.y, a, s.b, **kw
            )
            return float(value), ga, gx

        return fn


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, *args):
        super().__init__(*args)
        import jax

        jax.config.update("jax_enable_x64", True)  # float64, also for the float64 FD
        self.jax = jax
        if self.options.get("fast_compile"):
            self.notes.append(
                "fast compile: XLA optimisations disabled (faster jit, slower code); "
                "timings are not those of optimised XLA code."
            )

    def sync(self, out):
        return self.jax.block_until_ready(out)

    def compile(self, fn, *example):
        """``jax.jit(fn)``; with ``fast_compile``, compiled once with ``FAST_XLA``."""
        jitted = self.jax.jit(fn)
        if not self.options.get("fast_compile"):
            return jitted
        cache = {}

        def call(*args):
            if "exe" not in cache:
                cache["exe"] = jitted.lower(*example).compile(compiler_options=FAST_XLA)
            return cache["exe"](*args)

        return call

    def loss(self, mode, dtype=None):
        s, kw = self.setup, self.kwargs(mode, dtype)
        y, b = self.to(s.y, dtype), self.to(s.b, dtype)

        def loss(a, x):
            return ot.sinkhorn_divergence(x, y, a, b, **kw)

        return loss

    def hessian(self, mode, arg):
        a, x = self.to(self.setup.a), self.to(self.setup.x)
        hess = self.compile(self.jax.hessian(self.loss(mode), argnums=ARGS.index(arg)), a, x)
        return lambda: hess(a, x)

    def value_and_grads64(self):
        s, kw = self.setup, self.kwargs("implicit", "float64")
        y, b = self.to(s.y, "float64"), self.to(s.b, "float64")

        def vg(a, x):
            value, (gx, ga) = ot.value_and_grad(ot.sinkhorn_divergence, argnums=(0, 2))(
                x, y, a, b, **kw
            )
            return value, ga, gx

        a0, x0 = self.to(s.a, "float64"), self.to(s.x, "float64")
        fn = self.compile(vg, a0, x0)

        def call(a, x):
            value, ga, gx = fn(self.to(a, "float64"), self.to(x, "float64"))
            return float(value), self.to_numpy(ga), self.to_numpy(gx)

        return call


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, *args):
        super().__init__(*args)
        import torch

        self.torch = torch
        threads = self.options.get("torch_threads")
        if threads:
            torch.set_num_threads(threads)
        self.notes.append(
            f"torch.autograd.functional.hessian on {torch.get_num_threads()} thread(s) "
            "(tiny problems: more threads only add overhead); unrolled with vectorize=True. "
            "The implicit mode cannot use vectorize=True: the backward runs a conjugate-"
            "gradient loop whose convergence test is data-dependent control flow, which "
            "vmap cannot batch (aten::is_nonzero)."
        )

    @staticmethod
    def to_numpy(arr):
        return arr.detach().cpu().numpy().astype(np.float64)

    def of_arg(self, mode, arg):
        s, kw = self.setup, self.kwargs(mode)
        x, y, a, b = (self.to(v) for v in (s.x, s.y, s.a, s.b))

        def fn(t):
            a_, x_ = (t, x) if arg == "a" else (a, t)
            return ot.sinkhorn_divergence(x_, y, a_, b, **kw)

        return fn, (a if arg == "a" else x)

    def hessian(self, mode, arg):
        fn, point = self.of_arg(mode, arg)
        hessian = self.torch.autograd.functional.hessian
        return lambda: hessian(fn, point, vectorize=mode == "unrolled")

    def value_and_grads64(self):
        s, kw = self.setup, self.kwargs("implicit", "float64")
        y, b = self.to(s.y, "float64"), self.to(s.b, "float64")

        def fn(a, x):
            value, (gx, ga) = ot.value_and_grad(ot.sinkhorn_divergence, argnums=(0, 2))(
                self.to(x, "float64"), y, self.to(a, "float64"), b, **kw
            )
            return float(value), self.to_numpy(ga), self.to_numpy(gx)

        return fn

    def after_hessians(self, result):
        """Try ``torch.func.hessian`` (functorch: ``jacfwd(jacrev(.))``) in both modes."""
        if not self.options.get("torch_func", True):
            return
        for mode in MODES:
            for arg in ARGS:
                fn, point = self.of_arg(mode, arg)
                t0 = time.perf_counter()
                try:
                    h = self.torch.func.hessian(fn)(point)
                except Exception as exc:  # report why, do not fail the experiment
                    reason = str(exc).strip().splitlines()[0]
                    result.torch_func[(mode, arg)] = f"fails: {type(exc).__name__}: {reason}"
                    continue
                elapsed = time.perf_counter() - t0
                ref = result.hessians[(mode, arg)]
                agree = digits(comparable(arg, self.to_numpy(h)), comparable(arg, ref))
                result.torch_func[(mode, arg)] = (
                    f"works, {elapsed:.2f} s (one call), {agree:.1f} digits vs autograd.functional"
                )


BACKENDS = {"numpy": NumpyBackend, "jax": JaxBackend, "torch": TorchBackend}


def installed_backends() -> list[str]:
    return [name for name in ALL_BACKENDS if name == "numpy" or importlib.util.find_spec(name)]


# -- the experiment -------------------------------------------------------------------
@dataclass
class Result:
    """Everything measured on one backend (NumPy float64 copies of the Hessians)."""

    name: str
    dtype: str
    modes: tuple
    hessians: dict = field(default_factory=dict)  # (mode, arg) -> array
    timings: dict = field(default_factory=dict)  # (mode, arg) -> Timing
    quadratic: dict = field(default_factory=dict)  # (mode, arg) -> <δ, H δ>
    fd_value: dict = field(default_factory=dict)  # arg -> FD of the value, h = 1e-3
    fd_grad: dict = field(default_factory=dict)  # arg -> FD of the gradient, h = 1e-5
    eigen: dict = field(default_factory=dict)  # mode -> eigen_summary of the a-Hessian
    torch_func: dict = field(default_factory=dict)  # (mode, arg) -> str
    notes: list = field(default_factory=list)

    def digits_unrolled_vs_implicit(self, arg):
        if "unrolled" not in self.modes:
            return None
        h_u, h_i = (comparable(arg, self.hessians[(m, arg)]) for m in MODES)
        return digits(h_u, h_i)

    def digits_vs_fd(self, mode, arg):
        return digits(self.quadratic[(mode, arg)], self.fd_grad[arg])


def finite_differences(value_and_grads, setup: Setup):
    """``{arg: (value FD, gradient FD)}`` of ``<δ, H δ>`` along ``setup.deltas``."""
    out = {}
    for arg, delta in setup.deltas.items():

        def at(step, arg=arg, delta=delta):
            a = setup.a + step * delta if arg == "a" else setup.a
            x = setup.x + step * delta if arg == "x" else setup.x
            return value_and_grads(a, x)

        v0 = at(0.0)[0]
        vp, vm = at(H_VALUE)[0], at(-H_VALUE)[0]
        fd_value = (vp + vm - 2.0 * v0) / H_VALUE**2
        k = ARGS.index(arg) + 1
        gp, gm = at(H_GRAD)[k], at(-H_GRAD)[k]
        fd_grad = float(np.sum(delta * (gp - gm))) / (2.0 * H_GRAD)
        out[arg] = (fd_value, fd_grad)
    return out


def run_backend(name: str, setup: Setup, dtype="float64", threshold=None, **options) -> Result:
    """The seed's experiment on one backend.

    ``options``: ``repeats`` (timed calls after the warm-up, default 5), ``time_budget``
    (seconds of timed calls per Hessian, default 2), ``fast_compile`` (JAX),
    ``torch_threads`` (default 1), ``torch_func`` (try ``torch.func.hessian``, default
    True), ``cg_atol`` (absolute tolerance of the implicit solve's conjugate gradients).
    """
    options = {"repeats": 5, "time_budget": 2.0, "torch_threads": 1, **options}
    threshold = default_threshold(dtype) if threshold is None else threshold
    backend = BACKENDS[name](setup, dtype, threshold, options)
    result = Result(name, dtype, backend.modes, notes=list(backend.notes))
    for arg in ARGS:
        for mode in backend.modes:
            h, timing = measure(
                backend.hessian(mode, arg),
                backend.sync,
                options["repeats"],
                options["time_budget"],
            )
            h = backend.to_numpy(h)
            result.hessians[(mode, arg)] = h
            result.timings[(mode, arg)] = timing
            result.quadratic[(mode, arg)] = quadratic_form(h, setup.deltas[arg])
            if arg == "a":
                result.eigen[mode] = eigen_summary(h)
    for arg, (fd_value, fd_grad) in finite_differences(backend.value_and_grads64(), setup).items():
        result.fd_value[arg], result.fd_grad[arg] = fd_value, fd_grad
    backend.after_hessians(result)
    return result


def epsilon_effect(setup: Setup, threshold: float = 1e-9) -> dict:
    """Why ε is held fixed: the seed's loss (default ε, recomputed at ``x ± hδ``) vs
    ``<δ, H δ>``, with NumPy in float64 (gradient finite differences, ``h = 1e-5``)."""
    kw = solve_kwargs("implicit", threshold, None)
    x, y, a, b, dx = setup.x, setup.y, setup.a, setup.b, setup.delta_x

    def grad_x(x_):
        return ot.grad(ot.sinkhorn_divergence, argnums=0)(x_, y, a, b, **kw)

    fd = float(np.sum(dx * (grad_x(x + H_GRAD * dx) - grad_x(x - H_GRAD * dx)))) / (2 * H_GRAD)
    hx = ot.hessian(ot.sinkhorn_divergence, argnums=0)(x, y, a, b, **kw)
    quad = quadratic_form(hx, dx)
    return {"quadratic": quad, "fd_grad_default_eps": fd, "digits": digits(fd, quad)}


def solve_iterations(setup: Setup, threshold: float) -> tuple:
    """Iterations of the (x-y, x-x, y-y) solves at the base point (NumPy, float64)."""
    _, out = ot.sinkhorn_divergence(
        setup.x,
        setup.y,
        setup.a,
        setup.b,
        epsilon=setup.epsilon,
        threshold=threshold,
        return_output=True,
    )
    return tuple(int(k) for k in out.n_iters), bool(out.converged)


# -- reports --------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.2f} ms" if seconds < 10 else f"{seconds:9.2f} s "


def format_result(r: Result) -> str:
    lines = [f"=== {r.name} ({r.dtype}) ==="]
    lines += [f"  note: {note}" for note in r.notes]
    lines.append("  Hessian timings (median of the timed calls after one warm-up call)")
    lines.append(f"    {'arg':3} {'mode':9} {'warm-up':>12} {'median':>12} {'runs':>5}")
    for arg in ARGS:
        for mode in MODES:
            t = r.timings.get((mode, arg))
            if t is None:
                lines.append(f"    {arg:3} {mode:9} {'n/a':>12} {'n/a':>12}")
            else:
                lines.append(
                    f"    {arg:3} {mode:9} {_ms(t.first_s):>12} {_ms(t.median_s):>12} {t.runs:5d}"
                )
    lines.append(
        f"  <δ, H δ>: Hessians vs finite differences (float64; value h={H_VALUE:g}, "
        f"gradient h={H_GRAD:g})"
    )
    lines.append(
        f"    {'arg':3} {'unrolled':>17} {'implicit':>17} {'FD value':>17} {'FD gradient':>17}"
    )
    for arg in ARGS:
        cells = []
        for mode in MODES:
            q = r.quadratic.get((mode, arg))
            cells.append(f"{q:17.12f}" if q is not None else f"{'n/a':>17}")
        lines.append(
            f"    {arg:3} {cells[0]} {cells[1]} {r.fd_value[arg]:17.12f} {r.fd_grad[arg]:17.12f}"
        )
    lines.append("  agreement (digits = -log10 relative difference)")
    for arg in ARGS:
        parts = []
        d = r.digits_unrolled_vs_implicit(arg)
        if d is not None:
            parts.append(f"unrolled vs implicit Hessian {d:5.1f}")
        for mode in r.modes:
            parts.append(f"{mode} <δ,Hδ> vs FD gradient {r.digits_vs_fd(mode, arg):5.1f}")
            parts.append(f"vs FD value {digits(r.quadratic[(mode, arg)], r.fd_value[arg]):4.1f}")
        lines.append(f"    {arg}: " + "; ".join(parts))
    lines.append(
        "  eigenvalues of the centred a-Hessian (seed: H - mean(H, axis=1)[:, None]; min on Σδ = 0)"
    )
    for mode in r.modes:
        e = r.eigen[mode]
        lines.append(
            f"    {mode:9} min {e['min']: .3e}  max {e['max']: .6f}  "
            f"min on Σδ=0 {e['tangent_min']: .6f}"
        )
    for (mode, arg), text in r.torch_func.items():
        lines.append(f"  torch.func.hessian ({mode}, {arg}): {text}")
    return "\n".join(lines)


def cross_backend(results: list[Result]) -> list[tuple]:
    """``(mode, arg, name1, name2, max|ΔH|, max|H|)`` for each pair sharing a mode (the
    ``a``-Hessians centred on both sides)."""
    rows = []
    for mode in MODES:
        for arg in ARGS:
            have = [r for r in results if (mode, arg) in r.hessians]
            for i, r1 in enumerate(have):
                for r2 in have[i + 1 :]:
                    h1 = comparable(arg, r1.hessians[(mode, arg)])
                    h2 = comparable(arg, r2.hessians[(mode, arg)])
                    rows.append(
                        (
                            mode,
                            arg,
                            r1.name,
                            r2.name,
                            float(np.max(np.abs(h1 - h2))),
                            float(np.max(np.abs(h2))),
                        )
                    )
    return rows


def format_cross(results: list[Result]) -> str:
    rows = cross_backend(results)
    if not rows:
        return "=== cross-backend: only one backend ==="
    lines = ["=== cross-backend max |H1 - H2| (a-Hessians centred: P H P) ==="]
    for mode, arg, n1, n2, diff, scale in rows:
        agree = -math.log10(diff / scale) if diff > 0 else 16.0
        lines.append(
            f"    {mode:9} {arg}  {n1:>6} vs {n2:<6} {diff:.2e}  (max|H| {scale:.3f}, "
            f"{agree:4.1f} digits)"
        )
    return "\n".join(lines)


def checks(results: list[Result]) -> list[tuple]:
    """``(description, digits, target)`` of the float64 targets."""
    out = []
    for r in results:
        for arg in ARGS:
            d = r.digits_unrolled_vs_implicit(arg)
            if d is not None:
                out.append((f"{r.name}: unrolled vs implicit Hessian, {arg}", d, DIGITS_HESSIAN))
            for mode in r.modes:
                out.append(
                    (
                        f"{r.name}: {mode} <δ,Hδ> vs gradient FD, {arg}",
                        r.digits_vs_fd(mode, arg),
                        DIGITS_QUADRATIC,
                    )
                )
    return out


def format_checks(results: list[Result], enforced: bool) -> tuple[str, bool]:
    rows = checks(results)
    ok = all(math.isfinite(d) and d >= target for _, d, target in rows)
    head = "=== float64 targets ===" if enforced else "=== targets (not enforced: float32) ==="
    lines = [head]
    for desc, d, target in rows:
        status = "ok" if (math.isfinite(d) and d >= target) else "FAIL"
        lines.append(f"    {desc:55} {d:5.1f} >= {target:.0f}  {status}")
    return "\n".join(lines), ok


def plot_hessians(results: list[Result]):
    """Figure (unrolled | implicit) for ``a`` (centred) and ``x`` (slice ``H[0, 0]``), from
    the JAX result, or the first one with unrolling. Returns a ``matplotlib`` Figure."""
    from matplotlib.figure import Figure

    with_unrolled = [r for r in results if "unrolled" in r.modes]
    if not with_unrolled:
        return None
    r = next((q for q in with_unrolled if q.name == "jax"), with_unrolled[0])
    fig = Figure(figsize=(12, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    for row, arg in enumerate(ARGS):
        for col, mode in enumerate(MODES):
            h = r.hessians[(mode, arg)]
            img = centre_two_sided(h) if arg == "a" else h[0, 0]
            ax = axes[row, col]
            im = ax.imshow(img, aspect="auto" if arg == "x" else "equal", cmap="viridis")
            what = "a (P H P)" if arg == "a" else "x (slice H[0, 0, :, :])"
            ax.set_title(f"{r.name}, {mode} Hessian w.r.t. {what}")
            ax.set_xlabel("j" if arg == "a" else "coordinate of x_j")
            ax.set_ylabel("i" if arg == "a" else "point j")
            fig.colorbar(im, ax=ax)
    return fig


# -- command line ---------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backends",
        default=",".join(installed_backends()),
        help="comma-separated subset of numpy,jax,torch (default: all installed)",
    )
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--figure", default=None, help="save the Hessian figure to this path")
    p.add_argument("--n", type=int, default=17)
    p.add_argument("--m", type=int, default=15)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="Sinkhorn threshold (default 1e-9 in float64, 1e-5 in float32)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed calls after a warm-up")
    p.add_argument("--time-budget", type=float, default=2.0, help="seconds per Hessian timing")
    p.add_argument("--fast-compile", action="store_true", help="JAX: XLA without optimisations")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--no-torch-func", action="store_true", help="skip torch.func.hessian")
    p.add_argument(
        "--cg-atol",
        type=float,
        default=None,
        help="absolute tolerance of the implicit solve's CG (otcore default: 0, rtol only)",
    )
    args = p.parse_args(argv)
    names = [s.strip() for s in args.backends.split(",") if s.strip()]
    unknown = [s for s in names if s not in BACKENDS]
    if unknown:
        p.error(f"unknown backends {unknown}; choose among {list(BACKENDS)}")
    missing = [s for s in names if s not in installed_backends()]
    if missing:
        p.error(f"not installed: {missing}")
    args.backends = names
    return args


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    args = parse_args(argv)
    setup = sample(args.n, args.m, args.d, args.seed)
    threshold = default_threshold(args.dtype) if args.threshold is None else args.threshold
    iters, converged = solve_iterations(setup, threshold)
    print(
        f"Sinkhorn divergence Hessians (OTT-JAX tutorial) with otcore {ot.__version__}: "
        f"n={args.n}, m={args.m}, d={args.d}, seed={args.seed}, {args.dtype}"
    )
    print(
        f"ε = {setup.epsilon:.6g} (0.05·std(C_xy) at the base point, held fixed); "
        f"threshold = {threshold:g}; solves (xy, xx, yy) converged={converged} in {iters} "
        "iterations (float64)"
    )
    results = []
    for name in args.backends:
        result = run_backend(
            name,
            setup,
            args.dtype,
            threshold,
            repeats=args.repeats,
            time_budget=args.time_budget,
            fast_compile=args.fast_compile,
            torch_threads=args.torch_threads,
            torch_func=not args.no_torch_func,
            cg_atol=args.cg_atol,
        )
        results.append(result)
        print(format_result(result), flush=True)
    print(format_cross(results))
    eff = epsilon_effect(setup)
    print(
        "=== why ε is held fixed (NumPy, float64) ===\n"
        f"    x: <δ, H δ> = {eff['quadratic']:.9f}; gradient FD of the seed's loss, whose "
        f"default ε is recomputed at x ± hδ: {eff['fd_grad_default_eps']:.9f} "
        f"({eff['digits']:.1f} digits): derivatives treat ε as a constant."
    )
    enforced = args.dtype == "float64"
    text, ok = format_checks(results, enforced)
    print(text)
    if args.figure:
        fig = plot_hessians(results)
        if fig is None:
            print("no backend with unrolling: no figure")
        else:
            fig.savefig(args.figure, dpi=100)
            print(f"figure saved to {args.figure}")
    if enforced and not ok:
        print("FAILED: float64 digit targets not met", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
