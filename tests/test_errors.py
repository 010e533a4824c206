"""Bad input gets a clear ValueError/TypeError that names the offending argument.

Input checks are backend-independent, so they run on every backend (``xp``); each
``match`` pins the argument's name (and, where it matters, what was wrong with it).
"""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot

N, M, D = 5, 4, 2


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "x": rng.uniform(size=(N, D)),
        "y": rng.uniform(size=(M, D)),
        "a": np.full(N, 1.0 / N),
        "b": np.full(M, 1.0 / M),
        "C": rng.uniform(size=(N, M)),
    }


def problem(xp, x, y, a=None, b=None, **kw):
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=0.1)
    return ot.LinearProblem(
        geom, None if a is None else xp.to_xp(a), None if b is None else xp.to_xp(b), **kw
    )


# -- shapes ---------------------------------------------------------------------------------------


def test_feature_dimension_mismatch(xp, arrays):
    y3 = np.ones((M, 3))
    with pytest.raises(ValueError, match=r"x and y must have the same number of features"):
        ot.PointCloud(xp.to_xp(arrays["x"]), xp.to_xp(y3))
    with pytest.raises(ValueError, match=r"x and y"):
        ot.reg_ot_cost(xp.to_xp(arrays["x"]), xp.to_xp(y3))


def test_weights_length_mismatch(xp, arrays):
    x, y = arrays["x"], arrays["y"]
    with pytest.raises(ValueError, match=r"^a must have length 5 = number of rows"):
        problem(xp, x, y, a=np.full(M, 1.0 / M))
    with pytest.raises(ValueError, match=r"^b must have length 4 = number of columns"):
        problem(xp, x, y, b=np.full(N, 1.0 / N))
    with pytest.raises(ValueError, match=r"^a must have length"):
        ot.reg_ot_cost(xp.to_xp(x), xp.to_xp(y), a=xp.to_xp(np.ones(N + 1)), epsilon=0.1)
    with pytest.raises(ValueError, match=r"^b must have length"):
        ot.solve(xp.to_xp(arrays["C"]), None, xp.to_xp(np.ones(M + 1)), epsilon=0.1)


def test_weights_must_be_at_least_1d(xp, arrays):
    with pytest.raises(ValueError, match=r"^a must have at least 1 dimension"):
        problem(xp, arrays["x"], arrays["y"], a=np.asarray(1.0))


def test_batch_axes_must_broadcast(xp, arrays):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match=r"batch axes do not broadcast: a \S*2\S*, b \S*3"):
        problem(xp, arrays["x"], arrays["y"], a=np.ones((2, N)), b=np.ones((3, M)))
    with pytest.raises(ValueError, match=r"batch axes of x \S*3\S* and y \S*2"):
        ot.PointCloud(xp.to_xp(rng.uniform(size=(3, N, D))), xp.to_xp(rng.uniform(size=(2, M, D))))


@pytest.mark.parametrize("shape", [(N,), ()])
def test_cost_matrix_must_be_2d(xp, shape):
    with pytest.raises(ValueError, match=r"^cost_matrix must have at least 2 dimension"):
        ot.Geometry(xp.to_xp(np.ones(shape)))


@pytest.mark.parametrize("name", ["x", "y"])
def test_points_must_be_2d(xp, arrays, name):
    args = dict(x=arrays["x"], y=arrays["y"])
    args[name] = np.ones(N)
    with pytest.raises(ValueError, match=rf"^{name} must have at least 2 dimension"):
        ot.PointCloud(xp.to_xp(args["x"]), xp.to_xp(args["y"]))


def test_init_potentials_length(xp, arrays):
    C = xp.to_xp(arrays["C"])
    with pytest.raises(ValueError, match=r"init\[0\] \(f\) must have length 5"):
        ot.solve(C, epsilon=0.1, init=(xp.to_xp(np.zeros(M)), xp.to_xp(np.zeros(M))))
    with pytest.raises(ValueError, match=r"init\[1\] \(g\) must have length 4"):
        ot.solve(C, epsilon=0.1, init=(xp.to_xp(np.zeros(N)), xp.to_xp(np.zeros(N))))


