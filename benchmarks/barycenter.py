"""Fixed-support barycenter benchmark of otcore against POT and OTT-JAX (CPU).

Reference problem: ``n`` points ``x ~ U[0,1]^2`` (seeded), squared Euclidean cost
normalised so that its largest entry is 1 (``C = |x_i - x_j|² / max``), one absolute ε for
every library (default 0.01; POT's ``reg`` is the same number: its kernel is
``exp(-M/reg)``), ``k`` smooth random histograms on the points (sums of two Gaussian bumps
plus a floor of 1e-3 of the peak, columns normalised to 1), uniform weights. The cost
matrix is an input (built once, untimed); everything else (kernel or ``C/ε``, the loop,
the barycenter) is inside every timed call, for every library.

Every library runs exactly ``--iterations`` iterative-Bregman-projection steps (two
``n x n`` kernel products or log-sum-exps per histogram per step) from the same start:

* otcore: ``ot.barycenter(A, C, epsilon=ε, threshold=0, min_iterations=max_iterations=T,
  inner_iterations=10)``, ``lse_mode=True`` (log domain) and ``False`` (kernel);
  NumPy, PyTorch (eager) and JAX (the whole call in ``jax.jit``);
* POT: ``ot.bregman.barycenter(A, C, ε, w, method="sinkhorn_log" | "sinkhorn",
  numItermax=T, stopThr=0)`` on NumPy arrays and on torch tensors (POT's backend);
* OTT-JAX: ``FixedBarycenter(min_iterations=max_iterations=T, inner_iterations=10,
  lse_mode=...)`` on ``Geometry(cost_matrix=C, epsilon=ε)``, in ``jax.jit``, started from
  zero potentials (``dual_initialization=0``) like otcore and POT's log variant (OTT's
  own default start is Cuturi & Doucet's (3.6); POT's kernel variant always starts there,
  see the agreement column).

Optional grid row (``--grid 64``): the same barycenter of ``k`` images on the 64 x 64
grid of ``[0,1]^2`` (n = 4096): otcore's separable ``ot.Grid(shape=(64, 64),
scale_cost=2)`` (cost ``|x - y|² / 2``, largest entry 1) against otcore on the dense cost
of the same points, and POT's ``convolutional_barycenter2d`` (it blurs with
``exp(-|x - y|² / reg)`` on the same grid, so ``reg = 2ε``).

Timings are medians of ``--repeats`` calls after ``--warmup`` calls (which include
``jax.jit`` compilation), interleaved round-robin over the backends; JAX outputs are
waited for with ``jax.block_until_ready``. Each library's barycenter after the timed
calls is compared with the reference (POT's ``sinkhorn_log`` on NumPy) in float64.

Example::

    python benchmarks/barycenter.py                          # n in {1024, 4096}, k = 8
    python benchmarks/barycenter.py --sizes 512 --repeats 3 --iterations 20 --grid 0
    python benchmarks/barycenter.py --dtype float64 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import sys
import warnings
from pathlib import Path


def _early_thread_limit(argv):
    """``--threads N``: cap BLAS/OpenMP pools through the environment before NumPy (and
    its OpenBLAS) is imported; threadpoolctl, when installed, is applied again later."""
    for i, a in enumerate(argv):
        v = a.split("=", 1)[1] if a.startswith("--threads=") else None
        if a == "--threads" and i + 1 < len(argv):
            v = argv[i + 1]
        if v is not None and v.isdigit():
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, v)


if __name__ == "__main__":
    _early_thread_limit(sys.argv[1:])

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# timing, statistics and thread limits shared with the Sinkhorn benchmark
from sinkhorn import _limit_threads, _otcore, _stats, _time_round_robin  # noqa: E402

# Dense rows (n x n cost matrix).
DENSE_BACKENDS = (
    "otcore-numpy-lse",
    "otcore-numpy-kernel",
    "pot-numpy-log",
    "pot-numpy-kernel",
    "otcore-jax-lse",
    "otcore-jax-kernel",
    "ott-jax-lse",
    "ott-jax-kernel",
    "otcore-torch-lse",
    "otcore-torch-kernel",
    "pot-torch-log",
    "pot-torch-kernel",
)
# The grid row (separable kernel on an h x w grid).
GRID_BACKENDS = (
    "otcore-numpy-dense-lse",
    "otcore-numpy-dense-kernel",
    "otcore-numpy-grid-lse",
    "otcore-numpy-grid-kernel",
    "otcore-jax-grid-lse",
    "otcore-jax-grid-kernel",
    "otcore-torch-grid-lse",
    "otcore-torch-grid-kernel",
    "pot-numpy-conv-log",
    "pot-numpy-conv-kernel",
    "pot-torch-conv-log",
    "pot-torch-conv-kernel",
)
ALL_BACKENDS = DENSE_BACKENDS + GRID_BACKENDS
# Which baseline each otcore backend is compared with.
REFERENCE = {
    "otcore-numpy-lse": "pot-numpy-log",
    "otcore-numpy-kernel": "pot-numpy-kernel",
    "otcore-jax-lse": "ott-jax-lse",
    "otcore-jax-kernel": "ott-jax-kernel",
    "otcore-torch-lse": "pot-torch-log",
    "otcore-torch-kernel": "pot-torch-kernel",
    "otcore-numpy-grid-lse": "otcore-numpy-dense-lse",
    "otcore-numpy-grid-kernel": "otcore-numpy-dense-kernel",
    "otcore-jax-grid-lse": "otcore-numpy-dense-lse",
    "otcore-jax-grid-kernel": "otcore-numpy-dense-kernel",
    "otcore-torch-grid-lse": "otcore-numpy-dense-lse",
    "otcore-torch-grid-kernel": "otcore-numpy-dense-kernel",
    "pot-numpy-conv-log": "otcore-numpy-grid-lse",
    "pot-numpy-conv-kernel": "otcore-numpy-grid-kernel",
    "pot-torch-conv-log": "otcore-torch-grid-lse",
    "pot-torch-conv-kernel": "otcore-torch-grid-kernel",
}
# The barycenter every other one is compared with (first present).
AGREEMENT_REF = ("pot-numpy-log", "otcore-numpy-dense-lse", "otcore-numpy-lse")


class Skip(Exception):
    """A backend that cannot run here (missing package)."""


# -----------------------------------------------------------------------------------------
# The problem
# -----------------------------------------------------------------------------------------


def smooth_histograms(points, k, rng, dtype):
    """``(n, k)``: each column two Gaussian bumps (random centres in [0.15, 0.85]^2,
    widths 0.05-0.15) plus a floor of 1e-3 of the peak, normalised to sum 1.

    The entries are integer multiples of 2^-24 that add up to exactly 1: every partial sum
    is exact in float32, so each column sums to 1 in any order and precision (otcore checks
    equal column masses to 1e-5, and a float32 NumPy sum along the strided axis 0 of a
    normalised 4096 x 8 array is off by about that much)."""
    units = 2**24
    cols = []
    for _ in range(k):
        h = np.zeros(points.shape[0])
        for _ in range(2):
            c = rng.uniform(0.15, 0.85, size=points.shape[1])
            s = rng.uniform(0.05, 0.15)
            h += rng.uniform(0.5, 1.0) * np.exp(-np.sum((points - c) ** 2, 1) / (2 * s * s))
        h += 1e-3 * h.max()
        m = np.maximum(np.floor(h / h.sum() * units), 1.0)
        m[np.argmax(m)] += units - m.sum()
        cols.append(m / units)
    return np.stack(cols, 1).astype(dtype)


def sqeuclidean_max1(x):
    """``|x_i - x_j|²`` divided by its largest entry (float64 computation)."""
    x = x.astype(np.float64)
    sq = np.sum(x * x, 1)
    C = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(C, 0.0)
    return C / C.max()


def dense_problem(n, k, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 2))
    return {"A": smooth_histograms(x, k, rng, dtype), "C": sqeuclidean_max1(x).astype(dtype)}


def grid_problem(side, k, seed, dtype):
    """``side x side`` grid of [0,1]^2 in C order (row index = first coordinate), as
    ``ot.Grid(shape=(side, side))`` and POT's images ``(k, side, side)`` lay it out."""
    rng = np.random.default_rng(seed + 1)
    t = np.linspace(0.0, 1.0, side)
    pts = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    A = smooth_histograms(pts, k, rng, dtype)
    return {
        "A": A,
        "C": sqeuclidean_max1(pts).astype(dtype),  # largest |x - y|² is 2
        "images": np.ascontiguousarray(A.T.reshape(k, side, side)),
        "shape": (side, side),
    }


