"""otcore demo: the same entropic OT cost and its gradient on every installed framework.

Run: ``python examples/demo.py``. One line per backend: the value of ``reg_ot_cost``
between two point clouds, the norm of its gradient w.r.t. ``x`` computed with that
framework's own tools (``jax.grad``, ``torch.autograd``, ``ot.grad`` for NumPy), and the
array type that came back.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

import otcore as ot

KW = {"epsilon": 0.05, "threshold": 1e-9, "max_iterations": 5000}


def points():
    rng = np.random.default_rng(0)
    return rng.uniform(size=(200, 3)), rng.uniform(size=(150, 3)) + 0.2


def run_numpy(x, y):
    value, gx = ot.value_and_grad(ot.reg_ot_cost)(x, y, **KW)
    return value, gx


def run_array_api_strict(x, y):
    import array_api_strict as xps

    value, gx = ot.value_and_grad(ot.reg_ot_cost)(xps.asarray(x), xps.asarray(y), **KW)
    return value, gx


def run_jax(x, y):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    fn = jax.jit(jax.value_and_grad(lambda x_, y_: ot.reg_ot_cost(x_, y_, **KW)))
    return fn(jnp.asarray(x), jnp.asarray(y))


def run_torch(x, y):
    import torch

    xt = torch.tensor(x, requires_grad=True)
    value = ot.reg_ot_cost(xt, torch.tensor(y), **KW)
    value.backward()
    return value.detach(), xt.grad


BACKENDS = {
    "numpy": (None, run_numpy),
    "array_api_strict": ("array_api_strict", run_array_api_strict),
    "jax": ("jax", run_jax),
    "torch": ("torch", run_torch),
}


def main():
    x, y = points()
    print(f"otcore {ot.__version__}: reg_ot_cost between x (200, 3) and y (150, 3), eps = 0.05")
    for name, (module, run) in BACKENDS.items():
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"{name:>17}: not installed")
            continue
        start = time.perf_counter()
        value, gx = run(x, y)
        seconds = time.perf_counter() - start
        gnorm = float(np.linalg.norm(np.from_dlpack(gx)))
        print(
            f"{name:>17}: reg_ot_cost = {float(value):.10f}   |grad_x| = {gnorm:.10f}   "
            f"({type(value).__module__}.{type(value).__name__}, {seconds:.2f} s)"
        )


if __name__ == "__main__":
    main()
