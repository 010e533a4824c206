"""Forward-pass benchmark of otcore's Sinkhorn against OTT-JAX and POT (DESIGN.md §6).

Reference problem: ``x, y ~ U[0,1]^d`` (seeded), ``n = m = N`` points, uniform weights,
squared Euclidean cost, one absolute ε for every library, log-domain (LSE) updates, the
cost matrix materialised once per solve (its construction from the points is inside every
timed call, for every library).

Two modes, all libraries timed in one process on the same inputs:

* ``fixed``: exactly ``--iters`` Sinkhorn iterations (otcore/OTT:
  ``min_iterations = max_iterations = iters``, ``threshold = 0``; POT:
  ``numItermax = iters``, ``stopThr = 0``). Reported as ms per iteration (total time of
  the call divided by ``iters``). The potentials at the end are compared between
  libraries (they run the same g-then-f updates, so they agree up to rounding).
* ``e2e``: run to ``--threshold`` on the column-marginal error (norm ``--norm-error``
  for otcore/OTT; POT always uses the 2-norm), reporting the time and iteration count.

Timings are medians of ``--repeats`` calls after ``--warmup`` calls (which include
``jax.jit`` compilation); repeats are interleaved round-robin over the backends so that
machine drift affects every backend alike. JAX results are synchronised with
``jax.block_until_ready``, CUDA ones with ``torch.cuda.synchronize`` /
``cupy.cuda.Device().synchronize()``.

Example::

    python benchmarks/sinkhorn.py                       # CPU, N in {1024, 4096}, float32
    python benchmarks/sinkhorn.py --sizes 512 --repeats 3 --mode fixed
    python benchmarks/sinkhorn.py --gpu --sizes 4096 16384
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

ALL_BACKENDS = (
    "otcore-numpy",
    "otcore-jax",
    "otcore-torch",
    "otcore-cupy",
    "ott-jax",
    "pot-numpy",
    "pot-torch",
    "pot-cupy",
)
# Which baseline each otcore backend is compared with.
REFERENCE = {
    "otcore-jax": "ott-jax",
    "otcore-numpy": "pot-numpy",
    "otcore-torch": "pot-torch",
    "otcore-cupy": "pot-cupy",
}


class Skip(Exception):
    """A backend that cannot run here (missing package or device)."""


# -----------------------------------------------------------------------------------------
# Backends. Each one converts the inputs once (untimed) and returns callables that run a
# solve and return (f, g, n_iters) with every device computation finished.
# -----------------------------------------------------------------------------------------


class Backend:
    name = "?"

    def __init__(self, x, y, eps, dtype, gpu):
        self.eps = eps
        self.dtype = dtype
        self.gpu = gpu
        self.setup(x, y)

    def setup(self, x, y):
        raise NotImplementedError

    def fixed(self, iters):
        """A zero-argument callable running exactly ``iters`` iterations."""
        raise NotImplementedError

    def e2e(self, threshold, max_iters, norm_error):
        """A zero-argument callable running to ``threshold``."""
        raise NotImplementedError

    def native_cost(self, iters):
        """The library's own ``reg_ot_cost`` after ``iters`` iterations (or ``None``)."""
        return None

    def sync(self, out):
        return out


def _to_numpy(v):
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu()
    if hasattr(v, "get") and type(v).__module__.startswith("cupy"):
        v = v.get()
    return np.asarray(v, dtype=np.float64)


def _otcore():
    try:
        return importlib.import_module("otcore")
    except ImportError as e:
        raise Skip(f"otcore not importable: {e}") from None


def _otcore_fixed_solver(ot, iters):
    inner = 10 if iters % 10 == 0 else 1
    # threshold=0 and min_iterations == max_iterations: exactly `iters` iterations.
    return ot.Sinkhorn(
        threshold=0.0, min_iterations=iters, max_iterations=iters, inner_iterations=inner
    )


def _otcore_arrays(framework, device, *arrays):
    """``arrays`` as the framework's arrays, through otcore's backend registry."""
    from otcore.backends import adapter_by_name

    try:
        xp = adapter_by_name(framework).xp
    except ImportError as e:
        raise Skip(f"{framework} not importable: {e}") from None
    return tuple(xp.asarray(a, device=device) for a in arrays)