# -----------------------------------------------------------------------------------------
# Backends: make(problem, args) converts the inputs once (untimed) and returns a callable
# that runs one solve and returns the barycenter with every computation finished.
# -----------------------------------------------------------------------------------------


def _to_numpy(v):
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu()
    return np.asarray(v, dtype=np.float64)


def _pot():
    try:
        import ot

        return ot
    except ImportError as e:
        raise Skip(f"POT not importable: {e}") from None


_THREADS = None


def _torch():
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch not importable: {e}") from None
    if _THREADS is not None:
        torch.set_num_threads(_THREADS)
    return torch


def _jax():
    try:
        import jax
    except ImportError as e:
        raise Skip(f"jax not importable: {e}") from None
    return jax


def _inner(iters):
    """Iterations between error checks: 10, or a divisor of a short fixed count."""
    return next(d for d in (10, 5, 4, 3, 2, 1) if iters % d == 0)


def _otcore_kwargs(iters, lse):
    # threshold=0 and min_iterations == max_iterations: exactly `iters` iterations.
    return dict(
        lse_mode=lse,
        threshold=0.0,
        min_iterations=iters,
        max_iterations=iters,
        inner_iterations=_inner(iters),
    )


def _otcore_geometry(ot, prob, args, grid, like):
    if grid:
        # |x - y|² / 2 on linspace(0, 1, side)²: largest entry 1, as the dense cost.
        return ot.Grid(shape=prob["shape"], epsilon=args.epsilon, scale_cost=2.0, like=like)
    return None


