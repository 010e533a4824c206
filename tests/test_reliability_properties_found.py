"""Regression tests of problems found by the property suite (issue 11).

* Item 4 under ``jax.jit``: a NaN point was taken for a distance-0 pair (Euclidean:
  ``where(d2 > 0, sqrt(d2), 0)`` and ``NaN > 0`` is False) or for a zero vector (cosine's
  ``_safe_norm``), so the cost was finite and the solve "converged" (euclidean, online,
  float32 and float64: ``nan_x`` converged to 1.5e5). The masks' else-branches now carry
  ``0 * value``: NaN propagates into the cost and the loop reports ``diverged``, while the
  derivative at genuine zeros stays 0.
* Item 7 for the cosine cost: ``1 - <x, y>/(|x||y|)`` in float32 loses ``eps`` per entry
  for nearly parallel vectors (clouds far from the origin), so the value was 1 % off
  (4.4659e-06 vs 4.4249e-06, reported converged). The cost is now formed from centred unit
  vectors: error ``≈ sin θ · eps`` per entry (the cost's conditioning under rounding of the
  directions), not ``eps``.
"""

from __future__ import annotations

import math

import _strategies as S
import numpy as np
import pytest
from _helpers import make_backend, to_numpy

import otcore as ot
from otcore.geometry.costs import Cosine

COSTS = ("sqeuclidean", "euclidean", "cosine", "pnorm")
EPS32 = float(np.finfo(np.float32).eps)


def _cost(name):
    return ot.costs.PNorm(1.5) if name == "pnorm" else ot.costs.get_cost(name)


def _clouds(nan=True):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2))
    y = rng.normal(size=(4, 2)) + 0.5
    y[:2] = x[:2]  # duplicated points: distance-0 pairs beside the NaN
    if nan:
        x[0, 0] = np.nan
    return x, y


# -- item 4: a NaN point under jax.jit -------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 2], ids=["dense", "online"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cost", COSTS)
def test_case_04_nan_point_under_jit_is_diverged(cost, dtype, batch_size):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x, y = _clouds()
    a, b = np.full(3, 1 / 3), np.full(4, 1 / 4)

    @jax.jit
    def solve(x, y, a, b):
        geom = ot.PointCloud(x, y, cost=_cost(cost), epsilon=0.5, batch_size=batch_size)
        out = ot.Sinkhorn(threshold=1e-4)(ot.LinearProblem(geom, a, b))
        return out.reg_ot_cost, jnp.all(out.converged), out.diverged

    value, converged, diverged = solve(*(jnp.asarray(v.astype(dtype)) for v in (x, y, a, b)))
    assert bool(diverged) and not bool(converged)
    assert not np.isfinite(float(value))
    # the same clouds without the NaN converge (the flag comes from the NaN alone)
    x[0, 0] = 0.25
    value, converged, diverged = solve(*(jnp.asarray(v.astype(dtype)) for v in (x, y, a, b)))
    assert bool(converged) and not bool(diverged) and np.isfinite(float(value))


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("cost", COSTS)
def test_case_04_nan_point_eager_is_refused(backend, cost):
    be = make_backend(backend)
    x, y = _clouds()
    with pytest.raises(ValueError, match="x contains NaN"):
        ot.reg_ot_cost(be.to_xp(x), be.to_xp(y), epsilon=0.5, cost=_cost(cost))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy on the NaN/inf inputs