class _OtcoreEager(Backend):
    """otcore on an eager backend (NumPy, PyTorch, CuPy): a plain Python call."""

    framework = "numpy"
    device = None

    def setup(self, x, y):
        self.ot = _otcore()
        self.x, self.y = _otcore_arrays(self.framework, self.device, x, y)

    def _solve(self, solver):
        ot = self.ot
        geom = ot.PointCloud(self.x, self.y, epsilon=self.eps)
        return solver(ot.LinearProblem(geom))

    def _runner(self, solver):
        def run():
            out = self._solve(solver)
            self._last = out
            return self.sync((out.f, out.g, out.n_iters))

        return run

    def fixed(self, iters):
        return self._runner(_otcore_fixed_solver(self.ot, iters))

    def e2e(self, threshold, max_iters, norm_error):
        solver = self.ot.Sinkhorn(
            threshold=threshold, max_iterations=max_iters, norm_error=norm_error
        )
        return self._runner(solver)

    def native_cost(self, iters):
        return float(_to_numpy(self._solve(_otcore_fixed_solver(self.ot, iters)).reg_ot_cost))


class OtcoreNumpy(_OtcoreEager):
    name = "otcore-numpy"

    def setup(self, x, y):
        if self.gpu:
            raise Skip("CPU backend (not run with --gpu)")
        super().setup(x, y)


class OtcoreTorch(_OtcoreEager):
    name = "otcore-torch"
    framework = "torch"

    def setup(self, x, y):
        self.torch, self.device = _torch(self.gpu)
        super().setup(x, y)

    def sync(self, out):
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return out


class OtcoreCupy(_OtcoreEager):
    name = "otcore-cupy"
    framework = "cupy"

    def setup(self, x, y):
        if not self.gpu:
            raise Skip("GPU backend (run with --gpu)")
        self.cp = _cupy()
        super().setup(x, y)

    def sync(self, out):
        self.cp.cuda.Device().synchronize()
        return out


class OtcoreJax(Backend):
    name = "otcore-jax"

    def setup(self, x, y):
        self.ot = _otcore()
        self.jax = _jax(self.gpu)
        self.x, self.y = _otcore_arrays("jax", None, x, y)

    def _jit(self, solver, with_cost=False):
        ot, eps = self.ot, self.eps

        def run(x, y):
            out = solver(ot.LinearProblem(ot.PointCloud(x, y, epsilon=eps)))
            if with_cost:
                return out.reg_ot_cost
            return out.f, out.g, out.n_iters

        fn = self.jax.jit(run)
        return lambda: self.jax.block_until_ready(fn(self.x, self.y))

    def fixed(self, iters):
        return self._jit(_otcore_fixed_solver(self.ot, iters))

    def e2e(self, threshold, max_iters, norm_error):
        return self._jit(
            self.ot.Sinkhorn(threshold=threshold, max_iterations=max_iters, norm_error=norm_error)
        )

    def native_cost(self, iters):
        return float(self._jit(_otcore_fixed_solver(self.ot, iters), with_cost=True)())


class OttJax(Backend):
    """OTT-JAX, jitted, on a materialised cost matrix (``Geometry(cost_matrix=...)``)."""

    name = "ott-jax"

    def setup(self, x, y):
        self.jax = _jax(self.gpu)
        try:
            from ott.geometry import geometry, pointcloud
            from ott.problems.linear import linear_problem
            from ott.solvers.linear import sinkhorn
        except ImportError as e:
            raise Skip(f"ott-jax not importable: {e}") from None
        self.mods = (geometry, pointcloud, linear_problem, sinkhorn)
        self.x, self.y = self.jax.device_put(x), self.jax.device_put(y)

    def _jit(self, solver, with_cost=False):
        geometry, pointcloud, linear_problem, _ = self.mods
        eps = self.eps

        def run(x, y):
            cost = pointcloud.PointCloud(x, y).cost_matrix  # squared Euclidean
            geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
            out = solver(linear_problem.LinearProblem(geom))
            if with_cost:
                return out.reg_ot_cost
            return out.f, out.g, out.n_iters

        fn = self.jax.jit(run)
        return lambda: self.jax.block_until_ready(fn(self.x, self.y))

    def _fixed_solver(self, iters):
        inner = 10 if iters % 10 == 0 else 1
        return self.mods[3].Sinkhorn(
            threshold=0.0, min_iterations=iters, max_iterations=iters, inner_iterations=inner
        )

    def fixed(self, iters):
        return self._jit(self._fixed_solver(iters))

    def e2e(self, threshold, max_iters, norm_error):
        return self._jit(
            self.mods[3].Sinkhorn(
                threshold=threshold, max_iterations=max_iters, norm_error=norm_error
            )
        )

    def native_cost(self, iters):
        return float(self._jit(self._fixed_solver(iters), with_cost=True)())


