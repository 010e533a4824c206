"""The monitored fixed-point loop (``otcore.solvers.loop``) on a toy contraction.

``x <- θ cos(x)`` (θ in (0, 1), one problem per entry of θ) converges to the ``x*`` with
``x* = θ cos x*``, whose derivative is ``dx*/dθ = cos x* / (1 + θ sin x*)``. The error is
the displacement over a block, ``|x_new − x_old|``. References: the same iteration as a
plain NumPy loop (written here) and the analytic derivative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import to_numpy

from otcore.backends import adapter_for
from otcore.solvers.loop import Stopping, fixed_point_loop

THETA = np.array([0.5, 0.8, 0.3])


def _run(theta, x0, stopping, **kw):
    ad = adapter_for(theta)
    xp = ad.xp

    def step(t, v):
        return {"x": theta * xp.cos(v["x"])}

    def error(new, old):
        return xp.abs(new["x"] - old["x"])

    return fixed_point_loop(ad, step, error, {"x": x0}, stopping, batch_shape=theta.shape, **kw)


def _reference(theta, inner, n_blocks):
    """The iterates after each block and each block's displacement (plain NumPy)."""
    x = np.zeros_like(theta)
    xs, errs = [], []
    for _ in range(n_blocks):
        old = x
        for _ in range(inner):
            x = theta * np.cos(x)
        xs.append(x)
        errs.append(np.abs(x - old))
    return np.array(xs), np.array(errs)


def test_errors_every_block_and_stop_at_threshold(xp):
    s = Stopping(1e-10, inner_iterations=3, max_iterations=300)
    st = _run(xp.to_xp(THETA), xp.to_xp(np.zeros(3)), s)
    xs, errs = _reference(THETA, 3, s.n_blocks)
    k = int(np.argmax(np.all(errs <= 1e-10, axis=1))) + 1  # first block all below
    assert 5 < k < s.n_blocks  # the loop stops early, after several blocks
    assert int(to_numpy(st["k"])) == k
    errors = to_numpy(st["errors"])
    assert errors.shape == (3, s.n_blocks)
    np.testing.assert_allclose(errors[:, :k], errs[:k].T, rtol=1e-9, atol=1e-15)
    assert np.all(errors[:, k:] == -1.0)
    np.testing.assert_allclose(to_numpy(st["x"]), xs[k - 1], rtol=1e-14, atol=0)
    np.testing.assert_array_equal(to_numpy(st["err"]), errors[:, k - 1])
    assert to_numpy(st["converged"]).tolist() == [True] * 3
    assert not bool(to_numpy(st["diverged"]))


def test_min_iterations_respected(xp):
    # the loose threshold is met after 2 blocks of 3 steps; min_iterations = 20 asks for
    # ceil(20 / 3) = 7 blocks
    _, errs = _reference(THETA, 3, 10)
    assert np.all(errs[1] <= 0.3) and not np.all(errs[0] <= 0.3)
    loose = _run(xp.to_xp(THETA), xp.to_xp(np.zeros(3)), Stopping(0.3, 3, 0, 100))
    assert int(to_numpy(loose["k"])) == 2
    st = _run(xp.to_xp(THETA), xp.to_xp(np.zeros(3)), Stopping(0.3, 3, 20, 100))
    assert int(to_numpy(st["k"])) == 7
    np.testing.assert_allclose(to_numpy(st["errors"])[:, :7], errs[:7].T, rtol=1e-9, atol=1e-15)
    assert to_numpy(st["converged"]).all()


def test_max_iterations_reported_not_converged(xp):
    # 10 steps in blocks of 4: 3 blocks (rounded up to 12 steps), far from 1e-12
    st = _run(xp.to_xp(THETA), xp.to_xp(np.zeros(3)), Stopping(1e-12, 4, 0, 10))
    xs, errs = _reference(THETA, 4, 3)
    assert int(to_numpy(st["k"])) == 3
    np.testing.assert_allclose(to_numpy(st["x"]), xs[-1], rtol=1e-14, atol=0)
    np.testing.assert_allclose(to_numpy(st["errors"]), errs.T, rtol=1e-9, atol=1e-15)
    assert to_numpy(st["converged"]).tolist() == [False] * 3
    assert not bool(to_numpy(st["diverged"]))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_divergence_on_a_nan_step(xp):
    # x <- log(x) from 2: 0.69, -0.37, then NaN; the error |log x - x| is NaN in block 2
    ad = adapter_for(xp.to_xp(np.ones(1)))
    nx = ad.xp
    st = fixed_point_loop(
        ad,
        lambda t, v: {"x": nx.log(v["x"])},
        lambda new, old: nx.abs(nx.log(new["x"]) - new["x"]),
        {"x": xp.to_xp(2.0)},
        Stopping(1e-8, 1, 0, 50),
    )
    assert bool(to_numpy(st["diverged"]))
    assert not bool(to_numpy(st["converged"]))
    assert int(to_numpy(st["k"])) == 2  # stopped at once
    errors = to_numpy(st["errors"])
    assert np.isfinite(errors[0]) and np.isnan(errors[1]) and np.all(errors[2:] == -1.0)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_watched_variable_diverges(xp):
    # the error stays finite; a watched variable overflows to inf at the 3rd step
    ad = adapter_for(xp.to_xp(np.ones(1)))
    nx = ad.xp

    def step(t, v):
        return {"x": 0.5 * v["x"], "big": v["big"] * 1e200}

    def error(new, old):
        return nx.abs(new["x"] - old["x"])

    init = {"x": xp.to_xp(1.0), "big": xp.to_xp(1.0)}
    opts = Stopping(1e-12, 1, 0, 50)
    quiet = fixed_point_loop(ad, step, error, init, opts)
    assert not bool(to_numpy(quiet["diverged"])) and int(to_numpy(quiet["k"])) == 40
    st = fixed_point_loop(ad, step, error, init, opts, watch=("big",))
    assert bool(to_numpy(st["diverged"])) and int(to_numpy(st["k"])) == 2