def make_otcore_eager(xp_name, lse, grid=False):
    def make(prob, args, iters):
        ot = _otcore()
        A, C = prob["A"], prob["C"]
        if xp_name == "torch":
            torch = _torch()
            A, C = torch.as_tensor(A), torch.as_tensor(C)
        kw = _otcore_kwargs(iters, lse)
        eps = args.epsilon

        def run():
            geom = _otcore_geometry(ot, prob, args, grid, A)
            if geom is None:
                return ot.barycenter(A, C, epsilon=eps, **kw)
            return ot.barycenter(A, geom, **kw)

        def check():
            geom = _otcore_geometry(ot, prob, args, grid, A)
            if geom is None:
                out = ot.barycenter(A, C, epsilon=eps, return_output=True, **kw)
            else:
                out = ot.barycenter(A, geom, return_output=True, **kw)
            return int(_to_numpy(out.n_iters))

        run.n_iters = check
        return run

    return make


def make_otcore_jax(lse, grid=False):
    def make(prob, args, iters):
        ot = _otcore()
        jax = _jax()
        A = jax.device_put(prob["A"])
        C = jax.device_put(prob["C"])
        kw = _otcore_kwargs(iters, lse)
        eps = args.epsilon

        def solve(A, C, ret):
            geom = _otcore_geometry(ot, prob, args, grid, A)
            if geom is None:
                out = ot.barycenter(A, C, epsilon=eps, return_output=ret, **kw)
            else:
                out = ot.barycenter(A, geom, return_output=ret, **kw)
            return out.n_iters if ret else out

        fn = jax.jit(lambda A, C: solve(A, C, False))

        def run():
            return jax.block_until_ready(fn(A, C))

        run.n_iters = lambda: int(jax.jit(lambda A, C: solve(A, C, True))(A, C))
        return run

    return make