class _Pot(Backend):
    """POT's ``ot.bregman.sinkhorn_log`` (cost from ``ot.dist`` inside the timed call)."""

    def _pot(self):
        try:
            import ot

            return ot
        except ImportError as e:
            raise Skip(f"POT not importable: {e}") from None

    def _runner(self, iters, thr):
        ot, eps = self.pot, self.eps

        def run():
            cost = ot.dist(self.x, self.y)  # squared Euclidean
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, log = ot.bregman.sinkhorn_log(
                    self.a, self.b, cost, eps, numItermax=iters, stopThr=thr, log=True
                )
            # POT's log["niter"] is the index of the last iteration run.
            return self.sync((eps * log["log_u"], eps * log["log_v"], log["niter"] + 1))

        return run

    def fixed(self, iters):
        return self._runner(iters, 0.0)

    def e2e(self, threshold, max_iters, norm_error):
        return self._runner(max_iters, threshold)


class PotNumpy(_Pot):
    name = "pot-numpy"

    def setup(self, x, y):
        if self.gpu:
            raise Skip("CPU backend (not run with --gpu)")
        self.pot = self._pot()
        self.x, self.y = x, y
        n, m = x.shape[0], y.shape[0]
        self.a = np.full(n, 1.0 / n, dtype=x.dtype)
        self.b = np.full(m, 1.0 / m, dtype=x.dtype)


class PotTorch(_Pot):
    name = "pot-torch"

    def setup(self, x, y):
        self.pot = self._pot()
        self.torch, self.device = _torch(self.gpu)
        t = self.torch
        self.x = t.as_tensor(x, device=self.device)
        self.y = t.as_tensor(y, device=self.device)
        n, m = x.shape[0], y.shape[0]
        self.a = t.full((n,), 1.0 / n, dtype=self.x.dtype, device=self.device)
        self.b = t.full((m,), 1.0 / m, dtype=self.x.dtype, device=self.device)

    def sync(self, out):
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return out


class PotCupy(_Pot):
    name = "pot-cupy"

    def setup(self, x, y):
        if not self.gpu:
            raise Skip("GPU backend (run with --gpu)")
        self.pot = self._pot()
        cp = self.cp = _cupy()
        self.x, self.y = cp.asarray(x), cp.asarray(y)
        n, m = x.shape[0], y.shape[0]
        self.a = cp.full(n, 1.0 / n, dtype=x.dtype)
        self.b = cp.full(m, 1.0 / m, dtype=x.dtype)

    def sync(self, out):
        self.cp.cuda.Device().synchronize()
        return out


BACKEND_CLASSES = {
    c.name: c
    for c in (OtcoreNumpy, OtcoreJax, OtcoreTorch, OtcoreCupy, OttJax, PotNumpy, PotTorch, PotCupy)
}


_THREADS = None


def _limit_threads(n):
    """Cap the CPU threads of every library (call before JAX is imported)."""
    global _THREADS
    _THREADS = n
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen={'false' if n == 1 else 'true'} "
        f"intra_op_parallelism_threads={n}"
    ).strip()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def _torch(gpu):
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch not importable: {e}") from None
    if _THREADS is not None:
        torch.set_num_threads(_THREADS)
    if gpu:
        if not torch.cuda.is_available():
            raise Skip("torch has no CUDA device")
        return torch, "cuda"
    return torch, "cpu"


def _jax(gpu):
    try:
        import jax
    except ImportError as e:
        raise Skip(f"jax not importable: {e}") from None
    if gpu and jax.default_backend() == "cpu":
        raise Skip("jax has no GPU backend")
    return jax


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise Skip(f"cupy not importable: {e}") from None
    return cupy


# -----------------------------------------------------------------------------------------
# Measurement
# -----------------------------------------------------------------------------------------