@pytest.mark.parametrize("cost", COSTS)
def test_case_04_costs_propagate_nan_and_keep_zero_derivatives(xp, cost):
    """A NaN point gives a NaN row (an inf one a non-finite row); the cost's VJP (autodiff
    on JAX/PyTorch, the manual rule elsewhere) stays finite at duplicated points and at a
    zero vector (cosine), on points without NaN."""
    cost_fn = _cost(cost)
    x, y = _clouds()
    c = to_numpy(cost_fn.pairwise(xp.to_xp(x), xp.to_xp(y)))
    assert np.all(np.isnan(c[0])), c[0]
    if cost in ("euclidean", "pnorm"):  # the others centre the clouds: NaN everywhere
        assert np.all(np.isfinite(c[1:]))
    x_inf = x.copy()
    x_inf[0, 0] = np.inf
    c = to_numpy(cost_fn.pairwise(xp.to_xp(x_inf), xp.to_xp(y)))
    assert not np.any(np.isfinite(c[0])), c[0]
    x, y = _clouds(nan=False)
    x[2] = 0.0  # a zero vector (cosine's singularity)
    w = np.array([[0.3, -1.0, 0.5, 2.0], [-0.7, 0.25, 1.0, 0.1], [0.2, 0.4, -0.6, 0.8]])
    dx, dy = xp.adapter.cost_vjp(cost_fn, xp.to_xp(x), xp.to_xp(y), xp.to_xp(w))
    mx, my = cost_fn.vjp(x, y, w)
    np.testing.assert_allclose(to_numpy(dx), mx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(dy), my, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(mx)) and np.all(np.isfinite(my))


# -- item 7: the cosine cost of nearly parallel vectors in float32 ---------------------------


