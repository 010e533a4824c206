"""Backward-pass and second-order benchmarks of otcore against OTT-JAX and GeomLoss.

Three measurements, every library timed in one process on the same inputs (CPU by
default), medians of ``--repeats`` calls after a warm-up (which includes compilation):

* ``grad``: value and gradient of ``reg_ot_cost`` w.r.t. ``x`` at ``N`` points per side
  (x, y ~ U[0,1]^3, uniform weights, squared Euclidean, absolute ε, a fixed number of
  Sinkhorn iterations so that every library does the same forward work). Two modes:
  envelope (``use_danskin=True``, the default of both libraries) and implicit
  (``use_danskin=False``: one linear solve in the backward pass). otcore-JAX is compared
  with OTT-JAX's ``jax.value_and_grad``; the other otcore backends are listed too.
* ``hessian``: the seed tutorial's Hessians of the Sinkhorn divergence (n=17, m=15, d=3)
  w.r.t. the weights ``a`` and the locations ``x``, unrolled and implicit, otcore-JAX vs
  OTT-JAX (both ``jax.jit(jax.hessian(...))``, threshold 1e-3 as in the seed).
* ``divergence``: value and gradient of the Sinkhorn divergence at ``N`` points per side,
  each otcore backend vs GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=ε^(1/2),
  scaling=...)`` (PyTorch, tensorized) and OTT-JAX, with matching ε (GeomLoss' cost is
  ``|x-y|²/2``: its ε is halved accordingly) and iteration counts as close as the libraries
  allow (GeomLoss anneals ε; its iteration count is reported).

Example::

    python benchmarks/differentiation.py --sizes 1024 4096
    python benchmarks/differentiation.py --only hessian
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import otcore as ot  # noqa: E402


def timed(fn, repeats, warmup=1):
    """Median seconds of ``fn()`` (which must block until its result is ready); ``nan``
    when the library fails (the failure is printed)."""
    try:
        for _ in range(warmup):
            fn()
    except Exception as err:  # a reference library failing is a result, not a crash
        print(f"    failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
        return float("nan")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _jax():
    import jax

    jax.config.update("jax_enable_x64", False)
    return jax


def bench_grad(n, iters, eps, repeats, dtype):

    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(n, 3)).astype(dtype), rng.uniform(size=(n, 3)).astype(dtype)
    rows = []
    for danskin in (True, False):
        rows.append(_grad_row(n, iters, eps, repeats, x, y, danskin))
    return rows


def _grad_row(n, iters, eps, repeats, x, y, danskin):
    import jax
    import jax.numpy as jnp
    import torch
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.solvers.linear import sinkhorn

    fixed = {"min_iterations": iters, "max_iterations": iters, "threshold": 0.0}
    mode = "envelope" if danskin else "implicit"
    kw = dict(epsilon=eps, use_danskin=danskin, inner_iterations=10, **fixed)

    ours = jax.jit(jax.value_and_grad(lambda x_: ot.reg_ot_cost(x_, jnp.asarray(y), **kw)))

    def ott_loss(x_):
        geom = pointcloud.PointCloud(x_, jnp.asarray(y), epsilon=eps)
        solver = sinkhorn.Sinkhorn(
            min_iterations=iters,
            max_iterations=iters,
            threshold=0.0,
            implicit_diff=imp.ImplicitDiff(),
            use_danskin=danskin,
        )
        return solver(linear_problem.LinearProblem(geom)).reg_ot_cost

    theirs = jax.jit(jax.value_and_grad(ott_loss))
    xj = jnp.asarray(x)
    t_ours = timed(lambda: jax.block_until_ready(ours(xj)), repeats)
    t_ott = timed(lambda: jax.block_until_ready(theirs(xj)), repeats)
    forward = jax.jit(lambda x_: ot.reg_ot_cost(x_, jnp.asarray(y), **kw))
    t_fwd = timed(lambda: jax.block_until_ready(forward(xj)), repeats)
    xt = torch.tensor(x)
    yt = torch.tensor(y)

    def torch_vg():
        xr = xt.clone().requires_grad_(True)
        v = ot.reg_ot_cost(xr, yt, **kw)
        (g,) = torch.autograd.grad(v, xr)
        return v, g

    t_torch = timed(torch_vg, repeats)
    t_np = timed(lambda: ot.value_and_grad(ot.reg_ot_cost)(x, y, **kw), repeats)
    t_np_fwd = timed(lambda: ot.reg_ot_cost(x, y, **kw), repeats)
    return {
        "n": n,
        "mode": mode,
        "otcore-jax": t_ours,
        "otcore-jax forward": t_fwd,
        "ott-jax": t_ott,
        "ratio jax/ott": t_ours / t_ott,
        "otcore-numpy": t_np,
        "otcore-numpy forward": t_np_fwd,
        "otcore-torch": t_torch,
    }


def bench_hessian(repeats):
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.tools import sinkhorn_divergence as sd

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    n, m, d = 17, 15, 3
    x, y = rng.uniform(size=(n, d)), rng.uniform(size=(m, d))
    a = rng.uniform(size=n) + 0.1
    b = rng.uniform(size=m) + 0.1
    a, b = a / a.sum(), b / b.sum()
    xj, yj, aj, bj = map(jnp.asarray, (x, y, a, b))
    eps = float(ot.PointCloud(x, y).epsilon)
    rows = []
    for implicit in (False, True):

        def ours(a_, x_, implicit=implicit):
            extra = {} if implicit else {"implicit_diff": None}
            return ot.sinkhorn_divergence(
                x_, yj, a_, bj, epsilon=eps, use_danskin=False, max_iterations=2000, **extra
            )

        def theirs(a_, x_, implicit=implicit):
            div, _ = sd.sinkhorn_divergence(
                pointcloud.PointCloud,
                x_,
                yj,
                a=a_,
                b=bj,
                epsilon=eps,
                solve_kwargs={
                    "implicit_diff": imp.ImplicitDiff() if implicit else None,
                    "use_danskin": False,
                },
            )
            return div

        for argnum, name in ((0, "a"), (1, "x")):
            h_ours = jax.jit(jax.hessian(ours, argnums=argnum))
            h_ott = jax.jit(jax.hessian(theirs, argnums=argnum))
            t_ours = timed(lambda h=h_ours: jax.block_until_ready(h(aj, xj)), repeats)
            t_ott = timed(lambda h=h_ott: jax.block_until_ready(h(aj, xj)), repeats)
            rows.append(
                {
                    "arg": name,
                    "mode": "implicit" if implicit else "unrolled",
                    "otcore-jax": t_ours,
                    "ott-jax": t_ott,
                    "ratio": t_ours / t_ott,
                }
            )
    jax.config.update("jax_enable_x64", False)
    return rows


def bench_divergence(n, eps, iters, repeats, dtype):
    import jax
    import jax.numpy as jnp
    import torch
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence as sd

    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(n, 3)).astype(dtype), rng.uniform(size=(n, 3)).astype(dtype)
    kw = dict(epsilon=eps, min_iterations=iters, max_iterations=iters, threshold=0.0)
    row = {"n": n, "iters": iters}
    ours = jax.jit(jax.value_and_grad(lambda x_: ot.sinkhorn_divergence(x_, jnp.asarray(y), **kw)))
    row["otcore-jax"] = timed(lambda: jax.block_until_ready(ours(jnp.asarray(x))), repeats)

    def ott_div(x_):
        div, _ = sd.sinkhorn_divergence(
            pointcloud.PointCloud,
            x_,
            jnp.asarray(y),
            epsilon=eps,
            solve_kwargs={"min_iterations": iters, "max_iterations": iters, "threshold": 0.0},
        )
        return div

    theirs = jax.jit(jax.value_and_grad(ott_div))
    row["ott-jax"] = timed(lambda: jax.block_until_ready(theirs(jnp.asarray(x))), repeats)
    row["otcore-numpy"] = timed(
        lambda: ot.value_and_grad(ot.sinkhorn_divergence)(x, y, **kw), repeats
    )
    xt, yt = torch.tensor(x), torch.tensor(y)

    def torch_vg():
        xr = xt.clone().requires_grad_(True)
        v = ot.sinkhorn_divergence(xr, yt, **kw)
        (g,) = torch.autograd.grad(v, xr)
        return v, g

    row["otcore-torch"] = timed(torch_vg, repeats)
    try:
        from geomloss import SamplesLoss

        # GeomLoss' cost is |x - y|^2 / 2 and its blur^p is ε in those units
        loss = SamplesLoss(
            "sinkhorn", p=2, blur=(eps / 2) ** 0.5, scaling=0.9, backend="tensorized", debias=True
        )

        def geomloss_vg():
            xr = xt.clone().requires_grad_(True)
            v = loss(xr, yt)
            (g,) = torch.autograd.grad(v, xr)
            return v, g

        row["geomloss-torch"] = timed(geomloss_vg, repeats)
        row["geomloss value x2"] = float(2 * loss(xt, yt))
    except ImportError:
        row["geomloss-torch"] = None
    row["otcore value"] = float(ot.sinkhorn_divergence(x, y, **kw))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--divergence-sizes", type=int, nargs="+", default=[4096])
    parser.add_argument("--only", choices=["grad", "hessian", "divergence"], nargs="+")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", default=str(HERE / "results" / "differentiation.json"))
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args(argv)
    # fixed iteration counts (threshold 0) never "converge": that is the point here
    warnings.simplefilter("ignore", ot.ConvergenceWarning)
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    _jax()
    only = set(args.only or ["grad", "hessian", "divergence"])
    results = {
        "meta": {
            "cpu_count": os.cpu_count(),
            "dtype": args.dtype,
            "iters": args.iters,
            "epsilon": args.epsilon,
        }
    }
    if "grad" in only:
        rows = [
            r
            for n in args.sizes
            for r in bench_grad(n, args.iters, args.epsilon, args.repeats, args.dtype)
        ]
        results["grad"] = rows
        print(
            f"\nvalue_and_grad of reg_ot_cost ({args.iters} iterations, ε={args.epsilon}, "
            f"{args.dtype}; seconds)"
        )
        print(
            f"{'N':>6} {'mode':>9} {'otcore-jax':>11} {'(fwd)':>8} {'ott-jax':>9} "
            f"{'jax/ott':>8} {'numpy':>8} {'(fwd)':>8} {'torch':>8}"
        )
        for r in rows:
            print(
                f"{r['n']:>6} {r['mode']:>9} {r['otcore-jax']:>11.4f} "
                f"{r['otcore-jax forward']:>8.4f} {r['ott-jax']:>9.4f} "
                f"{r['ratio jax/ott']:>8.2f} {r['otcore-numpy']:>8.3f} "
                f"{r['otcore-numpy forward']:>8.3f} {r['otcore-torch']:>8.3f}"
            )
    if "hessian" in only:
        rows = bench_hessian(args.repeats)
        results["hessian"] = rows
        print("\nseed Hessians of the Sinkhorn divergence (n=17, m=15, d=3, float64; ms)")
        print(f"{'arg':>4} {'mode':>9} {'otcore-jax':>11} {'ott-jax':>9} {'ratio':>7}")
        for r in rows:
            print(
                f"{r['arg']:>4} {r['mode']:>9} {1e3 * r['otcore-jax']:>11.2f} "
                f"{1e3 * r['ott-jax']:>9.2f} {r['ratio']:>7.2f}"
            )
    if "divergence" in only:
        rows = [
            bench_divergence(n, args.epsilon, args.iters, args.repeats, args.dtype)
            for n in args.divergence_sizes
        ]
        results["divergence"] = rows
        print(
            f"\nvalue_and_grad of the Sinkhorn divergence ({args.iters} iterations per solve, "
            f"ε={args.epsilon}, {args.dtype}; seconds)"
        )
        for r in rows:
            print(
                "  "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                )
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