def _time_round_robin(runners, warmup, repeats, log):
    """Median-able timings: ``warmup`` untimed calls each, then ``repeats`` rounds."""
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    outs = {}
    failed = {}
    for name, run in runners.items():
        try:
            t0 = time.perf_counter()
            for _ in range(warmup):
                outs[name] = run()
            log(f"    warm-up {name}: {time.perf_counter() - t0:.2f} s")
        except Exception as e:  # a backend failing must not stop the others
            failed[name] = f"{type(e).__name__}: {e}"
            log(f"    {name} FAILED: {failed[name]}")
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
    names = [n for n in runners if n not in failed]
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            outs[name] = runners[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return times, cpu, outs, failed


def _stats(ts, cpu):
    q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) >= 2 else [ts[0]] * 3
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "q1_s": q[0],
        "q3_s": q[2],
        "times_s": ts,
        "cpu_median_s": statistics.median(cpu),
        "cpu_times_s": cpu,
    }


def reg_ot_cost_f64(x, y, eps, f, g):
    """KL-regularised cost ``<a, f - ε log a> + <b, g - ε log b> + ε(1 - ΣP)`` in float64.

    Same convention as ``otcore``'s and OTT's ``reg_ot_cost`` (uniform weights,
    ``P_ij = exp((f_i + g_j - C_ij) / ε)``), evaluated identically for every library.
    """
    x, y = x.astype(np.float64), y.astype(np.float64)
    n, m = x.shape[0], y.shape[0]
    cost = np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2.0 * x @ y.T
    np.maximum(cost, 0.0, out=cost)
    cost -= f[:, None]
    cost -= g[None, :]
    cost /= -eps
    mass = float(np.sum(np.exp(cost)))
    return float(np.mean(f) + math.log(n) * eps + np.mean(g) + math.log(m) * eps + eps * (1 - mass))


def _potential_gap(f, g, f_ref, g_ref):
    """``max |f - f_ref - c|, |g - g_ref + c|`` with the best constant shift ``c``."""
    c = float(np.mean(f - f_ref) - np.mean(g - g_ref)) / 2.0
    return float(max(np.max(np.abs(f - f_ref - c)), np.max(np.abs(g - g_ref + c))))


def run_size(n, args, log):
    rng = np.random.default_rng(args.seed)
    dtype = np.dtype(args.dtype)
    x = rng.uniform(size=(n, args.dim)).astype(dtype)
    y = rng.uniform(size=(n, args.dim)).astype(dtype)
    backends, skipped = {}, {}
    for name in args.backends:
        try:
            backends[name] = BACKEND_CLASSES[name](x, y, args.epsilon, dtype, args.gpu)
        except Skip as e:
            skipped[name] = str(e)
    for name, why in skipped.items():
        log(f"  skip {name}: {why}")
    res = {"n": n, "skipped": skipped, "fixed": {}, "e2e": {}, "check": {}}

    if args.mode in ("fixed", "both"):
        log(f"  N={n}: fixed count ({args.iters} iterations)")
        runners = {k: b.fixed(args.iters) for k, b in backends.items()}
        times, cpu, outs, failed = _time_round_robin(runners, args.warmup, args.repeats, log)
        for k in runners:
            if k in failed:
                res["fixed"][k] = {"error": failed[k]}
                continue
            st = _stats(times[k], cpu[k])
            st["ms_per_iter"] = 1e3 * st["median_s"] / args.iters
            st["cpu_ms_per_iter"] = 1e3 * st["cpu_median_s"] / args.iters
            st["n_iters"] = int(_to_numpy(outs[k][2]))
            res["fixed"][k] = st
        res["check"] = _check(x, y, args, backends, outs, log)

    if args.mode in ("e2e", "both"):
        log(f"  N={n}: end-to-end (threshold {args.threshold})")
        runners = {
            k: b.e2e(args.threshold, args.max_iters, args.norm_error) for k, b in backends.items()
        }
        times, cpu, outs, failed = _time_round_robin(runners, args.warmup, args.e2e_repeats, log)
        for k in runners:
            if k in failed:
                res["e2e"][k] = {"error": failed[k]}
                continue
            st = _stats(times[k], cpu[k])
            st["n_iters"] = int(_to_numpy(outs[k][2]))
            st["ms_per_iter"] = 1e3 * st["median_s"] / max(st["n_iters"], 1)
            st["norm_error"] = 2 if k.startswith("pot") else args.norm_error
            res["e2e"][k] = st
    return res