def _cosine64(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    nx = np.linalg.norm(x, axis=-1)[:, None]
    ny = np.linalg.norm(y, axis=-1)[None, :]
    return 1.0 - (x @ y.T) / (nx * ny)


@pytest.mark.parametrize("offset", [1e2, 1e3, 1e5])
def test_case_07_cosine_nearly_parallel_float32_cost_matrix(xp, offset):
    """float32 costs of clouds far from the origin (angles ~1/offset) against float64 on
    the same rounded inputs: within ``2 · eps · max sin θ`` (was up to ``2 eps``: 2e-7
    at offset 1e2, 1.3e-7 at 1e3, for costs of 5e-4 and 6e-6)."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(7, 2)) + offset).astype(np.float32)
    y = (rng.normal(size=(5, 2)) + offset).astype(np.float32)
    ref = _cosine64(x, y)
    got = to_numpy(Cosine()(xp.to_xp(x), xp.to_xp(y)))
    assert got.dtype == np.float32
    bound = 2 * EPS32 * float(np.max(np.sqrt(ref * (2 - ref))))
    assert np.max(np.abs(got - ref)) <= bound
    assert np.max(ref) < 1e-3  # nearly parallel: the old formula's eps error would fail


@pytest.mark.parametrize("ridge", [1e-8, 0.0], ids=["ridge", "no-ridge"])
def test_case_07_cosine_manual_vjp_is_the_ridged_formula(ridge):
    """The rewritten manual rule against the closed form of
    ``∂/∂x_i [1 - <x_i, y_j>/(|x_i||y_j| + ridge)]`` (float64), with a zero vector on each
    side, and in float32 near parallel within ``4 eps / |x|`` of float64 (relative)."""
    x = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5], [3.0, 0.2]])
    y = np.array([[1.0, 0.0], [0.0, 0.0], [0.5, -2.0]])
    w = np.array([[0.3, -1.0, 0.5], [0.5, 2.0, -0.2], [-0.7, 0.25, 1.5], [0.1, 0.2, -0.3]])

    def closed(x, y, w):
        gx = np.zeros_like(x)
        for i, xi in enumerate(x):
            for j, yj in enumerate(y):
                nx, ny = np.linalg.norm(xi), np.linalg.norm(yj)
                d = nx * ny + ridge
                if d == 0:
                    continue  # ridge 0 and a zero vector: cost 1, derivative 0
                dc = -yj / d + (0.0 if nx == 0 else (xi @ yj) * ny * xi / (nx * d * d))
                gx[i] += w[i, j] * dc
        return gx

    dx, dy = Cosine(ridge).vjp(x, y, w)
    np.testing.assert_allclose(dx, closed(x, y, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dy, closed(y, x, w.T), rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(4)
    x32 = (rng.normal(size=(6, 2)) + 1e2).astype(np.float32)
    y32 = (rng.normal(size=(5, 2)) + 1e2).astype(np.float32)
    w = rng.uniform(0.1, 1.0, size=(6, 5))
    x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
    gx32, gy32 = Cosine(ridge).vjp(x32, y32, w.astype(np.float32))
    assert gx32.dtype == np.float32
    # the gradient is ~ sin θ / |x| per entry; rounding the directions costs eps / |x|
    scale = w.sum() * EPS32 / np.linalg.norm(x64, axis=-1).min()
    assert np.max(np.abs(gx32 - closed(x64, y64, w))) <= 4 * scale
    assert np.max(np.abs(gy32 - closed(y64, x64, w.T))) <= 4 * scale


#: the property suite's float32 cosine failures (value ~1 % off, reported converged)
FOUND = [
    (
        {
            "seed": 474707, "n": 3, "m": 3, "d": 2, "scale": 1000.0, "offset": 100.0,
            "duplicates": "none", "weights": "random", "mass": 1.0, "tau_a": 0.9,
            "tau_b": 0.9999999, "batch_size": None,
        },
        6.51e-06,
    ),
    (
        {
            "seed": 292047, "n": 7, "m": 7, "d": 2, "scale": 1.0, "offset": 100.0,
            "duplicates": "across", "weights": "random", "mass": 0.001, "tau_a": 0.5,
            "tau_b": 0.5, "batch_size": 2,
        },
        1.29e-06,
    ),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax-jit"])
@pytest.mark.parametrize("found", range(len(FOUND)))
def test_case_07_cosine_float32_far_from_origin_matches_float64(backend, found):
    """The two problems through the property suite's classifier: converged and right
    (value within the classifier's tolerance of the float64 reference, which the new
    cosine resolution term does not reach: 4.1e-8 and 1.2e-8 off before, tolerances
    2.1e-9 and 9.1e-9, except torch's 1.2e-8 in the second, which the resolution term
    of the classifier admits: hence the bound below); gradients within the classifier's
    gradient tolerance."""
    changes, epsilon = FOUND[found]
    params = {
        **S.random_params(np.random.default_rng(0)),
        **changes,
        "zero_point": False,
        "eps_mode": "relative",
        "log_eps": 0.0,
        "lse_mode": True,
        "cost": "cosine",
        "schedule": (10.0, 0.8),
        "invalid": None,
    }
    case = S.build_case(params, "float32")
    params["log_eps"] = math.log10(epsilon / case.epsilon)  # the reported ε
    case = S.build_case(params, "float32")
    assert case.epsilon == pytest.approx(epsilon)
    ref = S.reference(case)
    assert ref.converged
    if backend == "jax-jit":  # eager JAX takes a minute here: the Sinkhorn solve in jit
        pytest.importorskip("jax")
        outcome = S.run_case(case, "jax", jit=True)
        inputs = [S._to_backend("jax", v) for v in (case.x, case.y, case.a, case.b)]
        value = S._solve("jax", *inputs, dict(case.kwargs, epsilon=case.epsilon), True)[0]
    else:  # reg_ot_cost + gradient, then Sinkhorn's flags
        outcome = S.run_case(case, backend)
        be = make_backend(backend)
        kw = S.make_kwargs(dict(case.kwargs, epsilon=case.epsilon))
        value = ot.reg_ot_cost(*(be.to_xp(v) for v in (case.x, case.y, case.a, case.b)), **kw)
    assert outcome.kind == "converged", outcome.detail
    # tighter than the classifier: the per-entry bound 2·eps·max sin θ of the cost matrix
    # (test above) times the mass (the value is Lipschitz in C with the plan's mass);
    # measured 4e-11 and 2e-12 now, 4.1e-8 and 1.2e-8 (torch; 2.2e-8 NumPy) before
    mass = float(case.a.astype(np.float64).sum())
    assert abs(float(to_numpy(value)) - ref.value) <= S.cost_resolution(case) / 2 * mass