# -- values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "b"])
def test_negative_weights(xp, arrays, name):
    w = arrays[name].copy()
    w[1] = -0.1
    kw = {name: w}
    with pytest.raises(ValueError, match=rf"^{name} must be non-negative"):
        problem(xp, arrays["x"], arrays["y"], **kw)


@pytest.mark.parametrize("name", ["a", "b"])
def test_all_zero_weights(xp, arrays, name):
    kw = {name: np.zeros_like(arrays[name])}
    with pytest.raises(ValueError, match=rf"^{name} must have positive total mass"):
        problem(xp, arrays["x"], arrays["y"], **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["x", "y", "a", "b", "C"])
def test_non_finite_inputs(xp, arrays, name, bad):
    v = {k: val.copy() for k, val in arrays.items()}
    v[name].flat[1] = bad
    label = "cost_matrix" if name == "C" else name
    with pytest.raises(ValueError, match=rf"^{label} contains NaN or infinite values"):
        if name == "C":
            ot.Geometry(xp.to_xp(v["C"]), epsilon=0.1)
        else:
            problem(xp, v["x"], v["y"], a=v["a"], b=v["b"])


def test_non_finite_x_through_reg_ot_cost(xp, arrays):
    x = arrays["x"].copy()
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^x contains NaN"):
        ot.reg_ot_cost(xp.to_xp(x), xp.to_xp(arrays["y"]), epsilon=0.1)


# -- types ------------------------------------------------------------------------------------------


def test_mixed_array_libraries_numpy_and_torch(arrays):
    torch = pytest.importorskip("torch")
    x, y = arrays["x"], torch.asarray(arrays["y"])
    with pytest.raises(TypeError, match=r"same array library.*x: numpy.*y: torch"):
        ot.PointCloud(x, y)
    with pytest.raises(TypeError, match=r"same array library.*y: torch"):
        ot.reg_ot_cost(x, y)
    with pytest.raises(TypeError, match=r"same array library.*a: torch"):
        ot.LinearProblem(ot.PointCloud(x, arrays["y"]), torch.asarray(arrays["a"]))
    with pytest.raises(TypeError, match=r"same array library.*b: torch"):
        ot.solve(arrays["C"], None, torch.asarray(arrays["b"]), epsilon=0.1)


def test_mixed_array_libraries_on_every_backend(xp, arrays):
    if xp.name == "numpy":
        pytest.skip("needs a second library")
    with pytest.raises(TypeError, match=r"same array library.*y: numpy"):
        ot.PointCloud(xp.to_xp(arrays["x"]), arrays["y"])
    with pytest.raises(TypeError, match=r"same array library.*a: numpy"):
        ot.LinearProblem(ot.PointCloud(xp.to_xp(arrays["x"])), arrays["a"])


def test_mixed_array_library_epsilon(arrays):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"same array library.*epsilon: torch"):
        ot.PointCloud(arrays["x"], epsilon=torch.asarray(0.1, dtype=torch.float64))


@pytest.mark.parametrize("name", ["x", "y", "a", "b", "C"])
def test_integer_dtypes(xp, arrays, name):
    v = dict(arrays)
    v[name] = np.ones(arrays[name].shape, dtype=np.int64)
    label = "cost_matrix" if name == "C" else name
    with pytest.raises(TypeError, match=rf"^{label} must have a real floating dtype"):
        if name == "C":
            ot.Geometry(xp.to_xp(v["C"]), epsilon=0.1)
        else:
            problem(xp, v["x"], v["y"], a=v["a"], b=v["b"])


