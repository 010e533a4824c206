"""The cross-framework contract: same answers everywhere, native types out, native autodiff.

* every backend gives the NumPy float64 answer (potentials, plan, costs, iteration count);
* float32 in, float32 out, same array type, same device;
* JAX: ``jax.jit`` and ``jax.vmap`` of ``reg_ot_cost``, ``jax.grad`` equal to the
  envelope (Danskin) gradient ``2(x_i Σ_j P_ij - Σ_j P_ij y_j)`` and to central finite
  differences (balanced and unbalanced), and PyTorch ``.backward()`` giving the same
  numbers;
* ``import otcore`` imports neither JAX nor PyTorch.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _helpers import device_str, jax_subset, make_backend

import otcore as ot

N, M = 7, 5


def data(seed=0, n=N, m=M, d=2):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(size=(n, d)), rng.uniform(size=(m, d))
    a, b = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, m)
    a[4] = 0.0
    return x, y, a / a.sum(), b / b.sum()


# -- same answer on every backend --------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize(("tau_a", "tau_b"), [(1.0, 1.0), (0.7, 0.9)])
def test_every_backend_gives_the_numpy_answer(xp, tau_a, tau_b, batch_size):
    jax_subset(xp.name, keep=(tau_a == 1.0) == (batch_size is None))
    x, y, a, b = data()
    kw = dict(tau_a=tau_a, tau_b=tau_b, threshold=1e-11)
    ref = ot.solve(ot.PointCloud(x, y, epsilon=0.1, batch_size=batch_size), a, b, **kw)
    geom = ot.PointCloud(xp.to_xp(x), xp.to_xp(y), epsilon=0.1, batch_size=batch_size)
    out = ot.solve(geom, xp.to_xp(a), xp.to_xp(b), **kw)
    assert int(out.n_iters) == int(ref.n_iters)
    for name in ("f", "g", "matrix", "reg_ot_cost", "primal_cost", "errors"):
        np.testing.assert_allclose(
            xp.to_np(getattr(out, name)), getattr(ref, name), rtol=0, atol=1e-12, err_msg=name
        )
    assert bool(out.converged) and not bool(out.diverged)


# -- float32: dtype, type and device are preserved ----------------------------------------------


@pytest.mark.parametrize("online", [False, True], ids=["dense", "online"])
@pytest.mark.parametrize("lse_mode", [True, False], ids=["lse", "kernel"])
def test_float32_in_float32_out(xp, lse_mode, online):
    jax_subset(xp.name, keep=lse_mode != online)
    x, y, a, b = (xp.to_xp(v, dtype=np.float32) for v in data())
    ref_dtype, ref_device = x.dtype, device_str(x)
    geom = ot.PointCloud(x, y, batch_size=3 if online else None)  # default ε: an array
    out = ot.solve(geom, a, b, tau_b=0.9, lse_mode=lse_mode, threshold=1e-4)
    assert bool(out.converged)
    results = {
        "cost_matrix": geom.cost_matrix,
        "epsilon": geom.epsilon,
        "f": out.f,
        "g": out.g,
        "matrix": out.matrix,
        "reg_ot_cost": out.reg_ot_cost,
        "primal_cost": out.primal_cost,
        "dual_cost": out.dual_cost,
        "ent_reg_cost": out.ent_reg_cost,
        "transport_mass": out.transport_mass,
        "marginal(0)": out.marginal(0),
        "marginal(1)": out.marginal(1),
        "apply(axis=0)": out.apply(a, axis=0),
        "apply(axis=1)": out.apply(b, axis=1),
        "errors": out.errors,
    }
    for name, value in results.items():
        assert isinstance(value, xp.array_type), name
        assert value.dtype == ref_dtype, (name, value.dtype)
        assert device_str(value) == ref_device, name
        assert np.all(np.isfinite(xp.to_np(value)[xp.to_np(value) != -np.inf])), name
    # and the float32 answer is the float64 answer to float32 accuracy
    x64, y64, a64, b64 = data()
    ref = ot.solve(ot.PointCloud(x64, y64), a64, b64, tau_b=0.9, threshold=1e-4)
    assert float(out.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), rel=1e-5)
    assert not bool(out.diverged)


def test_float32_reg_ot_cost(xp):
    x, y, _, _ = (xp.to_xp(v, dtype=np.float32) for v in data())
    cost = ot.reg_ot_cost(x, y, epsilon=0.1, threshold=1e-4)
    assert isinstance(cost, xp.array_type)
    assert cost.dtype == x.dtype and tuple(cost.shape) == ()
    assert device_str(cost) == device_str(x)


# -- JAX ------------------------------------------------------------------------------------

TIGHT = dict(epsilon=0.1, threshold=1e-12, max_iterations=5000)


@pytest.fixture(scope="module")
def jnp():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    return jnp


def analytic_grads(x, y, a=None, b=None, **kw):
    """Envelope gradient of reg_ot_cost for the squared Euclidean cost, from the plan."""
    out = ot.solve(ot.PointCloud(x, y, epsilon=TIGHT["epsilon"]), a, b, threshold=1e-12, **kw)
    P = out.matrix
    gx = 2.0 * (x * P.sum(1)[:, None] - P @ y)
    gy = 2.0 * (y * P.sum(0)[:, None] - P.T @ x)
    return gx, gy


def test_jax_jit_equals_eager(jnp):
    import jax

    x, y, a, b = (jnp.asarray(v) for v in data())
    for kw in (dict(), dict(tau_a=0.8, tau_b=0.9)):
        eager = ot.reg_ot_cost(x, y, a, b, **kw, **TIGHT)
        jitted = jax.jit(lambda x, y, a, b, kw=kw: ot.reg_ot_cost(x, y, a, b, **kw, **TIGHT))
        assert float(jitted(x, y, a, b)) == pytest.approx(float(eager), abs=1e-13, rel=0)


def test_jax_jit_of_solve_reports_convergence_as_arrays(jnp):
    import jax

    x, y, _, _ = (jnp.asarray(v) for v in data())

    @jax.jit
    def run(x, y):
        out = ot.solve(ot.PointCloud(x, y, epsilon=0.01), threshold=1e-12, max_iterations=20)
        return out.converged, out.diverged, out.n_iters, out.reg_ot_cost

    converged, diverged, n_iters, cost = run(x, y)
    assert not bool(converged) and not bool(diverged)
    assert int(n_iters) == 20
    assert np.isfinite(float(cost))


def test_jax_jit_with_a_closed_over_constant_array(jnp):
    """Arrays closed over by a jitted function are concrete but their checks are traced."""
    import jax

    x, y, a, _ = (jnp.asarray(v) for v in data())
    eager = ot.reg_ot_cost(x, y, a, **TIGHT)
    jitted = jax.jit(lambda x: ot.reg_ot_cost(x, y, a, **TIGHT))(x)
    assert float(jitted) == pytest.approx(float(eager), abs=1e-13)


def test_jax_vmap_equals_per_item_and_batched_input(jnp):
    import jax

    rng = np.random.default_rng(1)
    xs = rng.uniform(size=(2, N, 2))
    y = data()[1]
    mapped = jax.vmap(lambda x: ot.reg_ot_cost(x, jnp.asarray(y), **TIGHT))(jnp.asarray(xs))
    assert mapped.shape == (2,)
    batched = ot.reg_ot_cost(jnp.asarray(xs), jnp.asarray(y), **TIGHT)
    for i in range(2):
        one = ot.reg_ot_cost(xs[i], y, **TIGHT)  # eager JAX equals NumPy: tested above
        assert float(mapped[i]) == pytest.approx(float(one), abs=1e-13, rel=0)
        assert float(batched[i]) == pytest.approx(float(one), abs=1e-13, rel=0)


@pytest.mark.parametrize(("tau_a", "tau_b"), [(1.0, 1.0), (0.7, 0.9), (1.0, 0.6)])
def test_jax_grad_is_the_envelope_gradient(jnp, tau_a, tau_b):
    import jax

    x, y, a, b = data()
    kw = dict(tau_a=tau_a, tau_b=tau_b)
    gx_ref, gy_ref = analytic_grads(x, y, a, b, **kw)
    X, Y, A, B = (jnp.asarray(v) for v in (x, y, a, b))
    gx, gy = jax.grad(lambda X, Y: ot.reg_ot_cost(X, Y, A, B, **kw, **TIGHT), argnums=(0, 1))(X, Y)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
    np.testing.assert_allclose(np.asarray(gx), gx_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gy), gy_ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(gx)[a == 0], 0.0)  # no mass, no gradient


@pytest.mark.parametrize(("tau_a", "tau_b"), [(1.0, 1.0), (0.7, 0.9), (1.0, 0.6)])
def test_envelope_gradient_matches_finite_differences(tau_a, tau_b):
    """The Danskin gradient is the true derivative of reg_ot_cost (balanced and
    unbalanced: the updates are exact coordinate ascent for the reported objective)."""
    x, y, a, b = data(seed=2)
    kw = dict(tau_a=tau_a, tau_b=tau_b, threshold=1e-14, max_iterations=20000)
    gx, _ = analytic_grads(x, y, a, b, tau_a=tau_a, tau_b=tau_b)
    h = 1e-5
    fd = np.zeros_like(x)
    for i in range(N):
        for k in range(2):
            e = np.zeros_like(x)
            e[i, k] = h
            hi = ot.solve(ot.PointCloud(x + e, y, epsilon=0.1), a, b, **kw).reg_ot_cost
            lo = ot.solve(ot.PointCloud(x - e, y, epsilon=0.1), a, b, **kw).reg_ot_cost
            fd[i, k] = (hi - lo) / (2 * h)
    # central differences: O(h²) ≈ 1e-10 truncation, ~1e-11 round-off/h; a 30 % error would
    # be ~1e-2 here
    np.testing.assert_allclose(gx, fd, rtol=0, atol=1e-8)


def test_jax_grad_under_jit(jnp):
    import jax

    x, y, a, b = (jnp.asarray(v) for v in data())
    g_eager = jax.grad(lambda x, y: ot.reg_ot_cost(x, y, a, b, **TIGHT))(x, y)
    g_jit = jax.jit(jax.grad(lambda x, y, a, b: ot.reg_ot_cost(x, y, a, b, **TIGHT)))(x, y, a, b)
    np.testing.assert_allclose(np.asarray(g_jit), np.asarray(g_eager), rtol=0, atol=1e-13)


# -- PyTorch -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tau_a", "tau_b"), [(1.0, 1.0), (0.7, 0.9)])
def test_torch_backward_gives_the_same_gradient(tau_a, tau_b):
    torch = pytest.importorskip("torch")
    x, y, a, b = data()
    gx_ref, gy_ref = analytic_grads(x, y, a, b, tau_a=tau_a, tau_b=tau_b)
    X = torch.asarray(x, requires_grad=True)
    Y = torch.asarray(y, requires_grad=True)
    cost = ot.reg_ot_cost(
        X, Y, torch.asarray(a), torch.asarray(b), tau_a=tau_a, tau_b=tau_b, **TIGHT
    )
    assert cost.requires_grad
    cost.backward()
    np.testing.assert_allclose(X.grad.numpy(), gx_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Y.grad.numpy(), gy_ref, rtol=0, atol=1e-12)
    ref = ot.reg_ot_cost(x, y, a, b, tau_a=tau_a, tau_b=tau_b, **TIGHT)
    assert float(cost.detach()) == pytest.approx(float(ref), abs=1e-14)


def test_torch_and_jax_gradients_agree(jnp):
    import jax

    torch = pytest.importorskip("torch")
    x, y, a, _ = data(seed=3)
    gj = jax.grad(lambda X: ot.reg_ot_cost(X, jnp.asarray(y), jnp.asarray(a), **TIGHT))(
        jnp.asarray(x)
    )
    X = torch.asarray(x, requires_grad=True)
    ot.reg_ot_cost(X, torch.asarray(y), torch.asarray(a), **TIGHT).backward()
    np.testing.assert_allclose(X.grad.numpy(), np.asarray(gj), rtol=0, atol=1e-13)


# -- import isolation ---------------------------------------------------------------------------


def test_import_otcore_imports_neither_jax_nor_torch():
    code = (
        "import sys, numpy as np, otcore as ot\n"
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'on import'\n"
        "x = np.random.default_rng(0).uniform(size=(4, 2))\n"
        "ot.reg_ot_cost(x, x[:3], epsilon=0.5, threshold=1e-6)\n"
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'after a solve'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_backend_fixture_converts_both_ways(xp):
    arr = np.arange(6.0).reshape(2, 3)
    x = xp.to_xp(arr)
    assert isinstance(x, xp.array_type)
    np.testing.assert_array_equal(xp.to_np(x), arr)
    assert xp.to_xp(arr, dtype=np.float32).dtype == xp.to_xp(np.zeros(1, np.float32)).dtype
    assert make_backend(xp.name).name == xp.name
