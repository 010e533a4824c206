"""Root pytest configuration: doctests of modules whose framework is not installed are skipped."""

import importlib.util

collect_ignore = [
    f"otcore/backends/{module}.py"
    for name in ("jax", "torch", "cupy")
    if importlib.util.find_spec(name) is None
    for module in (name, f"neural_{name}")
]
collect_ignore += ["examples", "benchmarks", "docs", "notebooks", "site"]