def test_mixed_float_dtypes(xp, arrays):
    with pytest.raises(TypeError, match=r"one floating dtype.*x: .*64.*y: .*32"):
        ot.PointCloud(xp.to_xp(arrays["x"]), xp.to_xp(arrays["y"], dtype=np.float32))
    with pytest.raises(TypeError, match=r"one floating dtype.*a: .*32"):
        problem(xp, arrays["x"], arrays["y"], a=arrays["a"].astype(np.float32))


def test_non_arrays(arrays):
    with pytest.raises(TypeError, match=r"^x must be an array .* got list"):
        ot.PointCloud([[0.0, 1.0]])
    with pytest.raises(TypeError, match=r"^y must be an array .* got tuple"):
        ot.PointCloud(arrays["x"], ((0.0, 1.0),))
    with pytest.raises(TypeError, match=r"^geom must be a Geometry or PointCloud"):
        ot.LinearProblem(arrays["C"])
    with pytest.raises(TypeError, match=r"^expected a LinearProblem"):
        ot.Sinkhorn()(arrays["C"])


# -- ε, τ, scaling, costs ---------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, -0.1, np.inf, np.nan])
def test_bad_epsilon(xp, arrays, eps):
    x = xp.to_xp(arrays["x"])
    with pytest.raises(ValueError, match=r"^epsilon must be a positive finite number"):
        ot.PointCloud(x, epsilon=eps)
    with pytest.raises(ValueError, match=r"^epsilon must be a positive finite number"):
        ot.Geometry(xp.to_xp(arrays["C"]), epsilon=eps)
    with pytest.raises(ValueError, match=r"^epsilon must be"):
        ot.reg_ot_cost(x, epsilon=eps)


@pytest.mark.parametrize("eps", [0.0, -0.1, np.inf])
def test_bad_epsilon_array(xp, arrays, eps):
    with pytest.raises(ValueError, match=r"^epsilon must be positive and finite"):
        ot.PointCloud(xp.to_xp(arrays["x"]), epsilon=xp.to_xp(np.asarray(eps)))


def test_epsilon_of_the_wrong_type(arrays):
    with pytest.raises(TypeError, match=r"^epsilon must be a positive float or an array"):
        ot.PointCloud(arrays["x"], epsilon="0.1")
    with pytest.raises(TypeError, match=r"^epsilon must be a positive float or a 0-d array"):
        ot.PointCloud(arrays["x"], epsilon=True)


def test_relative_epsilon_of_a_constant_cost_is_refused(xp):
    with pytest.raises(ValueError, match=r"std of the cost matrix is 0.*absolute epsilon"):
        _ = ot.Geometry(xp.to_xp(np.ones((3, 3)))).epsilon


@pytest.mark.parametrize("tau", [0.0, -0.5, 1.5, np.nan])
@pytest.mark.parametrize("name", ["tau_a", "tau_b"])
def test_tau_outside_unit_interval(xp, arrays, name, tau):
    with pytest.raises(ValueError, match=rf"^{name} must be in \(0, 1\]"):
        problem(xp, arrays["x"], arrays["y"], **{name: tau})
    with pytest.raises(ValueError, match=rf"^{name} must be in \(0, 1\]"):
        ot.reg_ot_cost(xp.to_xp(arrays["x"]), epsilon=0.1, **{name: tau})


def test_tau_of_the_wrong_type(arrays):
    with pytest.raises(TypeError, match=r"^tau_a must be a float"):
        ot.LinearProblem(ot.PointCloud(arrays["x"]), tau_a="1")
    with pytest.raises(TypeError, match=r"^tau_b must be a float"):
        ot.LinearProblem(ot.PointCloud(arrays["x"]), tau_b=True)


