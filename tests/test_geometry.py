"""Geometries: cost functions, cost scaling, ε, and online (blockwise) evaluation.

Costs are checked against SciPy's ``cdist``; statistics against NumPy on the same matrix
(and OTT-JAX where it has the same option); online mode (``PointCloud(batch_size=k)``)
against the materialised geometry on the same inputs, to float64 round-off.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from _helpers import jax_subset, make_backend, to_numpy
from scipy.spatial.distance import cdist

import otcore as ot

N, M, D = 7, 5, 3


@pytest.fixture
def clouds():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, D))
    y = rng.normal(size=(M, D)) + 0.3
    y[1] = x[2]  # a coincident pair: zero distance, on the edge of the costs' domains
    return x, y


# -- costs ---------------------------------------------------------------------------------


def l1_cost(x, y):
    """A user cost in array API code, on broadcast views (..., n, 1, d) and (..., 1, m, d)."""
    xp = array_api_compat.array_namespace(x, y)
    return xp.sum(xp.abs(x - y), axis=-1)


def cosine_reference(x, y):
    # scipy's cosine distance; otcore adds a 1e-8 ridge to the norm product
    return cdist(x, y, "cosine")


COSTS = {
    "sqeuclidean": ("sqeuclidean", lambda x, y: cdist(x, y, "sqeuclidean"), 1e-13),
    "euclidean": ("euclidean", lambda x, y: cdist(x, y, "euclidean"), 1e-14),
    "pnorm1": (ot.costs.PNorm(1), lambda x, y: cdist(x, y, "cityblock"), 1e-14),
    "pnorm1.5": (
        ot.costs.PNorm(1.5),
        lambda x, y: cdist(x, y, "minkowski", p=1.5) ** 1.5,
        1e-13,
    ),
    "pnorm3": (ot.costs.PNorm(3.0), lambda x, y: cdist(x, y, "minkowski", p=3) ** 3, 1e-12),
    "cosine": ("cosine", cosine_reference, 1e-7),  # the ridge: |ΔC| ≤ 1e-8/(|x||y|) ≲ 1e-7
    "user-l1": (l1_cost, lambda x, y: cdist(x, y, "cityblock"), 1e-14),
}


@pytest.mark.parametrize("name", list(COSTS))
def test_cost_matrix_matches_scipy(xp, clouds, name):
    cost, reference, atol = COSTS[name]
    x, y = clouds
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), cost=cost, epsilon=1.0)
    C = geom.cost_matrix
    assert isinstance(C, xp.array_type)
    assert tuple(C.shape) == (N, M)
    np.testing.assert_allclose(xp.to_np(C), reference(x, y), rtol=0, atol=atol)


def test_cosine_ridge_is_the_only_difference(clouds):
    x, y = clouds
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    expected = 1.0 - (x @ y.T) / (nx[:, None] * ny[None, :] + 1e-8)
    C = ot.PointCloud(x, y, cost="cosine", epsilon=1.0).cost_matrix
    np.testing.assert_allclose(C, expected, rtol=0, atol=1e-15)


def test_pnorm2_is_sqeuclidean(xp, clouds):
    x, y = (xp.to_xp(v) for v in clouds)
    c_p = ot.PointCloud(x, y, cost=ot.costs.PNorm(2), epsilon=1.0).cost_matrix
    c_sq = ot.PointCloud(x, y, epsilon=1.0).cost_matrix
    np.testing.assert_allclose(xp.to_np(c_p), xp.to_np(c_sq), rtol=0, atol=1e-13)


def test_cost_names_are_case_insensitive_and_costfn_instances_work(clouds):
    x, y = clouds
    ref = cdist(x, y, "euclidean")
    for cost in ("Euclidean", "EUCLIDEAN", ot.costs.Euclidean()):
        np.testing.assert_allclose(
            ot.PointCloud(x, y, cost=cost).cost_matrix, ref, rtol=0, atol=1e-14
        )


def test_y_defaults_to_x(clouds):
    x, _ = clouds
    C = ot.PointCloud(x, epsilon=1.0).cost_matrix
    np.testing.assert_allclose(C, cdist(x, x, "sqeuclidean"), rtol=0, atol=1e-13)
    assert np.all(C >= 0)  # |x|² + |y|² - 2<x,y> is clamped at 0: never negative
    np.testing.assert_allclose(np.diag(C), 0.0, rtol=0, atol=1e-15)


def test_batched_point_clouds_give_batched_costs(xp):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 3, N, D)), rng.normal(size=(3, M, D))  # y broadcasts
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), cost=l1_cost, epsilon=1.0)
    assert geom.batch_shape == (2, 3) and geom.shape == (N, M)
    C = xp.to_np(geom.cost_matrix)
    assert C.shape == (2, 3, N, M)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(C[i, j], cdist(x[i, j], y[j], "cityblock"), atol=1e-14)


def test_geometry_from_a_cost_matrix_keeps_it(xp):
    C = np.random.default_rng(3).uniform(size=(N, M))
    geom = ot.Geometry(xp.to_xp(C), epsilon=0.5)
    assert geom.shape == (N, M) and geom.batch_shape == ()
    np.testing.assert_array_equal(xp.to_np(geom.cost_matrix), C)
    np.testing.assert_allclose(xp.to_np(geom.kernel_matrix()), np.exp(-C / 0.5), rtol=1e-15, atol=0)


# -- scale_cost ------------------------------------------------------------------------------

SCALES = {
    "mean": np.mean,
    "max_cost": np.max,
    "median": np.median,
    2.5: lambda C: 2.5,
}


@pytest.mark.parametrize("scale", list(SCALES), ids=str)
def test_scale_cost_divides_by_the_statistic(xp, clouds, scale):
    x, y = clouds
    raw = cdist(x, y, "sqeuclidean")
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), scale_cost=scale, epsilon=0.1)
    stat = SCALES[scale](raw)
    np.testing.assert_allclose(xp.to_np(geom.cost_matrix), raw / stat, rtol=1e-13, atol=1e-15)
    assert float(to_numpy(geom.inv_scale_cost)) == pytest.approx(1.0 / stat, rel=1e-13)
    # ε is in units of the scaled cost: the default is 0.05 · std(C / scale)
    default = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), scale_cost=scale)
    assert float(to_numpy(default.epsilon)) == pytest.approx(0.05 * np.std(raw / stat), rel=1e-12)


def test_median_of_an_even_number_of_entries():
    C = np.arange(1.0, 13.0).reshape(3, 4) ** 2  # 12 entries: median = (36 + 49) / 2
    geom = ot.Geometry(C, scale_cost="median", epsilon=1.0)
    assert float(geom.inv_scale_cost) == pytest.approx(2.0 / 85.0, rel=1e-15)
    np.testing.assert_allclose(geom.cost_matrix, C * 2.0 / 85.0, rtol=1e-15)


@pytest.mark.parametrize("scale", ["mean", "max_cost", "median", 2.5], ids=str)
def test_scale_cost_matches_ott(clouds, scale):
    pytest.importorskip("ott")
    import jax.numpy as jnp
    from ott.geometry import pointcloud

    x, y = clouds
    ref = pointcloud.PointCloud(jnp.asarray(x), jnp.asarray(y), scale_cost=scale)
    geom = ot.PointCloud(x, y, scale_cost=scale)
    assert float(geom.inv_scale_cost) == pytest.approx(float(ref.inv_scale_cost), rel=1e-13)
    # atol: OTT's |x|²+|y|²-2x·y leaves ~1e-16 where otcore's centred expansion gives 0
    np.testing.assert_allclose(
        geom.cost_matrix, np.asarray(ref.cost_matrix), rtol=1e-13, atol=1e-14
    )
    assert float(geom.epsilon) == pytest.approx(float(ref.epsilon), rel=1e-13)


def test_batched_scale_cost_is_per_problem():
    rng = np.random.default_rng(4)
    x, y = (
        rng.normal(size=(3, N, D)),
        rng.normal(size=(3, M, D)) * np.array([1, 2, 5])[:, None, None],
    )
    geom = ot.PointCloud(x, y, scale_cost="max_cost")
    C = geom.cost_matrix
    for i in range(3):
        raw = cdist(x[i], y[i], "sqeuclidean")
        np.testing.assert_allclose(C[i], raw / raw.max(), rtol=1e-13)
    np.testing.assert_allclose(geom.epsilon, [0.05 * np.std(C[i]) for i in range(3)], rtol=1e-12)


# -- ε -----------------------------------------------------------------------------------------


def test_default_epsilon_is_5_percent_of_std(xp, clouds):
    x, y = clouds
    raw = cdist(x, y, "sqeuclidean")
    eps = ot.PointCloud(xp.to_xp(x), xp.to_xp(y)).epsilon
    assert float(to_numpy(eps)) == pytest.approx(0.05 * np.std(raw), rel=1e-13)
    C = np.random.default_rng(0).uniform(size=(N, M))
    assert float(to_numpy(ot.Geometry(xp.to_xp(C)).epsilon)) == pytest.approx(
        0.05 * np.std(C), rel=1e-13
    )


@pytest.mark.parametrize("relative", ["mean", "std"])
@pytest.mark.parametrize("epsilon", [None, 0.2])
def test_relative_epsilon(xp, clouds, relative, epsilon):
    x, y = clouds
    raw = cdist(x, y, "sqeuclidean")
    stat = {"mean": np.mean, "std": np.std}[relative](raw)
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=epsilon, relative_epsilon=relative)
    expected = (0.05 if epsilon is None else epsilon) * stat
    assert float(to_numpy(geom.epsilon)) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("relative", ["mean", "std"])
def test_relative_epsilon_matches_ott(clouds, relative):
    pytest.importorskip("ott")
    import jax.numpy as jnp
    from ott.geometry import pointcloud

    x, y = clouds
    for eps in (None, 0.2):
        ref = pointcloud.PointCloud(
            jnp.asarray(x), jnp.asarray(y), epsilon=eps, relative_epsilon=relative
        )
        geom = ot.PointCloud(x, y, epsilon=eps, relative_epsilon=relative)
        assert float(geom.epsilon) == pytest.approx(float(ref.epsilon), rel=1e-13)


def test_absolute_epsilon_is_kept_as_given(xp, clouds):
    x, y = (xp.to_xp(v) for v in clouds)
    assert ot.PointCloud(x, y, epsilon=0.37).epsilon == 0.37
    assert ot.PointCloud(x, y, epsilon=0.37, scale_cost="mean").epsilon == 0.37


def test_epsilon_as_a_0d_array(xp, clouds):
    x, y = clouds
    e = xp.to_xp(np.asarray(0.3))
    out = ot.solve(ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=e), threshold=1e-12)
    ref = ot.solve(ot.PointCloud(x, y, epsilon=0.3), threshold=1e-12)
    np.testing.assert_allclose(xp.to_np(out.matrix), ref.matrix, rtol=0, atol=1e-14)
    assert float(out.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), abs=1e-14)


# -- online (batch_size) vs materialised ------------------------------------------------------

# batch sizes: 1, one dividing neither n=7 nor m=5, one dividing m, one larger than both
BATCH_SIZES = [1, 3, 5, 8]


@pytest.fixture(scope="module")
def online_data():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(N, 2)), rng.normal(size=(M, 2))
    a, b = rng.uniform(0.2, 1.0, N), rng.uniform(0.2, 1.0, M)
    a[3] = 0.0
    return x, y, a / a.sum(), b / b.sum(), rng.normal(size=N), rng.normal(size=M)


def assert_online_matches_dense(xp, data, batch_size, cost, lse_mode, tau):
    x, y, a, b, u, v = (xp.to_xp(t) for t in data)
    kw = dict(cost=cost, epsilon=0.5)
    solve = dict(tau_a=tau, tau_b=tau, lse_mode=lse_mode, threshold=1e-12)
    dense = ot.solve(ot.PointCloud(x, y, **kw), a, b, **solve)
    online_geom = ot.PointCloud(x, y, batch_size=batch_size, **kw)
    assert online_geom.is_online
    online = ot.solve(online_geom, a, b, **solve)
    assert bool(dense.converged) and bool(online.converged)
    assert int(online.n_iters) == int(dense.n_iters)

    def same(p, q, what):
        np.testing.assert_allclose(xp.to_np(p), xp.to_np(q), rtol=1e-12, atol=1e-12, err_msg=what)

    same(online.f, dense.f, "f")
    same(online.g, dense.g, "g")
    for name in ("reg_ot_cost", "primal_cost", "matrix", "dual_cost", "ent_reg_cost"):
        same(getattr(online, name), getattr(dense, name), name)
    same(online.apply(u, axis=0), dense.apply(u, axis=0), "apply axis=0")
    same(online.apply(v, axis=1), dense.apply(v, axis=1), "apply axis=1")
    same(online.marginal(0), dense.marginal(0), "marginal 0")
    same(online.marginal(1), dense.marginal(1), "marginal 1")
    # the dense plan applied by hand: apply is Pᵀu / Pv
    P = xp.to_np(dense.matrix)
    same(online.apply(u, axis=0), P.T @ xp.to_np(u), "Pᵀu")
    same(online.apply(v, axis=1), P @ xp.to_np(v), "Pv")
    same(online_geom.cost_matrix, dense.geom.cost_matrix, "cost_matrix")


@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_online_equals_materialised(xp, online_data, batch_size, lse_mode):
    jax_subset(xp.name, keep=batch_size == 3)
    assert_online_matches_dense(xp, online_data, batch_size, "sqeuclidean", lse_mode, 1.0)


@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
@pytest.mark.parametrize("cost", ["euclidean", "cosine", "pnorm1.5", "user-l1"])
def test_online_equals_materialised_other_costs_unbalanced(online_data, cost, lse_mode):
    assert_online_matches_dense(
        make_backend("numpy"), online_data, 3, COSTS[cost][0], lse_mode, 0.8
    )


@pytest.mark.parametrize("relative", ["mean", "std"])
@pytest.mark.parametrize("scale", ["mean", "max_cost", 2.0], ids=str)
def test_online_statistics_equal_dense(xp, clouds, scale, relative):
    x, y = (xp.to_xp(v) for v in clouds)
    dense = ot.PointCloud(x, y, scale_cost=scale, relative_epsilon=relative)
    online = ot.PointCloud(x, y, scale_cost=scale, relative_epsilon=relative, batch_size=2)
    assert float(to_numpy(online.inv_scale_cost)) == pytest.approx(
        float(to_numpy(dense.inv_scale_cost)), rel=1e-13
    )
    assert float(to_numpy(online.epsilon)) == pytest.approx(
        float(to_numpy(dense.epsilon)), rel=1e-12
    )
    # default ε (std of the scaled cost), computed blockwise
    assert float(to_numpy(ot.PointCloud(x, y, batch_size=3).epsilon)) == pytest.approx(
        float(to_numpy(ot.PointCloud(x, y).epsilon)), rel=1e-12
    )


def test_online_batched_clouds_equal_dense():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, N, 2)), rng.normal(size=(2, M, 2))
    kw = dict(threshold=0.0, max_iterations=200)  # same iterations for both, exactly
    dense = ot.solve(ot.PointCloud(x, y, epsilon=0.5), **kw)
    online = ot.solve(ot.PointCloud(x, y, epsilon=0.5, batch_size=3), **kw)
    np.testing.assert_allclose(online.f, dense.f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(online.reg_ot_cost, dense.reg_ot_cost, rtol=0, atol=1e-12)
    np.testing.assert_allclose(online.matrix, dense.matrix, rtol=0, atol=1e-13)