def _check(x, y, args, backends, outs, log):
    """Agreement of the fixed-count results between libraries."""
    pots = {k: (_to_numpy(o[0]), _to_numpy(o[1])) for k, o in outs.items()}
    if not pots:
        return {}
    ref = next((k for k in ("ott-jax", "pot-numpy", "pot-torch") if k in pots), next(iter(pots)))
    f_ref, g_ref = pots[ref]
    out = {"reference": ref, "backends": {}}
    for k, (f, g) in pots.items():
        entry = {
            "reg_ot_cost_f64": reg_ot_cost_f64(x, y, args.epsilon, f, g),
            "potential_gap_vs_ref": _potential_gap(f, g, f_ref, g_ref),
        }
        try:
            native = backends[k].native_cost(args.iters)
        except Exception as e:
            native = None
            log(f"    native reg_ot_cost of {k} failed: {e}")
        entry["reg_ot_cost_native"] = native
        out["backends"][k] = entry
    c_ref = out["backends"][ref]["reg_ot_cost_f64"]
    for entry in out["backends"].values():
        entry["cost_diff_vs_ref"] = abs(entry["reg_ot_cost_f64"] - c_ref)
    vals = [e["reg_ot_cost_f64"] for e in out["backends"].values()]
    out["max_cost_diff"] = max(vals) - min(vals)
    out["max_potential_gap"] = max(e["potential_gap_vs_ref"] for e in out["backends"].values())
    return out


# -----------------------------------------------------------------------------------------
# Reporting
# -----------------------------------------------------------------------------------------


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _ratio(res, mode, k, key):
    ref = REFERENCE.get(k)
    mine, theirs = res[mode].get(k, {}), res[mode].get(ref, {}) if ref else {}
    if key not in mine or key not in theirs:
        return None, ref
    if mode == "e2e" and mine.get("norm_error") != theirs.get("norm_error"):
        return None, ref  # different stopping criteria: not comparable
    return mine[key] / theirs[key], ref


def print_tables(results, args):
    threads = "library defaults" if args.threads is None else str(args.threads)
    print()
    print(
        f"Sinkhorn forward (log-domain, materialised cost), {args.dtype}, d={args.dim}, "
        f"ε={args.epsilon:g} (absolute), {'GPU' if args.gpu else 'CPU'}, threads: {threads}"
    )
    if args.mode in ("fixed", "both"):
        head = (
            f"{'N':>6}  {'backend':<13} {'ms/iter':>9} {'IQR':>15} {'min':>8} {'cpu':>8}  "
            f"{'ratio (wall, cpu)':<26} {'reg_ot_cost':>12} {'|Δcost|':>8} {'|Δf,g|':>8}"
        )
        print(
            f"\n[fixed count] {args.iters} iterations; ms/iter = median wall time of "
            f"{args.repeats} calls / {args.iters} (IQR, min: same, cpu: process CPU time)"
        )
        print(head)
        print("-" * len(head))
        for res in results:
            check = res.get("check", {}).get("backends", {})
            for k in args.backends:
                fx = res["fixed"].get(k)
                if fx is None:
                    continue
                if "error" in fx:
                    print(f"{res['n']:>6}  {k:<13} failed: {fx['error']}")
                    continue
                it = args.iters
                iqr = f"{1e3 * fx['q1_s'] / it:.3f}-{1e3 * fx['q3_s'] / it:.3f}"
                ratio, ref = _ratio(res, "fixed", k, "ms_per_iter")
                cpu_ratio, _ = _ratio(res, "fixed", k, "cpu_ms_per_iter")
                ratio_s = f"{ratio:.2f}x, {cpu_ratio:.2f}x {ref}" if ratio is not None else ""
                c = check.get(k, {})
                print(
                    f"{res['n']:>6}  {k:<13} {fx['ms_per_iter']:9.3f} {iqr:>15} "
                    f"{1e3 * fx['min_s'] / it:8.3f} {fx['cpu_ms_per_iter']:8.3f}  {ratio_s:<26} "
                    f"{_fmt(c.get('reg_ot_cost_f64'), '12.7f')} "
                    f"{_fmt(c.get('cost_diff_vs_ref'), '8.1e')} "
                    f"{_fmt(c.get('potential_gap_vs_ref'), '8.1e')}"
                )
            ch = res.get("check")
            if ch:
                print(
                    f"{'':>6}  agreement after {args.iters} iterations (vs {ch['reference']}): "
                    f"max |Δ reg_ot_cost| = {ch['max_cost_diff']:.1e}, "
                    f"max |Δ potentials| = {ch['max_potential_gap']:.1e}"
                )
                natives = [
                    f"{k} {v['reg_ot_cost_native']:.7f}"
                    for k, v in ch["backends"].items()
                    if v["reg_ot_cost_native"] is not None
                ]
                if natives:
                    print(f"{'':>6}  libraries' own reg_ot_cost: " + ", ".join(natives))
            print("-" * len(head))
        print(
            "ratio: otcore / its reference (otcore-jax vs ott-jax, otcore-numpy vs pot-numpy, "
            "otcore-torch vs pot-torch) of the median wall times and of the median process "
            "CPU times; < 1 means otcore is faster.\n"
            "reg_ot_cost: float64 evaluation from each library's potentials; |Δcost|, |Δf,g|: "
            "vs the reference library (potentials up to a constant shift)."
        )
    if args.mode in ("e2e", "both"):
        head = (
            f"{'N':>6}  {'backend':<13} {'stop rule':<14} {'iters':>6} {'time ms':>10} "
            f"{'IQR ms':>17} {'ms/iter':>8}  {'ratio':<20}"
        )
        print(
            f"\n[end-to-end] threshold {args.threshold:g} on the column-marginal error, "
            f"checked every 10 iterations; medians of {args.e2e_repeats} calls"
        )
        print(head)
        print("-" * len(head))
        for res in results:
            for k in args.backends:
                e2 = res["e2e"].get(k)
                if e2 is None:
                    continue
                if "error" in e2:
                    print(f"{res['n']:>6}  {k:<13} failed: {e2['error']}")
                    continue
                ratio, ref = _ratio(res, "e2e", k, "median_s")
                ratio_s = f"{ratio:.2f}x {ref}" if ratio is not None else ""
                if ref and ratio is None and ref in res["e2e"]:
                    ratio_s = "(other stop rule)"
                rule = f"L{e2['norm_error']:g} < {args.threshold:g}"
                iqr = f"{1e3 * e2['q1_s']:.1f}-{1e3 * e2['q3_s']:.1f}"
                print(
                    f"{res['n']:>6}  {k:<13} {rule:<14} {e2['n_iters']:>6} "
                    f"{1e3 * e2['median_s']:10.1f} {iqr:>17} {e2['ms_per_iter']:8.3f}  {ratio_s:<20}"
                )
            print("-" * len(head))
        print(
            "POT's sinkhorn_log always stops on the L2 norm of the marginal error (checked at "
            "iterations 1, 11, 21, ...); otcore and OTT use --norm-error (default L1)."
        )