@pytest.mark.parametrize(
    ("scale", "exc", "msg"),
    [
        ("foo", ValueError, r"^scale_cost must be a positive float or one of"),
        ("std", ValueError, r"^scale_cost must be a positive float or one of"),
        (0.0, ValueError, r"^scale_cost must be positive and finite"),
        (-2.0, ValueError, r"^scale_cost must be positive and finite"),
        (np.inf, ValueError, r"^scale_cost must be positive and finite"),
        (None, TypeError, r"^scale_cost must be a positive float or a string"),
        (True, TypeError, r"^scale_cost must be a positive float or a string"),
    ],
)
def test_bad_scale_cost(xp, arrays, scale, exc, msg):
    with pytest.raises(exc, match=msg):
        ot.PointCloud(xp.to_xp(arrays["x"]), scale_cost=scale)
    with pytest.raises(exc, match=msg):
        ot.Geometry(xp.to_xp(arrays["C"]), scale_cost=scale)


def test_scale_cost_statistic_of_zero_is_refused(xp):
    geom = ot.Geometry(xp.to_xp(np.zeros((3, 3))), epsilon=1.0, scale_cost="max_cost")
    with pytest.raises(ValueError, match=r"^scale_cost='max_cost' is zero"):
        _ = geom.cost_matrix


def test_median_scale_is_refused_online(arrays):
    geom = ot.PointCloud(arrays["x"], batch_size=2, scale_cost="median", epsilon=0.1)
    with pytest.raises(ValueError, match=r"scale_cost='median' is not available in online"):
        _ = geom.cost_matrix


@pytest.mark.parametrize("rel", ["median", "max", True, 0.5])
def test_bad_relative_epsilon(xp, arrays, rel):
    with pytest.raises(ValueError, match=r"^relative_epsilon must be None, 'mean' or 'std'"):
        ot.PointCloud(xp.to_xp(arrays["x"]), relative_epsilon=rel)


def test_geometry_options_in_solve_with_a_geometry(arrays):
    geom = ot.Geometry(arrays["C"], epsilon=0.1)
    for kw in (dict(epsilon=0.2), dict(relative_epsilon="std"), dict(scale_cost="mean")):
        with pytest.raises(ValueError, match=r"epsilon, relative_epsilon and scale_cost belong"):
            ot.solve(geom, **kw)


@pytest.mark.parametrize(
    ("cost", "exc", "msg"),
    [
        ("manhattan", ValueError, r"^unknown cost 'manhattan'; expected one of"),
        ("pnorm", ValueError, r"cost='pnorm' needs an exponent"),
        (3, TypeError, r"^cost must be a string, a CostFn or a callable, got int"),
        (None, TypeError, r"^cost must be a string, a CostFn or a callable, got NoneType"),
    ],
)
def test_bad_cost(xp, arrays, cost, exc, msg):
    with pytest.raises(exc, match=msg):
        ot.PointCloud(xp.to_xp(arrays["x"]), cost=cost)


@pytest.mark.parametrize("p", [0.5, 0.0, -1.0, np.nan, "2", True])
def test_pnorm_exponent_below_one(p):
    with pytest.raises(ValueError, match=r"^p must be a number >= 1"):
        ot.costs.PNorm(p)


def test_user_cost_with_the_wrong_output_shape(xp, arrays):
    def total(x, y):  # ignores the broadcast convention: reduces everything
        return (x - y).sum() if hasattr(x - y, "sum") else None

    def no_broadcast(x, y):  # returns (n, m, d): forgot to reduce the feature axis
        return x - y

    for fn in (total, no_broadcast):
        geom = ot.PointCloud(xp.to_xp(arrays["x"]), xp.to_xp(arrays["y"]), cost=fn, epsilon=0.1)
        with pytest.raises(ValueError, match=r"cost callable must return shape \(5, 4\)"):
            _ = geom.cost_matrix


def test_bad_batch_size(arrays):
    for bs in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1"):
            ot.PointCloud(arrays["x"], batch_size=bs)