def make_ott(lse):
    def make(prob, args, iters):
        jax = _jax()
        try:
            import jax.numpy as jnp
            from ott.geometry import geometry
            from ott.problems.linear import barycenter_problem
            from ott.solvers.linear import discrete_barycenter
        except ImportError as e:
            raise Skip(f"ott-jax not importable: {e}") from None
        a = jax.device_put(np.ascontiguousarray(prob["A"].T))  # OTT: (k, n)
        C = jax.device_put(prob["C"])
        eps = args.epsilon
        solver = discrete_barycenter.FixedBarycenter(
            threshold=0.0,
            min_iterations=iters,  # == max_iterations: a lax.scan of exactly `iters` steps
            max_iterations=iters,
            inner_iterations=_inner(iters),
            lse_mode=lse,
        )

        def solve(a, C):
            geom = geometry.Geometry(cost_matrix=C, epsilon=eps)
            problem = barycenter_problem.FixedBarycenterProblem(geom, a)
            # zero potentials / unit scalings, as otcore and POT's log variant
            init = jnp.zeros((a.shape[0], C.shape[1]), dtype=a.dtype)
            return solver(problem, dual_initialization=init).histogram

        fn = jax.jit(solve)

        def run():
            return jax.block_until_ready(fn(a, C))

        return run

    return make


def make_pot(xp_name, method):
    def make(prob, args, iters):
        ot = _pot()
        A, C = prob["A"], prob["C"]
        if xp_name == "torch":
            torch = _torch()
            A, C = torch.as_tensor(A), torch.as_tensor(C)
        eps = args.epsilon
        last = {}

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b, log = ot.bregman.barycenter(
                    A, C, eps, method=method, numItermax=iters, stopThr=0.0, log=True
                )
            last["niter"] = log["niter"] + 1  # POT's niter: index of the last iteration
            return b

        run.n_iters = lambda: last.get("niter")
        return run

    return make


def make_pot_conv(xp_name, method):
    def make(prob, args, iters):
        ot = _pot()
        if not hasattr(ot.bregman, "convolutional_barycenter2d"):
            raise Skip("this POT has no convolutional_barycenter2d")
        imgs = prob["images"]
        if xp_name == "torch":
            imgs = _torch().as_tensor(imgs)
        reg = 2.0 * args.epsilon  # POT blurs with exp(-|x-y|²/reg); our cost is |x-y|²/2
        last = {}

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b, log = ot.bregman.convolutional_barycenter2d(
                    imgs, reg, method=method, numItermax=iters, stopThr=0.0, log=True
                )
            last["niter"] = log["niter"] + 1
            return b.reshape(-1)

        run.n_iters = lambda: last.get("niter")
        return run

    return make


MAKERS = {
    "otcore-numpy-lse": make_otcore_eager("numpy", True),
    "otcore-numpy-kernel": make_otcore_eager("numpy", False),
    "otcore-torch-lse": make_otcore_eager("torch", True),
    "otcore-torch-kernel": make_otcore_eager("torch", False),
    "otcore-jax-lse": make_otcore_jax(True),
    "otcore-jax-kernel": make_otcore_jax(False),
    "ott-jax-lse": make_ott(True),
    "ott-jax-kernel": make_ott(False),
    "pot-numpy-log": make_pot("numpy", "sinkhorn_log"),
    "pot-numpy-kernel": make_pot("numpy", "sinkhorn"),
    "pot-torch-log": make_pot("torch", "sinkhorn_log"),
    "pot-torch-kernel": make_pot("torch", "sinkhorn"),
    "otcore-numpy-dense-lse": make_otcore_eager("numpy", True),
    "otcore-numpy-dense-kernel": make_otcore_eager("numpy", False),
    "otcore-numpy-grid-lse": make_otcore_eager("numpy", True, grid=True),
    "otcore-numpy-grid-kernel": make_otcore_eager("numpy", False, grid=True),
    "otcore-jax-grid-lse": make_otcore_jax(True, grid=True),
    "otcore-jax-grid-kernel": make_otcore_jax(False, grid=True),
    "otcore-torch-grid-lse": make_otcore_eager("torch", True, grid=True),
    "otcore-torch-grid-kernel": make_otcore_eager("torch", False, grid=True),
    "pot-numpy-conv-log": make_pot_conv("numpy", "sinkhorn_log"),
    "pot-numpy-conv-kernel": make_pot_conv("numpy", "sinkhorn"),
    "pot-torch-conv-log": make_pot_conv("torch", "sinkhorn_log"),
    "pot-torch-conv-kernel": make_pot_conv("torch", "sinkhorn"),
}


