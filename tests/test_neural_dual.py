"""W2NeuralDual: Gaussian closed forms (Bures map, translation), units (no factor 2),
JAX/PyTorch agreement, options and error paths."""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot
from otcore._lib import tree as _tree

NEURAL = ot.neural


def _spd(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q @ np.diag(rng.uniform(0.5, 2.0, d)) @ q.T


def _sqrtm(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(w)) @ v.T


class GaussianPair:
    """N(m1, S1) → N(m2, S2) with the closed-form Bures map ``T(x) = m2 + A(x − m1)``."""

    def __init__(self, d, seed=0):
        rng = np.random.default_rng(seed)
        self.d = d
        self.s1, self.s2 = _spd(rng, d), _spd(rng, d)
        self.m1, self.m2 = rng.normal(size=d), rng.normal(size=d)
        h = _sqrtm(self.s1)
        hi = np.linalg.inv(h)
        self.a = hi @ _sqrtm(h @ self.s2 @ h) @ hi
        self.l1, self.l2 = np.linalg.cholesky(self.s1), np.linalg.cholesky(self.s2)
        self.w2 = float(
            np.sum((self.m1 - self.m2) ** 2)
            + np.trace(self.s1 + self.s2 - 2 * _sqrtm(h @ self.s2 @ h))
        )

    def sample(self, which, n, seed, dtype=np.float32):
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self.d))
        out = self.m1 + z @ self.l1.T if which == 0 else self.m2 + z @ self.l2.T
        return out.astype(dtype)

    def loader(self, which, seed, n=256, dtype=np.float32):
        rng = np.random.default_rng(seed)
        while True:
            yield self.sample(which, n, int(rng.integers(2**31)), dtype)

    def T(self, x):
        return self.m2 + (x - self.m1) @ self.a.T

    def T_inv(self, y):
        return self.m1 + (y - self.m2) @ np.linalg.inv(self.a).T


def l2_uvp(t_hat, t_star, target_var):
    return 100.0 * np.mean(np.sum((t_hat - t_star) ** 2, axis=1)) / target_var


def _solver(d, iters, lr, hidden=(32, 32), backend="jax", **kw):
    kw.setdefault("conjugate_solver", NEURAL.FenchelConjugateLBFGS(max_iter=10))
    return NEURAL.W2NeuralDual(
        d,
        neural_f=NEURAL.ICNN(d, hidden),
        neural_g=NEURAL.ICNN(d, hidden),
        optimizer_f=NEURAL.Adam(lr),
        optimizer_g=NEURAL.Adam(lr),
        num_train_iters=iters,
        backend=backend,
        progress_bar=False,
        **kw,
    )


@pytest.mark.parametrize(("d", "iters", "bound"), [(2, 400, 1.0), (8, 400, 5.0)])
def test_gaussian_bures_map_l2_uvp(d, iters, bound):
    """Learned map vs the closed-form Bures map: L2-UVP below 1 % (d=2) / 5 % (d=8),
    forward and inverse; W2² on coupled samples within 2 % of the closed form."""
    pytest.importorskip("jax")
    pair = GaussianPair(d, seed=d)
    pot = _solver(d, iters, 1e-2)(pair.loader(0, 1), pair.loader(1, 2))
    x = pair.sample(0, 4000, 99)
    y = pair.sample(1, 4000, 98)
    fwd = l2_uvp(np.asarray(pot.transport(x)), pair.T(x), np.trace(pair.s2))
    inv = l2_uvp(np.asarray(pot.transport(y, forward=False)), pair.T_inv(y), np.trace(pair.s1))
    print(f"d={d}: L2-UVP forward {fwd:.3f} %, inverse {inv:.3f} %")
    assert fwd < bound
    assert inv < bound
    # coupled samples (y = T(x)) remove most Monte Carlo noise from the estimate
    dist = float(pot.distance(x, pair.T(x).astype(np.float32)))
    assert dist == pytest.approx(pair.w2, rel=0.02)