# -- Sinkhorn options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        (dict(threshold=-1e-3), ValueError, r"^threshold must be a finite number >= 0"),
        (dict(threshold="1e-3"), ValueError, r"^threshold must be a finite number >= 0"),
        (dict(threshold=float("nan")), ValueError, r"^threshold must be a finite number >= 0"),
        (dict(threshold=float("inf")), ValueError, r"^threshold must be a finite number >= 0"),
        (dict(inner_iterations=0), ValueError, r"^inner_iterations must be an integer >= 1"),
        (dict(inner_iterations=2.5), ValueError, r"^inner_iterations must be an integer >= 1"),
        (dict(max_iterations=0), ValueError, r"^max_iterations must be an integer >= 1"),
        (dict(min_iterations=-1), ValueError, r"^min_iterations must be an integer >= 0"),
        (
            dict(min_iterations=100, max_iterations=10),
            ValueError,
            r"^min_iterations \(100\) must not exceed max_iterations \(10\)",
        ),
        (dict(momentum=0.0), ValueError, r"^momentum must be None or a number in \(0, 2\)"),
        (dict(momentum=2.0), ValueError, r"^momentum must be None or a number in \(0, 2\)"),
        (dict(momentum=-0.5), ValueError, r"^momentum must be None or a number in \(0, 2\)"),
        (dict(momentum=True), ValueError, r"^momentum must be None or a number in \(0, 2\)"),
        (dict(norm_error=0.5), ValueError, r"^norm_error must be a number >= 1"),
        (
            dict(epsilon_schedule=(10.0, 0.9), lse_mode=False),
            ValueError,
            r"^epsilon_schedule requires lse_mode=True",
        ),
        (dict(epsilon_schedule=(0.5, 0.9)), ValueError, r"^epsilon_schedule init must be >= 1"),
        (dict(epsilon_schedule=(10.0, 0.0)), ValueError, r"^epsilon_schedule decay must be in"),
        (dict(epsilon_schedule=(10.0, 1.5)), ValueError, r"^epsilon_schedule decay must be in"),
        (dict(epsilon_schedule="fast"), TypeError, r"^epsilon_schedule must be None, an Eps"),
        (dict(initializer="zeros"), ValueError, r"^initializer must be 'default' or a callable"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_sinkhorn_options(arrays, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        ot.Sinkhorn(**kw)
    with pytest.raises(exc, match=msg):  # the convenience functions pass them through
        ot.solve(arrays["C"], epsilon=0.1, **kw)


# -- output methods ---------------------------------------------------------------------------------


def test_apply_with_a_wrong_vector_or_axis(xp, arrays):
    out = ot.solve(xp.to_xp(arrays["C"]), epsilon=0.1, threshold=1e-6)
    with pytest.raises(ValueError, match=r"^vec must have length 5 on its last axis for axis=0"):
        out.apply(xp.to_xp(np.ones(M)), axis=0)
    with pytest.raises(ValueError, match=r"^vec must have length 4 on its last axis for axis=1"):
        out.apply(xp.to_xp(np.ones(N)), axis=1)
    with pytest.raises(ValueError, match=r"^vec must have length 5"):
        out.apply(xp.to_xp(np.asarray(1.0)), axis=0)
    for axis in (2, -1, "rows"):
        with pytest.raises(ValueError, match=r"^axis must be 0 \(apply Pᵀ"):
            out.apply(xp.to_xp(np.ones(N)), axis=axis)
        with pytest.raises(ValueError, match=r"^axis must be 0 or 1"):
            out.marginal(axis)


def test_array_epsilon_shape_must_match_the_batch(arrays):
    with pytest.raises(ValueError, match=r"array epsilon must be 0-d or have the geometry's batch"):
        ot.PointCloud(arrays["x"], arrays["y"], epsilon=np.full(1, 0.1))
    x_batch = np.stack([arrays["x"]] * 3)
    geom = ot.PointCloud(x_batch, arrays["y"], epsilon=np.full(3, 0.1))
    assert geom.epsilon.shape == (3,)
