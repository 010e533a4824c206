"""The Krylov solvers of ``otcore.implicit.linear_solvers`` and the options of ``ImplicitDiff``.

Solver options are checked where the solve matters: Hessian-vector products (NumPy's
analytic rule solves the implicit system once per product) and derivatives of the
potentials (torch and JAX). The gradient of ``reg_ot_cost`` is not used for this: at
convergence its implicit correction is ~0 whatever the solver returns.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _diff_cases import CASES, assert_rel, potential_cotangents

import otcore as ot
from otcore.backends import adapter_for
from otcore.implicit.linear_solvers import cg, normal_cg

# -- cg / normal_cg --------------------------------------------------------------------------


def spd(k, seed, cond=50.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    return (q * np.geomspace(1.0, cond, k)) @ q.T


def test_cg_solves_a_random_spd_system(xp):
    A = spd(9, 0)
    rhs = np.random.default_rng(1).normal(size=(3, 9))  # a batch of three right-hand sides
    Ax, rhs_x = xp.to_xp(A), xp.to_xp(rhs)
    sol = cg(adapter_for(rhs_x), lambda v: v @ Ax, rhs_x, rtol=1e-13)
    assert isinstance(sol, xp.array_type) and sol.dtype == rhs_x.dtype
    assert_rel(xp.to_np(sol), np.linalg.solve(A, rhs.T).T, 1e-10)


def test_cg_with_a_diagonal_preconditioner():
    rng = np.random.default_rng(2)
    d = np.geomspace(1e-3, 1e3, 12)
    A = np.diag(d) + 1e-2 * spd(12, 3, cond=2.0)  # badly scaled, diagonally dominant
    rhs = rng.normal(size=12)
    sol = cg(adapter_for(rhs), lambda v: A @ v, rhs, precond=1.0 / np.diag(A), rtol=1e-13)
    assert_rel(sol, np.linalg.solve(A, rhs), 1e-9)


def test_cg_on_a_singular_consistent_psd_system_gives_the_minimum_norm_solution():
    rng = np.random.default_rng(4)
    B = rng.normal(size=(10, 6))
    A = B @ B.T  # rank 6 of 10
    rhs = A @ rng.normal(size=10)  # in the range
    sol = cg(adapter_for(rhs), lambda v: A @ v, rhs, rtol=1e-13)
    assert_rel(A @ sol, rhs, 1e-10, "residual")
    # from x0 = 0 the Krylov iterates stay in range(A): the pseudo-inverse solution
    assert_rel(sol, np.linalg.pinv(A) @ rhs, 1e-8, "minimum norm")


def test_cg_max_iter_is_respected():
    A = spd(8, 5)
    r = np.random.default_rng(6).normal(size=8)
    one = cg(adapter_for(r), lambda v: A @ v, r, rtol=0.0, max_iter=1)
    np.testing.assert_allclose(one, (r @ r) / (r @ A @ r) * r, rtol=1e-14)  # one CG step


def test_cg_of_a_zero_right_hand_side_is_zero():
    A = spd(5, 7)
    sol = cg(adapter_for(np.zeros(5)), lambda v: A @ v, np.zeros(5), rtol=1e-12)
    assert np.all(sol == 0.0)


def test_normal_cg_solves_a_non_symmetric_system(xp):
    rng = np.random.default_rng(8)
    A = 3.0 * np.eye(8) + 0.5 * rng.normal(size=(8, 8))
    assert np.abs(A - A.T).max() > 0.1
    rhs = rng.normal(size=8)
    Ax, rhs_x = xp.to_xp(A), xp.to_xp(rhs)
    sol = normal_cg(
        adapter_for(rhs_x),
        lambda v: Ax @ v,
        rhs_x,
        rmatvec=lambda v: Ax.T @ v,
        rtol=1e-14,
        max_iter=100,
    )
    assert_rel(xp.to_np(sol), np.linalg.solve(A, rhs), 1e-9)


# -- ImplicitDiff options -----------------------------------------------------------------


def cg_callable(matvec, rhs, **kwargs):
    """A user solver that wraps otcore's own CG (any backend, array API only)."""
    return cg(adapter_for(rhs), matvec, rhs, rtol=1e-13, max_iter=200)


def dense_callable(matvec, rhs, **kwargs):
    """A user solver that builds the matrix from ``matvec`` on basis vectors and applies
    its pseudo-inverse (the balanced Schur complement is singular; its rhs is in range)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(rhs)
    k = rhs.shape[-1]
    eye = xp.eye(k, dtype=rhs.dtype)
    cols = xp.stack([matvec(eye[i, :]) for i in range(k)], axis=-1)
    return xp.linalg.pinv(cols) @ rhs


SOLVERS = {
    "auto": ot.ImplicitDiff(),
    "cg": ot.ImplicitDiff(solver="cg"),
    "normal_cg": ot.ImplicitDiff(solver="normal_cg", solver_kwargs={"max_iter": 500}),
    "cg_callable": ot.ImplicitDiff(solver=cg_callable),
    "dense_callable": ot.ImplicitDiff(solver=dense_callable),
    "ridge_kernel": ot.ImplicitDiff(solver_kwargs={"ridge_kernel": 1e-2}),
    "tight": ot.ImplicitDiff(solver_kwargs={"rtol": 1e-14, "max_iter": 200}),
}
OPT_CASES = ("balanced", "unbalanced", "n_lt_m")


@functools.cache
def numpy_hvps(case_name, solver_name):
    """NumPy's analytic HVPs w.r.t. x and a along fixed directions, with this solver."""
    case = CASES[case_name]
    kw = case.kwargs(use_danskin=False, implicit_diff=SOLVERS[solver_name])
    rng = np.random.default_rng(9)
    vx, va = rng.normal(size=case.x.shape), rng.normal(size=case.a.shape)
    if case.balanced:
        va = va - va.mean()
    hx = ot.hvp(ot.reg_ot_cost, argnums=0)(*case.args, **kw)(vx)
    ha = ot.hvp(ot.reg_ot_cost, argnums=2)(*case.args, **kw)(va)
    return hx, (ha - ha.mean()) if case.balanced else ha


