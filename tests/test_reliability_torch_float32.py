"""Issue 11 (reliability): float32 implicit gradients when a row of the plan holds only
subnormal values.

Found by the property suite (not one of the issue's numbered items): PyTorch float32,
euclidean cost, a solve reported as converged whose row 3 of the plan is only ~1e-40
(subnormal in float32). The implicit system's diagonal ``d_i = r_i + ε γ_i / ρ`` is then
subnormal too, its inverse overflows (``1/1e-40 = inf``) and ``inf · 0`` made the
gradient NaN. The system now divides by the diagonals. The reference is a float64 solve of
the same float32-rounded inputs (NumPy's manual rule and torch float64 agree on it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import otcore as ot
from otcore.geometry.costs import PNorm

X = np.array(
    [
        [-0.2574871778488159, 1.1959987878799438],
        [0.7473683953285217, -0.2900325357913971],
        [1.0144925117492676, -1.9147963523864746],
        [0.4536943733692169, -0.006424105726182461],
        [1.3746265172958374, -0.35953009128570557],
        [-0.09745108336210251, -1.30707848072052],
        [-0.31671440601348877, 0.6927526593208313],
    ],
    np.float32,
)
Y = np.array(
    [
        [-0.08231081068515778, 1.267983317375183],
        [-0.75907963514328, 1.5307101011276245],
        [0.4374198317527771, -0.7936897277832031],
    ],
    np.float32,
)
EPS, TAU_A, TAU_B = 8.1375e-4, 0.9, 0.5
TINY32 = float(np.finfo(np.float32).tiny)


def _solve(x, y, cost="euclidean", threshold=1e-5, **kw):
    geom = ot.PointCloud(x, y, cost=cost, epsilon=EPS)
    prob = ot.LinearProblem(geom, tau_a=TAU_A, tau_b=TAU_B)
    return ot.Sinkhorn(threshold=threshold, **kw)(prob)


def _reference(cost, threshold, use_danskin):
    """float64 gradient of ``reg_ot_cost`` in ``x`` (torch float64, same rounded inputs)."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(Y, dtype=torch.float64)
    out = _solve(x, y, cost, threshold, use_danskin=use_danskin)
    assert bool(out.converged)
    (g,) = torch.autograd.grad(out.reg_ot_cost, x)
    return g.numpy()


def _check(g, ref):
    g = np.asarray(g, np.float64)
    assert np.all(np.isfinite(g)), g
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * scale)


# Known open defect (issue 11 closing note): with ``use_danskin=False`` the gradient adds
# ``(∂cost/∂f) · (df/dx)``. At the optimum ``∂cost/∂f`` (the residual of the row's
# optimality condition) is 0, but at a row whose plan mass is subnormal float32 holds it
# with no significant digit, while ``df/dx`` is of size 1/mass: their product is rounding
# noise of the size of the gradient (row 0 measured 9x too small). Not strict: the noise
# depends on rounding. The default (envelope) cells must pass.
_NOISY_IMPLICIT = pytest.mark.xfail(
    reason="float32 implicit (use_danskin=False) gradient through a subnormal plan row is "
    "rounding noise of the optimality residual (open defect)",
    strict=False,
)
CASES = [
    ("euclidean", 1e-5, True),
    pytest.param("euclidean", 1e-5, False, marks=_NOISY_IMPLICIT),
    ("euclidean", 1e-12, True),
    pytest.param("euclidean", 1e-12, False, marks=_NOISY_IMPLICIT),
    (PNorm(1.5), 1e-5, True),
]


@pytest.mark.parametrize(("cost", "threshold", "use_danskin"), CASES)
def test_torch_float32_subnormal_plan_row_gradient_is_finite(cost, threshold, use_danskin):
    torch = pytest.importorskip("torch")
    ref = _reference(cost, threshold, use_danskin)
    x = torch.tensor(X, requires_grad=True)
    out = _solve(x, torch.tensor(Y), cost, threshold, use_danskin=use_danskin)
    assert bool(out.converged)
    assert out.f.dtype == torch.float32
    if cost == "euclidean":
        # the case of the report: row 3 of the plan holds only a subnormal value
        row = out.matrix.detach().numpy()[3]
        assert 0 < row.max() < TINY32
    (g,) = torch.autograd.grad(out.reg_ot_cost, x)
    assert g.dtype == torch.float32
    _check(g.numpy(), ref)


@pytest.mark.parametrize(("cost", "threshold", "use_danskin"), CASES[:2])
def test_jax_float32_subnormal_plan_row_gradient_is_finite(cost, threshold, use_danskin):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    ref = _reference(cost, threshold, use_danskin)

    def loss(x):
        return _solve(x, jnp.asarray(Y), cost, threshold, use_danskin=use_danskin).reg_ot_cost

    g = jax.grad(loss)(jnp.asarray(X))
    assert g.dtype == jnp.float32
    _check(np.asarray(g), ref)


