"""Reliability table (issue 11): outcomes of random OT problems per backend × dtype.

Runs the property suite's generator and classifier (``tests/_strategies.py``, loaded by
path, so neither pytest nor hypothesis is needed) on ``--examples`` problems per backend
and dtype, drawn with a seeded NumPy generator (the same problems on every backend), and
prints a markdown table of outcomes:

* converged: finite value and gradient reported converged, equal to the float64 reference;
* flagged: ``converged=False`` or ``diverged=True`` (``reg_ot_cost`` warned or raised);
* clear error: a ``ValueError``/``TypeError`` naming an argument;
* silent non-finite / silent wrong: NaN/inf, or a value or gradient off the reference (or of
  another dtype), reported converged;
* misflagged / unclear error / mutated: flags and reports disagree (e.g. ``inf`` with
  ``diverged=False``), another exception or a message naming no argument, an input modified;

then the first few offenders of each bad class with their parameters. The contract asks
zeros in the last five columns. ``--jit`` adds a JAX row with the solve inside
``jax.jit`` (flags only).

Usage::

    python benchmarks/reliability.py                      # 50 problems, numpy/jax/torch, f32/f64
    python benchmarks/reliability.py --examples 2000 --backends numpy torch
    python benchmarks/reliability.py --examples 200 --jit --json out.json
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import pathlib
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_strategies():
    """``tests/_strategies.py`` as a module (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_strategies", ROOT / "tests" / "_strategies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_strategies"] = module
    spec.loader.exec_module(module)
    return module


COLUMNS = {
    "converged": "converged",
    "flagged": "flagged",
    "error": "clear error",
    "nonfinite": "silent non-finite",
    "wrong": "silent wrong",
    "misflagged": "misflagged",
    "unclear": "unclear error",
    "mutated": "mutated",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50, help="problems per backend × dtype")
    parser.add_argument("--backends", nargs="+", default=["numpy", "jax", "torch"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit", action="store_true", help="also JAX inside jax.jit (flags)")
    parser.add_argument("--offenders", type=int, default=3, help="offenders listed per class")
    parser.add_argument("--json", help="write counts and offenders to this file")
    args = parser.parse_args(argv)

    if "jax" in args.backends or args.jit:
        try:
            import jax

            jax.config.update("jax_enable_x64", True)
        except ImportError:
            pass
    S = _load_strategies()
    rows = []
    for backend in args.backends:
        runs = [(backend, False)] + ([(backend, True)] if backend == "jax" and args.jit else [])
        for backend_, jit in runs:
            if backend_ != "numpy" and importlib.util.find_spec(backend_) is None:
                print(f"skipping {backend_}: not installed", file=sys.stderr)
                continue
            for dtype in args.dtypes:
                rows.append(_run(S, backend_, jit, dtype, args))
    _print(rows, args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


def _run(S, backend, jit, dtype, args):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    counts = collections.Counter()
    offenders = collections.defaultdict(list)
    start = time.perf_counter()
    for _ in range(args.examples):
        case = S.build_case(S.random_params(rng), dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = S.run_case(case, backend, jit=jit)
        counts[outcome.kind] += 1
        if outcome.kind in S.BAD and len(offenders[outcome.kind]) < args.offenders:
            offenders[outcome.kind].append(
                {"detail": outcome.detail, "params": case.params, "problem": case.describe()}
            )
    name = backend + (" (jit)" if jit else "")
    seconds = time.perf_counter() - start
    print(f"{name} {dtype}: {dict(counts)} in {seconds:.0f} s", file=sys.stderr)
    return {
        "backend": name,
        "dtype": dtype,
        "counts": {k: counts.get(k, 0) for k in COLUMNS},
        "offenders": offenders,
        "seconds": seconds,
    }


def _print(rows, args):
    print(f"\n{args.examples} problems per row (seed {args.seed})\n")
    print("| backend | dtype | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for row in rows:
        cells = " | ".join(str(row["counts"][k]) for k in COLUMNS)
        print(f"| {row['backend']} | {row['dtype']} | {cells} |")
    for row in rows:
        for kind, items in row["offenders"].items():
            for item in items:
                print(f"\n- {COLUMNS[kind]} ({row['backend']}, {row['dtype']}): {item['detail']}")
                print(f"  {item['problem']}")


if __name__ == "__main__":
    main()
