"""Hessian of the Sinkhorn divergence w.r.t. the weights, on every installed framework.

``S_ε((x, a), (y, b))`` between two small point clouds; its Hessian in ``a`` is computed
with each framework's own tool (``jax.hessian``, ``torch.autograd.functional.hessian``,
``ot.hessian`` on NumPy) by implicit differentiation, and checked against a central
finite difference of the gradient along one direction of the simplex. The full experiment
(weights and points, unrolled vs implicit, timings, a figure) is
``benchmarks/sinkhorn_divergence_hessians.py``.

Run: ``python examples/hessians.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np

import otcore as ot

rng = np.random.default_rng(0)
X, Y = rng.uniform(size=(17, 3)), rng.uniform(size=(15, 3))
A, B = rng.uniform(0.5, 1.5, size=17), rng.uniform(0.5, 1.5, size=15)
A, B = A / A.sum(), B / B.sum()
# ε fixed once (the default would be recomputed from each perturbed input)
OPTS = {
    "epsilon": 0.05 * float(np.std(((X[:, None] - Y[None]) ** 2).sum(-1))),
    "threshold": 1e-12,
    "use_danskin": False,
    "implicit_diff": ot.ImplicitDiff(),
}


def divergence(a, x, y, b):
    return ot.sinkhorn_divergence(x, y, a, b, **OPTS)


def numpy_gradient(a):
    """``∇_a S`` on NumPy: otcore's entry point passed directly (no tracer to look inside
    a lambda), the weights being its argument 2."""
    return ot.grad(ot.sinkhorn_divergence, argnums=2)(X, Y, a, B, **OPTS)


def hessian(name):
    """The ``a``-Hessian ``(17, 17)`` computed with framework ``name``, as NumPy."""
    if name == "numpy":
        return ot.hessian(ot.sinkhorn_divergence, argnums=2)(X, Y, A, B, **OPTS)
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        return np.asarray(jax.hessian(divergence)(*map(jax.numpy.asarray, (A, X, Y, B))))
    import torch

    x, y, b = (torch.from_numpy(v) for v in (X, Y, B))
    h = torch.autograd.functional.hessian(lambda a: divergence(a, x, y, b), torch.from_numpy(A))
    return h.numpy()


def main():
    direction = rng.normal(size=17)
    direction -= direction.mean()  # stay in the simplex's tangent space
    step = 1e-6
    fd = (numpy_gradient(A + step * direction) - numpy_gradient(A - step * direction)) / (2 * step)
    names = ["numpy"] + [n for n in ("jax", "torch") if importlib.util.find_spec(n)]
    for name in names:
        h = hessian(name)
        # the balanced problem lives on the simplex: compare tangent components only
        err = np.abs((h @ direction - fd) - (h @ direction - fd).mean()).max()
        print(f"{name:6s} |H δ − FD(∇)| = {err:.1e}   (|H δ| = {np.abs(h @ direction).max():.2e})")
        assert err < 1e-5 * np.abs(fd).max(), name


if __name__ == "__main__":
    main()
