"""Root pytest configuration: doctests of modules whose framework is not installed are skipped."""

import importlib.util

collect_ignore = [
    f"otcore/backends/{name}.py"
    for name in ("jax", "torch", "cupy")
    if importlib.util.find_spec("cupy" if name == "cupy" else name) is None
]
collect_ignore += ["examples", "benchmarks", "docs", "notebooks", "site"]
