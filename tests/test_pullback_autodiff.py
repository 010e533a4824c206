"""One derivative: the hand-written pull-back equals the autodiff path on every geometry.

:meth:`ImplicitSystem.pullback` (``θ̄ = -ε (∂G/∂θ)ᵀ w``, written by hand through each
geometry's ``cost_pullback`` and ``epsilon_pullback``) is what the manual NumPy/CuPy rules
use; the autodiff adapters instead differentiate :meth:`ImplicitSystem.conditions`. Here
both run on the same solution and the same ``w = system.solve(z̄)`` (computed once, on
NumPy): the manual pull-back on NumPy arrays, the autodiff one as ``-ε · jax.vjp`` of the
conditions w.r.t. ``geom.differentiable_arrays() + (a, b)``. They must agree to ~1e-12 on a
dense geometry, a point cloud, an online point cloud, 1-D and 2-D grids, with a float or an
array ε, balanced and unbalanced. The cotangent ``z̄`` is a fixed random vector.
"""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot
from otcore.implicit import ImplicitDiff, ImplicitSystem

jax = pytest.importorskip("jax")
jnp = jax.numpy

GEOMS = ("dense", "pointcloud", "online", "grid1d", "grid2d")


def _data(kind):
    rng = np.random.default_rng(GEOMS.index(kind))
    if kind == "dense":
        arrays, n, m = [rng.uniform(size=(6, 5))], 6, 5
    elif kind in ("pointcloud", "online"):
        arrays, n, m = [rng.uniform(size=(6, 2)), rng.uniform(size=(5, 2)) + 0.2], 6, 5
    elif kind == "grid1d":
        arrays, n, m = [np.sort(rng.uniform(size=5))], 5, 5
    else:
        arrays, n, m = [np.sort(rng.uniform(size=4)), np.sort(rng.uniform(size=3))], 12, 12
    a, b = rng.uniform(0.3, 1.0, n), rng.uniform(0.3, 1.0, m)
    return arrays, a / a.sum(), 1.3 * b / b.sum(), rng.normal(size=n), rng.normal(size=m)


def _geometry(kind, arrays, eps):
    if kind == "dense":
        return ot.Geometry(arrays[0], epsilon=eps)
    if kind in ("pointcloud", "online"):
        bs = 2 if kind == "online" else None
        return ot.PointCloud(arrays[0], arrays[1], epsilon=eps, batch_size=bs)
    return ot.Grid(axes=list(arrays), epsilon=eps)


@pytest.mark.parametrize("balanced", [True, False], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("eps_array", [False, True], ids=["eps_float", "eps_array"])
@pytest.mark.parametrize("kind", GEOMS)
def test_manual_pullback_equals_autodiff_of_the_conditions(kind, eps_array, balanced):
    arrays, a, b, zu, zv = _data(kind)
    if balanced:
        b = b / b.sum()
    taus = dict(tau_a=1.0, tau_b=1.0) if balanced else dict(tau_a=0.9, tau_b=0.8)
    eps = np.asarray(0.1) if eps_array else 0.1

    # the manual pull-back, on NumPy
    geom = _geometry(kind, arrays, eps)
    prob = ot.LinearProblem(geom, a, b, **taus)
    out = ot.Sinkhorn(threshold=1e-12, max_iterations=5000)(prob)
    assert bool(out.converged)
    system = ImplicitSystem(prob, out.f, out.g, ImplicitDiff())
    wu, wv = system.solve(zu, zv)
    manual = system.pullback(wu, wv)

    # the autodiff path: -ε (∂G/∂θ)ᵀ w by jax.vjp of the conditions, at the same (f, g, w)
    geom_j = _geometry(
        kind, [jnp.asarray(v) for v in arrays], jnp.asarray(eps) if eps_array else eps
    )
    k = len(geom_j.differentiable_arrays())
    leaves = (*geom_j.differentiable_arrays(), jnp.asarray(a), jnp.asarray(b))
    f, g = jnp.asarray(out.f), jnp.asarray(out.g)

    def conditions(lv):
        p = ot.LinearProblem(geom_j.with_arrays(tuple(lv[:k])), lv[k], lv[k + 1], **taus)
        return ImplicitSystem(p, f, g, ImplicitDiff()).conditions()

    residual, pull = jax.vjp(conditions, leaves)
    assert max(float(jnp.abs(r).max()) for r in residual) < 1e-10  # at the fixed point
    auto = [-0.1 * np.asarray(t) for t in pull((jnp.asarray(wu), jnp.asarray(wv)))[0]]

    names = [f"geometry array {i}" for i in range(k - eps_array)]
    names += ["epsilon"] * eps_array + ["a", "b"]
    assert len(manual) == len(auto) == len(names)
    for name, m_, a_ in zip(names, manual, auto):
        m_ = np.asarray(m_)
        assert m_.shape == a_.shape, (name, m_.shape, a_.shape)
        scale = np.abs(a_).max()
        assert scale > 0, name
        err = np.abs(m_ - a_).max() / scale
        assert err <= 1e-12, f"{kind} {name}: manual vs autodiff relative error {err:.2e}"