@functools.cache
def torch_potentials_vjp(case_name, solver_name):
    import torch

    case = CASES[case_name]
    v, u = potential_cotangents(case)
    xs = [torch.asarray(t, requires_grad=True) for t in case.args]
    out = case.solve(*xs, implicit_diff=SOLVERS[solver_name])
    grads = torch.autograd.grad(
        out.potentials, xs, grad_outputs=(torch.asarray(v), torch.asarray(u))
    )
    grads = [g.numpy() for g in grads]
    if case.balanced:  # weights: only zero-sum directions are defined
        grads[2:] = [g - g.mean() for g in grads[2:]]
    return grads


@pytest.mark.parametrize("case_name", OPT_CASES)
@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "tight"])
def test_solver_options_give_the_same_derivatives(solver, case_name):
    for got, ref in zip(numpy_hvps(case_name, solver), numpy_hvps(case_name, "tight")):
        assert_rel(got, ref, 1e-8, f"hvp {solver}")
    for got, ref in zip(
        torch_potentials_vjp(case_name, solver), torch_potentials_vjp(case_name, "tight")
    ):
        assert_rel(got, ref, 1e-8, f"potentials vjp {solver}")


def test_callable_solver_under_jax_jit():
    import jax
    import jax.numpy as jnp

    case = CASES["balanced"]
    v, u = potential_cotangents(case)

    def run(*args):
        f = lambda *z: case.solve(*z, implicit_diff=SOLVERS["cg_callable"]).potentials  # noqa: E731
        return jax.vjp(f, *args)[1]((jnp.asarray(v), jnp.asarray(u)))[0]

    gx = jax.jit(run)(*(jnp.asarray(t) for t in case.args))
    assert_rel(np.asarray(gx), torch_potentials_vjp("balanced", "tight")[0], 1e-8)


def test_ridge_identity_perturbs_by_at_most_its_relative_size():
    """``ridge_identity = δ`` solves ``(S + δ I) w = z``: the solution moves by about
    ``δ / λ_min`` relative, ``λ_min`` the smallest non-zero eigenvalue of the system
    (computed here from the plan). A small ridge agrees to that bound, not better."""
    case = CASES["unbalanced"]
    out = case.solve(*case.args)
    P, eps = out.matrix, 0.1
    rho_a = eps * case.tau_a / (1 - case.tau_a)
    rho_b = eps * case.tau_b / (1 - case.tau_b)
    r, c = P.sum(1), P.sum(0)
    S = np.block([[np.diag(r + eps / rho_a * r), P], [P.T, np.diag(c + eps / rho_b * c)]])
    lam = np.linalg.eigvalsh(S)
    lam_min = lam[lam > 1e-12].min()
    delta = 1e-7
    SOLVERS["ridge_identity"] = ot.ImplicitDiff(solver_kwargs={"ridge_identity": delta})
    try:
        for got, ref in zip(
            torch_potentials_vjp(case.name, "ridge_identity"),
            torch_potentials_vjp(case.name, "tight"),
        ):
            # Schur complement eigenvalues >= those of S; 10x margin for the pull-back
            assert_rel(got, ref, 10 * delta / lam_min)
    finally:
        del SOLVERS["ridge_identity"]
    assert 10 * delta / lam_min < 1e-3  # the bound is meaningful


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "lu"}, "solver must be"),
        ({"solver": 3}, "solver must be"),
        ({"solver_kwargs": {"tol": 1e-6}}, r"unknown solver_kwargs \['tol'\]"),
        ({"solver_kwargs": {"ridge_kernel": -1e-3}}, "ridge_kernel"),
        ({"solver_kwargs": {"ridge_identity": -1.0}}, "ridge_identity"),
        ({"solver_kwargs": {"rtol": "small"}}, "rtol"),
        ({"precondition_fun": lambda x: x}, "precondition_fun must be None"),
    ],
)
def test_bad_implicit_diff_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ot.ImplicitDiff(**kwargs)


def test_sinkhorn_refuses_a_non_implicit_diff_object():
    with pytest.raises(TypeError, match="ImplicitDiff or None"):
        ot.Sinkhorn(implicit_diff="cg")


def test_implicit_diff_is_used_by_default_and_danskin_follows_it():
    assert isinstance(ot.Sinkhorn().implicit_diff, ot.ImplicitDiff)
    assert ot.Sinkhorn().use_danskin is True
    assert ot.Sinkhorn(implicit_diff=None).use_danskin is False
    assert ot.Sinkhorn(use_danskin=False).use_danskin is False


def test_a_broken_solver_changes_the_derivatives():
    """The option is really used: a solver returning half the answer shows up."""
    half = ot.ImplicitDiff(solver=lambda mv, rhs, **kw: 0.5 * cg_callable(mv, rhs))
    SOLVERS["half"] = half
    try:
        got = numpy_hvps("unbalanced", "half")[0]
    finally:
        del SOLVERS["half"]
    ref = numpy_hvps("unbalanced", "tight")[0]
    assert np.abs(got - ref).max() > 1e-3 * np.abs(ref).max()