def test_translation_displacement_and_distance():
    """N(0, I) → N(m, I) with JAX batches: ∇f(x) − x ≈ m, ∇f*(y) − y ≈ −m, W2² = ‖m‖².

    Gaussian (Bures) initialisation of f and g from the first batches (256 points: its mean
    is off by ~0.06); training on fresh batches must bring the map to the translation."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    d, m = 2, np.array([2.0, -1.0])
    rng = np.random.default_rng(0)

    def loader(shift, seed):
        r = np.random.default_rng(seed)
        while True:
            yield jnp.asarray(r.normal(size=(256, d)) + shift, dtype=jnp.float32)

    # same program as the d=2 Bures test (the compilation cache shares it)
    solver = _solver(d, 400, 1e-2, backend=None)
    solver.neural_f = NEURAL.ICNN(d, (32, 32), init="gaussian")
    solver.neural_g = NEURAL.ICNN(d, (32, 32), init="gaussian")
    pot = solver(loader(0.0, 1), loader(m, 2))
    x = jnp.asarray(rng.normal(size=(2000, d)), dtype=jnp.float32)
    moved = pot.transport(x)
    assert isinstance(moved, jax.Array) and moved.dtype == jnp.float32
    disp = np.asarray(moved - x)
    back = np.asarray(pot.transport(x + m, forward=False) - x)
    print("mean displacement", disp.mean(0), "inverse", back.mean(0))
    np.testing.assert_allclose(disp.mean(0), m, atol=0.05)
    assert np.sqrt(np.mean(np.sum((disp - m) ** 2, 1))) < 0.1
    np.testing.assert_allclose(back.mean(0), 0, atol=0.05)
    dist = float(pot.distance(x, x + m))
    assert dist == pytest.approx(float(m @ m), rel=0.02)


def _exact_translation_potentials(backend, m):
    """DualPotentials holding f(x) = ½‖x‖² + ⟨m, x⟩ exactly (hidden units switched off)."""
    from otcore.backends import adapter_by_name

    ops = adapter_by_name(backend).training()
    d = m.shape[0]
    net = NEURAL.ICNN(d, dim_hidden=(4,))
    p = net.init_params(np, np.float64, "cpu", seed=0)
    p["w_x"][0]["bias"] = np.full(4, -1e3)
    p["w_x"][1]["bias"] = np.full(1, -1e3)
    p["final"]["lin"] = m[:, None].astype(float)
    params = _tree.tree_map(lambda a: ops.asarray(a, dtype=None), p)
    g = net.init_params(np, np.float64, "cpu", seed=1)  # ∇g is only a warm start
    g = _tree.tree_map(lambda a: ops.asarray(a, dtype=None), g)
    solver = NEURAL.FenchelConjugateLBFGS(gtol=1e-9, max_iter=50)
    return NEURAL.DualPotentials(net, net, params, g, ops, solver)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_dual_potentials_full_displacement_and_distance(backend):
    """The OTT 0.6 pitfall: with f(x) = ½‖x‖² + ⟨m, x⟩, transport moves by m (not m/2) and
    distance is ‖m‖² (not ‖m‖²/2)."""
    pytest.importorskip(backend)
    m = np.array([3.0, -1.0, 0.5])
    pot = _exact_translation_potentials(backend, m)
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_allclose(pot.transport(x) - x, np.broadcast_to(m, x.shape), atol=1e-10)
    np.testing.assert_allclose(pot.transport(x + m, forward=False), x, atol=1e-6)  # ∇f*(y) = y − m
    assert float(pot.distance(x, x + m)) == pytest.approx(float(m @ m), rel=1e-9)
    # f*(y) = ½‖y − m‖²: the conjugate values themselves
    y = x + m
    np.testing.assert_allclose(pot.g(y), 0.5 * np.sum((y - m) ** 2, 1), atol=1e-9)
    np.testing.assert_allclose(pot.f(x), 0.5 * np.sum(x**2, 1) + x @ m, atol=1e-12)
    assert isinstance(pot.f(x), np.ndarray)  # NumPy in, NumPy out


def test_jax_and_torch_agree():
    """Same seed, same batches, float64: the two frameworks learn the same map."""
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    pair = GaussianPair(2, seed=5)
    maps = []
    for backend in ("jax", "torch"):
        solver = _solver(
            2,
            10,
            3e-2,
            hidden=(8,),
            backend=backend,
            seed=3,
            conjugate_solver=NEURAL.FenchelConjugateLBFGS(max_iter=5),
        )
        pot = solver(pair.loader(0, 1, 32, np.float64), pair.loader(1, 2, 32, np.float64))
        maps.append(np.asarray(pot.transport(pair.sample(0, 200, 7, np.float64))))
    x = pair.sample(0, 200, 7, np.float64)
    moved = np.abs(maps[0] - x).max()
    assert moved > 0.1  # training did something
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-6, atol=1e-6)
