"""The package's import graph: no circle, and no import from a lower layer to a higher one.

Layers, bottom up (``DESIGN.md`` §2): ``_lib``, ``errors`` → ``backends``, ``implicit`` →
``geometry``, ``neural`` → ``problem`` → ``solvers`` → ``api`` → ``autodiff`` → ``tools``
→ the package's ``__init__``. Imports are read from the source (``ast``), lazy ones inside
functions included, so a deferred import cannot hide a circle.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "otcore"

LAYERS = {
    "_lib": 0,
    "errors": 0,
    "backends": 1,
    "implicit": 1,
    "geometry": 2,
    "neural": 2,
    "problem": 3,
    "solvers": 4,
    "api": 5,
    "autodiff": 6,
    "tools": 7,
    "__init__": 8,
}

FRAMEWORKS = ("jax", "torch", "cupy", "triton", "flax", "optax")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, name: str) -> set[str]:
    """Every module ``name`` imports (absolute names; ``from X import y`` gives ``X.y``
    when that is a module of the package, else ``X``)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = {d for d in _imports(path, name) if d in modules and d != name}
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[name] = deps
    return modules, graph


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS[parts[1]]


def test_every_top_level_module_has_a_layer():
    _, graph = _graph()
    unknown = sorted({m.split(".")[1] for m in graph if "." in m} - set(LAYERS))
    assert not unknown, f"modules outside the declared layers: {unknown}"


def test_no_upward_import():
    _, graph = _graph()
    upward = [
        (src, dst)
        for src, deps in graph.items()
        for dst in deps
        if dst != "otcore" and _layer(dst) > _layer(src)
    ]
    assert not upward, f"imports from a lower layer to a higher one: {sorted(upward)}"


def test_no_import_circle():
    _, graph = _graph()
    # a package's __init__ may re-export its own submodules: that edge is not a circle
    edges = {
        src: {d for d in deps if not (src != "otcore" and d.startswith(src + "."))}
        for src, deps in graph.items()
    }
    edges = {src: {d for d in deps if d != "otcore"} for src, deps in edges.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_frameworks_are_imported_only_in_backends(framework):
    modules, _ = _graph()
    offenders = [
        name
        for name, path in modules.items()
        if not name.startswith("otcore.backends")
        and any(d == framework or d.startswith(framework + ".") for d in _imports(path, name))
    ]
    assert not offenders, f"{framework} imported outside otcore/backends: {offenders}"