def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("otcore", "jax", "jaxlib", "torch", "ott", "ot", "cupy", "scipy"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:
            pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", help="N (points per side); default 1024 4096")
    p.add_argument("--dim", type=int, default=3, help="dimension d of the points (default 3)")
    p.add_argument("--epsilon", type=float, default=0.01, help="absolute ε (default 0.01)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--iters", type=int, default=100, help="fixed iteration count (default 100)")
    p.add_argument("--threshold", type=float, default=1e-3, help="e2e threshold (default 1e-3)")
    p.add_argument("--max-iters", type=int, default=10000, help="e2e iteration cap")
    p.add_argument(
        "--norm-error", type=float, default=1.0, help="p of the e2e error norm for otcore/OTT"
    )
    p.add_argument("--mode", choices=("fixed", "e2e", "both"), default="both")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, fixed count")
    p.add_argument("--e2e-repeats", type=int, default=5, help="timed repeats, end-to-end")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (jit compile)")
    p.add_argument(
        "--backends", nargs="+", choices=ALL_BACKENDS, default=list(ALL_BACKENDS), metavar="B"
    )
    p.add_argument("--gpu", action="store_true", help="run on the accelerator (CUDA)")
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
        help="write results here (default benchmarks/results/sinkhorn-<cpu|gpu>-<dtype>-<time>.json)",
    )
    p.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [4096, 16384] if args.gpu else [1024, 4096]
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first JAX call compiles)")

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
        "gpu": args.gpu,
        "versions": _versions(),
        "args": vars(args),
    }
    if args.gpu:
        try:
            import torch

            meta["device"] = torch.cuda.get_device_name()
        except Exception:
            pass
    results = []
    for n in args.sizes:
        results.append(run_size(n, args, log))
    print_tables(results, args)

    if not args.no_json:
        if args.json:
            path = Path(args.json)
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            kind = "gpu" if args.gpu else "cpu"
            path = HERE / "results" / f"sinkhorn-{kind}-{args.dtype}-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