def test_prologue_and_record():
    theta = THETA.copy()
    seen, record = [], []

    def step(t, v):
        seen.append(int(t))
        return {"x": np.where(t < 0, v["x"], theta * np.cos(v["x"]))}

    st = fixed_point_loop(
        adapter_for(theta),
        step,
        lambda new, old: np.abs(new["x"] - old["x"]),
        {"x": np.zeros(3)},
        Stopping(1e-6, 2, 0, 100),
        batch_shape=(3,),
        prologue=True,
        record=record,
    )
    k = int(st["k"])
    xs, errs = _reference(theta, 2, k)
    assert k > 3 and seen == [-2, -1, *range(2 * k)]  # the prologue's steps see t < 0
    # the record holds each step's input: x0 twice (prologue), then the iterates
    iterates = [np.zeros(3)]
    for _ in range(2 * k - 1):
        iterates.append(theta * np.cos(iterates[-1]))
    assert len(record) == len(seen)
    np.testing.assert_allclose(
        np.array([r["x"] for r in record]), np.array(iterates[:1] * 2 + iterates), rtol=1e-15
    )
    np.testing.assert_allclose(st["errors"][:, :k], errs.T, rtol=1e-12, atol=1e-15)
    assert np.all(st["errors"][:, k:] == -1.0) and st["errors"].shape == (3, 50)
    np.testing.assert_allclose(st["x"], xs[-1], rtol=1e-14, atol=0)
    assert st["converged"].all()


def test_jax_jit_equals_eager():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    s = Stopping(1e-10, inner_iterations=3, max_iterations=300)
    jitted = jax.jit(lambda th: _run(th, jnp.zeros(3), s))(jnp.asarray(THETA))
    eager = _run(THETA, np.zeros(3), s)
    for name in ("x", "k", "err", "errors", "converged", "diverged"):
        np.testing.assert_allclose(np.asarray(jitted[name]), eager[name], rtol=1e-14, atol=0)


def _analytic(theta, cot):
    x = theta.copy()
    for _ in range(2000):
        x = theta * np.cos(x)
    return cot * np.cos(x) / (1.0 + theta * np.sin(x))


COT = np.array([0.3, -1.2, 0.7])  # independent of the inputs


@pytest.mark.parametrize("jit", [False, True])
def test_unrolled_jax_gradient_is_the_analytic_one(jit):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def loss(th):
        st = _run(th, jnp.zeros(3), Stopping(1e-14, 2, 0, 400), unrolled=True)
        return jnp.sum(jnp.asarray(COT) * st["x"])

    grad = jax.grad(loss)
    grad = jax.jit(grad) if jit else grad
    np.testing.assert_allclose(np.asarray(grad(jnp.asarray(THETA))), _analytic(THETA, COT), 1e-12)


def test_unrolled_torch_gradient_is_the_analytic_one():
    torch = pytest.importorskip("torch")
    th = torch.tensor(THETA, requires_grad=True)
    st = _run(th, torch.zeros(3, dtype=torch.float64), Stopping(1e-14, 2, 0, 400), unrolled=True)
    (g,) = torch.autograd.grad((torch.tensor(COT) * st["x"]).sum(), th)
    np.testing.assert_allclose(g.numpy(), _analytic(THETA, COT), rtol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match=r"must not be named \['k'\] \(reserved\)"):
        fixed_point_loop(
            adapter_for(THETA), None, None, {"k": THETA}, Stopping(1e-3, max_iterations=5)
        )
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        Stopping(-1.0, max_iterations=5)
    with pytest.raises(ValueError, match="inner_iterations"):
        Stopping(1e-3, inner_iterations=0, max_iterations=5)
    with pytest.raises(ValueError, match=r"min_iterations \(9\) must not exceed"):
        Stopping(1e-3, min_iterations=9, max_iterations=5)
    assert Stopping(0.0, 7, 0, 15).n_blocks == math.ceil(15 / 7) == 3