# -----------------------------------------------------------------------------------------
# Measurement
# -----------------------------------------------------------------------------------------


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run_row(label, n, prob, names, args, iters, log):
    makers, skipped = {}, {}
    for name in names:
        try:
            makers[name] = MAKERS[name](prob, args, iters)
        except Skip as e:
            skipped[name] = str(e)
    for name, why in skipped.items():
        log(f"  skip {name}: {why}")
    load = _loadavg()
    log(f"  {label}: {iters} iterations, load {load}")
    times, cpu, outs, failed = _time_round_robin(makers, args.warmup, args.repeats, log)
    res = {
        "row": label,
        "n": n,
        "k": args.k,
        "skipped": skipped,
        "iterations": iters,
        "load_before": load,
        "load_after": _loadavg(),
        "backends": {},
    }
    bars = {k: _to_numpy(v) for k, v in outs.items() if k not in failed}
    ref = next((r for r in AGREEMENT_REF if r in bars), next(iter(bars), None))
    res["agreement_reference"] = ref
    for name in makers:
        if name in failed:
            res["backends"][name] = {"error": failed[name]}
            continue
        st = _stats(times[name], cpu[name])
        st["ms_per_iter"] = 1e3 * st["median_s"] / iters
        n_iters = getattr(makers[name], "n_iters", None)
        try:
            st["n_iters"] = n_iters() if n_iters is not None else iters
        except Exception as e:
            st["n_iters"] = None
            log(f"    n_iters of {name} failed: {e}")
        b = bars[name]
        st["mass"] = float(b.sum())
        st["max_abs_diff_vs_ref"] = float(np.max(np.abs(b - bars[ref])))
        st["rel_diff_vs_ref"] = st["max_abs_diff_vs_ref"] / float(np.max(np.abs(bars[ref])))
        res["backends"][name] = st
    return res


# -----------------------------------------------------------------------------------------
# Reporting
# -----------------------------------------------------------------------------------------


def _ratio(res, name, key="median_s"):
    ref = REFERENCE.get(name)
    mine, theirs = res["backends"].get(name, {}), res["backends"].get(ref, {}) if ref else {}
    if key not in mine or key not in theirs:
        return None, ref
    return mine[key] / theirs[key], ref