def test_numpy_float32_subnormal_plan_row_gradient_is_finite():
    ref = _reference("euclidean", 1e-5, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow / invalid value
        g = ot.grad(ot.reg_ot_cost)(
            X, Y, epsilon=EPS, tau_a=TAU_A, tau_b=TAU_B, cost="euclidean", threshold=1e-5
        )
    g = g[0] if isinstance(g, tuple) else g
    assert np.asarray(g).dtype == np.float32
    _check(g, ref)


# -- cotangents on the potentials themselves -------------------------------------------------
# ``sum(f) + sum(g)`` gives every potential a unit cotangent, so ``w = S⁻¹ z̄`` is of size
# ``1/d_i`` at a row of subnormal mass (it overflows in float32) and rows or columns whose
# plan mass underflows to 0 still have O(1) derivatives. The implicit backward pulls back
# ``D̂ w`` through ``D̂⁻¹ G`` formed inside the exponentials (log-domain diagonals).

FAR = np.array([[3.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [-3.0, -3.0], [0.0, 4.0]], np.float32)
POTENTIAL_CASES = {
    # row 3 of the plan is only ~1e-40; the rows are the eliminated (larger) block.
    # Column 1's mass is 1e-108: below what the smaller block can hold in float32
    # (about 1e-70), so its own cotangent is left out (documented limitation)
    "subnormal_row": (X, Y, [1.0, 0.0, 1.0]),
    # x and y swapped: five columns of the plan underflow to 0 in float32 (1e-70..1e-208
    # in float64), their potentials still move with x (the columns are the larger block)
    "underflowed_columns": (Y, X, [1.0] * 7),
    # the subnormal row (1.8e-40) in the smaller block, solved by conjugate gradients
    "subnormal_row_small_block": (X[[0, 1, 3]], np.concatenate([Y, FAR]), [1.0] * 8),
}


def _potential_grads(torch, dtype, xs, ys, g_weights):
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    y = torch.tensor(ys, dtype=dtype, requires_grad=True)
    out = _solve(x, y)
    assert bool(out.converged)
    loss = out.f.sum() + (out.g * torch.tensor(g_weights, dtype=dtype)).sum()
    gx, gy = torch.autograd.grad(loss, (x, y))
    return out, gx.numpy(), gy.numpy()


@pytest.mark.parametrize("case", sorted(POTENTIAL_CASES))
def test_torch_float32_potential_cotangent_with_underflowed_plan_mass(case):
    torch = pytest.importorskip("torch")
    _, rx, ry = _potential_grads(torch, torch.float64, *POTENTIAL_CASES[case])
    out, gx, gy = _potential_grads(torch, torch.float32, *POTENTIAL_CASES[case])
    p = out.matrix.detach().numpy()
    if case == "subnormal_row":
        assert 0 < p[3].max() < TINY32
    elif case == "subnormal_row_small_block":
        assert 0 < p[2].max() < TINY32
    else:
        assert np.sum(p.sum(axis=0) == 0) == 5
    for g, ref in ((gx, rx), (gy, ry)):
        assert g.dtype == np.float32
        assert np.all(np.isfinite(g)), g
        # float32 potentials ~1e3 ε: exponents good to ~1e-4 (float64 ref: same rounded inputs)
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-3 * np.max(np.abs(ref)))


def test_torch_float64_potential_cotangent_matches_finite_differences():
    """The scaled pull-back is the same rule: float64 against central differences."""
    torch = pytest.importorskip("torch")
    x0 = np.asarray(X, np.float64)

    def total(x):
        out = _solve(torch.tensor(x), torch.tensor(Y, dtype=torch.float64), threshold=1e-14)
        return float(out.f.sum())

    x = torch.tensor(x0, requires_grad=True)
    out = _solve(x, torch.tensor(Y, dtype=torch.float64), threshold=1e-14)
    (g,) = torch.autograd.grad(out.f.sum(), x)
    h = 1e-6
    for i, j in [(2, 0), (3, 1), (4, 0)]:  # rows of tiny (1e-40) or underflowing mass
        e = np.zeros_like(x0)
        e[i, j] = h
        fd = (total(x0 + e) - total(x0 - e)) / (2 * h)
        assert g[i, j].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_float64_potential_cotangent_with_underflowed_columns_matches_finite_differences():
    """Five columns of this plan underflow to 0 even in float64: their potentials'
    derivatives used to be dropped (gradient [-0.047, -0.468] instead of [1.082, -0.929]
    on torch; JAX's rule still drops them, see the report). Central differences of a
    converged solve."""
    torch = pytest.importorskip("torch")
    xs, ys, _ = POTENTIAL_CASES["subnormal_row_small_block"]
    x0, y = np.asarray(xs, np.float64), torch.tensor(ys, dtype=torch.float64)

    def total(x):
        out = _solve(x, y, threshold=1e-15)
        return out.f.sum() + out.g.sum()

    x = torch.tensor(x0, requires_grad=True)
    (g,) = torch.autograd.grad(total(x), x)
    h = 1e-6
    for i, j in [(0, 0), (0, 1), (2, 1)]:
        e = np.zeros_like(x0)
        e[i, j] = h
        fd = (total(torch.tensor(x0 + e)) - total(torch.tensor(x0 - e))).item() / (2 * h)
        assert g[i, j].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)