def print_tables(results, args):
    threads = "library defaults" if args.threads is None else str(args.threads)
    print()
    print(
        f"Fixed-support barycenter, k={args.k}, iterations {_iters_text(results)}, "
        f"{args.dtype}, ε={args.epsilon:g} (cost max 1), CPU, threads: {threads}; times: "
        f"median of {args.repeats} calls (IQR), process CPU time"
    )
    head = (
        f"{'row':<10} {'backend':<26} {'total ms':>9} {'IQR ms':>17} {'ms/iter':>9} "
        f"{'cpu ms':>9} {'iters':>5}  {'ratio (wall, cpu)':<40} {'max|Δb|':>8} {'rel':>8}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for name, st in res["backends"].items():
            if "error" in st:
                print(f"{res['row']:<10} {name:<26} failed: {st['error']}")
                continue
            ratio, ref = _ratio(res, name)
            cpu_ratio, _ = _ratio(res, name, "cpu_median_s")
            ratio_s = f"{ratio:.2f}x, {cpu_ratio:.2f}x {ref}" if ratio is not None else ""
            iqr = f"{1e3 * st['q1_s']:.1f}-{1e3 * st['q3_s']:.1f}"
            it = "-" if st["n_iters"] is None else str(st["n_iters"])
            print(
                f"{res['row']:<10} {name:<26} {1e3 * st['median_s']:9.1f} {iqr:>17} "
                f"{st['ms_per_iter']:9.3f} {1e3 * st['cpu_median_s']:9.1f} {it:>5}  "
                f"{ratio_s:<40} {st['max_abs_diff_vs_ref']:8.1e} {st['rel_diff_vs_ref']:8.1e}"
            )
        print(
            f"{'':<10} barycenters compared with {res['agreement_reference']} "
            f"(max|Δb|: largest absolute difference; rel: divided by its largest entry); "
            f"load average after: {res['load_after']}"
        )
        print("-" * len(head))
    print(
        "ratio: median wall time, and median process CPU time, of the otcore backend / its "
        "reference; < 1: otcore faster."
    )
    _print_markdown(results, args)


def _cell(res, name):
    st = res["backends"].get(name)
    if st is None:
        return "-"
    if "error" in st:
        return "failed"
    return f"{1e3 * st['median_s']:.0f} ({1e3 * st['cpu_median_s']:.0f})"


def _rcell(res, name):
    r, _ = _ratio(res, name)
    c, _ = _ratio(res, name, "cpu_median_s")
    return "-" if r is None else f"{r:.2f} ({c:.2f})"


def _print_markdown(results, args):
    dense = [r for r in results if r["row"].startswith("dense")]
    grid = [r for r in results if r["row"].startswith("grid")]
    if dense:
        print(
            f"\nMarkdown ({args.dtype}, k = {args.k}, ms per call of T iterations, wall (CPU); "
            f"threads: {args.threads or 'default'}):\n"
        )
        cols = [
            ("otcore-np lse", "otcore-numpy-lse"),
            ("otcore-np kernel", "otcore-numpy-kernel"),
            ("POT-np log", "pot-numpy-log"),
            ("POT-np sinkhorn", "pot-numpy-kernel"),
            ("otcore-jax lse", "otcore-jax-lse"),
            ("otcore-jax kernel", "otcore-jax-kernel"),
            ("OTT lse", "ott-jax-lse"),
            ("OTT kernel", "ott-jax-kernel"),
            ("otcore-torch lse", "otcore-torch-lse"),
            ("otcore-torch kernel", "otcore-torch-kernel"),
            ("POT-torch log", "pot-torch-log"),
            ("POT-torch sinkhorn", "pot-torch-kernel"),
        ]
        print("| n | T | " + " | ".join(c for c, _ in cols) + " |")
        print("|---" * (len(cols) + 2) + "|")
        for res in dense:
            cells = " | ".join(_cell(res, b) for _, b in cols)
            print(f"| {res['n']} | {res['iterations']} | {cells} |")
        rcols = [
            ("np lse / POT log", "otcore-numpy-lse"),
            ("np kernel / POT sinkhorn", "otcore-numpy-kernel"),
            ("jax lse / OTT lse", "otcore-jax-lse"),
            ("jax kernel / OTT kernel", "otcore-jax-kernel"),
            ("torch lse / POT log", "otcore-torch-lse"),
            ("torch kernel / POT sinkhorn", "otcore-torch-kernel"),
        ]
        print("\n| n | " + " | ".join(c for c, _ in rcols) + " |")
        print("|---" * (len(rcols) + 1) + "|")
        for res in dense:
            print(f"| {res['n']} | " + " | ".join(_rcell(res, b) for _, b in rcols) + " |")
    for res in grid:
        print(
            f"\nMarkdown, {res['row']} (n = {res['n']}, {res['iterations']} iterations, "
            f"ms per call, wall (CPU)):\n"
        )
        print("| backend | dense | Grid (separable) | POT convolutional_barycenter2d |")
        print("|---|---|---|---|")
        for xp in ("numpy", "jax", "torch"):
            for mode, pot in (("lse", "log"), ("kernel", "kernel")):
                dense_name = f"otcore-{xp}-dense-{mode}"
                pot_name = f"pot-{xp}-conv-{pot}"
                print(
                    f"| {xp} {mode} | {_cell(res, dense_name)} | "
                    f"{_cell(res, f'otcore-{xp}-grid-{mode}')} | {_cell(res, pot_name)} |"
                )


def _iters_text(results):
    return ", ".join(f"{r['iterations']} ({r['row']})" for r in results)


def _iters_for(args, i):
    return args.iterations[min(i, len(args.iterations) - 1)]


def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("otcore", "jax", "jaxlib", "torch", "ott", "ot", "scipy"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:
            pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="n (points)")
    p.add_argument("--k", type=int, default=8, help="number of input histograms (default 8)")
    p.add_argument("--epsilon", type=float, default=0.01, help="absolute ε (default 0.01)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=[100],
        help="fixed iteration count: one for all sizes, or one per size (default 100); "
        "the grid row uses the last one",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (jit compile)")
    p.add_argument(
        "--grid",
        type=int,
        default=64,
        help="side of the grid row (n = side²; default 64; 0: no grid row)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        choices=ALL_BACKENDS,
        default=list(ALL_BACKENDS),
        metavar="B",
        help="subset of: " + ", ".join(ALL_BACKENDS),
    )
    p.add_argument(
        "--threads",
        type=int,
        help="limit every library to this many CPU threads (torch.set_num_threads, XLA "
        "intra-op threads, BLAS via threadpoolctl); default: each library's own default",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json",
        metavar="PATH",
        default=str(HERE / "results" / "barycenter_cpu.json"),
        help="results file (default benchmarks/results/barycenter_cpu.json); runs with "
        "another dtype/thread setting already in it are kept",
    )
    p.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    p.add_argument(
        "--report",
        action="store_true",
        help="run nothing: print the tables of the --json file's run for --dtype/--threads",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first JAX call compiles)")
    if len(args.iterations) not in (1, len(args.sizes)):
        p.error("--iterations takes one count, or one per size")

    key = f"{args.dtype}-threads{args.threads if args.threads is not None else 'default'}"
    if args.report:
        results = json.loads(Path(args.json).read_text())["runs"][key]["results"]
        order = {f"dense-{n}": i for i, n in enumerate(args.sizes)}
        results.sort(key=lambda r: (r["row"].startswith("grid"), order.get(r["row"], r["n"])))
        print_tables(results, args)
        return
    if args.threads is not None:
        _limit_threads(args.threads)
    if args.dtype == "float64":
        try:
            import jax

            jax.config.update("jax_enable_x64", True)
        except ImportError:
            pass

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_start": _loadavg(),
        "versions": _versions(),
        "args": vars(args),
    }
    dtype = np.dtype(args.dtype)
    results = []
    dense_names = [b for b in args.backends if b in DENSE_BACKENDS]
    grid_names = [b for b in args.backends if b in GRID_BACKENDS]
    if dense_names:
        for i, n in enumerate(args.sizes):
            prob = dense_problem(n, args.k, args.seed, dtype)
            iters = _iters_for(args, i)
            results.append(run_row(f"dense-{n}", n, prob, dense_names, args, iters, log))
    if args.grid and grid_names:
        prob = grid_problem(args.grid, args.k, args.seed, dtype)
        label = f"grid-{args.grid}x{args.grid}"
        iters = args.iterations[-1]
        results.append(run_row(label, args.grid**2, prob, grid_names, args, iters, log))
    meta["load_end"] = _loadavg()
    print_tables(results, args)

    if not args.no_json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = {}
        if path.exists():
            try:
                runs = json.loads(path.read_text()).get("runs", {})
            except (ValueError, AttributeError):
                runs = {}
        # rows (dense-<n>, grid-<side>) of an earlier run with the same key are replaced,
        # the others kept: sizes can be run in separate invocations
        old = runs.get(key, {}).get("results", [])
        rows = {r["row"]: r for r in old if isinstance(r, dict) and "row" in r}
        rows.update({r["row"]: dict(r, meta=meta) for r in results})
        runs[key] = {"meta": meta, "results": list(rows.values())}
        path.write_text(json.dumps({"runs": runs}, indent=2, default=str))
        log(f"wrote {path} (run {key!r})")


if __name__ == "__main__":
    main()
