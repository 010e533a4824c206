"""Issue 11 (reliability), barycenter items: 10 (what the stopping threshold promises),
12 (kernel-mode failures and max_iterations are reported) and the barycenter part of 11
(second derivatives are exact or refused)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import to_numpy

import otcore as ot


def _gaussians(n=50, var=0.01):
    """Two 1-D Gaussian histograms (means 0.2 and 0.8) on a grid of ``n`` points of [0, 1]
    and the squared distance cost."""
    t = np.linspace(0.0, 1.0, n)
    A = np.stack([np.exp(-((t - 0.2) ** 2) / var), np.exp(-((t - 0.8) ** 2) / var)], 1)
    return A / A.sum(0), (t[:, None] - t[None, :]) ** 2


# -- item 10: the threshold bounds the distance to the limit ---------------------------------
_LIMITS = {}


def _limit(debiased):
    """The log-mode barycenter at a much tighter threshold (1e-8, converged)."""
    if debiased not in _LIMITS:
        A, C = _gaussians()
        out = ot.barycenter(
            A, C, epsilon=1e-3, debiased=debiased, threshold=1e-8, max_iterations=20000,
            return_output=True,
        )  # fmt: skip
        assert bool(out.converged)
        _LIMITS[debiased] = out.histogram
    return _LIMITS[debiased]


@pytest.mark.parametrize("lse_mode", [True, False])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("threshold", [1e-4, 1e-5])
def test_case_10_converged_barycenter_is_within_threshold_of_its_limit(
    threshold, debiased, lse_mode
):
    # before: stopped on the marginal errors alone; now also on the estimated ℓ1 distance
    # of b to the limit. Measured: ≤ 2.5 t (debiased), ≤ 0.01 t (plain)
    A, C = _gaussians()
    out = ot.barycenter(
        A, C, epsilon=1e-3, debiased=debiased, lse_mode=lse_mode, threshold=threshold,
        return_output=True,
    )  # fmt: skip
    if not bool(out.converged):
        # kernel mode: the debiased tails underflow (b -> 0 there): flagged, not wrong
        assert not lse_mode and debiased and bool(out.diverged)
        return
    dist = np.abs(out.histogram - _limit(debiased)).sum()
    assert dist <= 3 * threshold
    assert out.errors[int(out.n_iters) // 10 - 1] <= threshold


def test_case_10_debiased_barycenter_does_not_report_convergence_early():
    # the case: ε ≈ 24 h² makes the debiasing a hard deconvolution that converges
    # sublinearly. Before: converged=True after 40 iterations, 3.6e-3 (ℓ1) from the
    # 4000-iteration iterate at threshold 1e-4. Now: not converged after 2000, and the
    # error it reports is the size of the distance that remains.
    A, C = _gaussians()
    kw = dict(epsilon=1e-2, debiased=True)
    out = ot.barycenter(A, C, threshold=1e-4, return_output=True, **kw)
    assert not bool(out.converged) and not bool(out.diverged) and int(out.n_iters) == 2000
    later = ot.barycenter(
        A, C, threshold=0.0, min_iterations=4000, max_iterations=4000, **kw
    )  # a fixed count (threshold 0) does not warn
    moved = np.abs(out.histogram - later).sum()
    assert moved > 1e-4  # far from converged indeed
    assert out.errors[-1] > moved  # the reported error does not understate it
    with pytest.warns(ot.ConvergenceWarning, match="barycenter did not converge"):
        ot.barycenter(A, C, threshold=1e-4, **kw)


def test_case_10_backends_stop_alike(xp):
    A, C = _gaussians()
    kw = dict(epsilon=1e-3, debiased=True, threshold=1e-4, return_output=True)
    ref = ot.barycenter(A, C, **kw)
    out = ot.barycenter(xp.to_xp(A), xp.to_xp(C), **kw)
    assert int(out.n_iters) == int(ref.n_iters) and bool(out.converged)
    np.testing.assert_allclose(to_numpy(out.histogram), ref.histogram, rtol=0, atol=1e-12)


# -- item 12: kernel-mode underflow and max_iterations are reported ----------------------------
def _kernel_failure(dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    C = ((x[:, None] - x[None]) ** 2).sum(-1)
    A = rng.uniform(size=(30, 2))
    return (A / A.sum(0)).astype(dtype), (C / C.max()).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_case_12_kernel_mode_barycenter_raises_instead_of_nan(xp, dtype):
    A, C = (xp.to_xp(v, dtype) for v in _kernel_failure(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy notice may leak
        out = ot.barycenter(A, C, epsilon=1e-5, lse_mode=False, return_output=True)
        assert bool(out.diverged) and not bool(out.converged)
        with pytest.raises(ot.NonFiniteIterationError, match=r"kernel mode.*lse_mode=True"):
            ot.barycenter(A, C, epsilon=1e-5, lse_mode=False)
        if xp.framework != "jax":  # under jax.vjp the flags are traced: out.diverged says it
            with pytest.raises(ot.NonFiniteIterationError, match="lse_mode=True"):
                ot.vjp(ot.barycenter, A, C, epsilon=1e-5, lse_mode=False)
        # log mode runs on the same problem
        out = ot.barycenter(A, C, epsilon=1e-5, max_iterations=200, return_output=True)
    assert not bool(out.diverged) and np.all(np.isfinite(to_numpy(out.histogram)))


def test_case_12_kernel_mode_divergence_is_flagged_under_jit():
    jax = pytest.importorskip("jax")
    A, C = (jax.numpy.asarray(v) for v in _kernel_failure())

    @jax.jit
    def flags(A, C):
        out = ot.barycenter(A, C, epsilon=1e-5, lse_mode=False, return_output=True)
        return out.diverged, out.converged

    diverged, converged = flags(A, C)
    assert bool(diverged) and not bool(converged)


def test_case_12_max_iterations_warns(xp):
    A, C = (xp.to_xp(v) for v in _gaussians())
    with pytest.warns(ot.ConvergenceWarning, match="max_iterations=20"):
        b = ot.barycenter(A, C, epsilon=1e-3, max_iterations=20)
    assert np.all(np.isfinite(to_numpy(b)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ot.ConvergenceWarning)
        # the output carries the flag instead; threshold=0 asks for a fixed count
        out = ot.barycenter(A, C, epsilon=1e-3, max_iterations=20, return_output=True)
        assert not bool(out.converged)
        ot.barycenter(A, C, epsilon=1e-3, threshold=0.0, max_iterations=20)


def test_case_12_free_barycenter_reports_divergence_and_max_iterations(xp):
    y = np.random.default_rng(0).normal(size=(8, 2))
    ys = [xp.to_xp(y), xp.to_xp(y + 3.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        kernel = {"lse_mode": False}
        with pytest.raises(ot.NonFiniteIterationError, match="lse_mode=True"):
            ot.free_barycenter(ys, n_points=4, epsilon=1e-4, sinkhorn_kwargs=kernel)
        out = ot.free_barycenter(
            ys, n_points=4, epsilon=1e-4, sinkhorn_kwargs=kernel, return_output=True
        )
        assert bool(out.diverged) and not bool(out.converged)
    with pytest.warns(ot.ConvergenceWarning, match="free barycenter did not converge"):
        ot.free_barycenter(ys, n_points=4, epsilon=0.5, max_iterations=2)


# -- item 11: second derivatives of the barycenter ---------------------------------------------
_RNG = np.random.default_rng(11)
_COT = _RNG.normal(size=6)  # fixed cotangent and direction, independent of the inputs
_DIR = _RNG.normal(size=(6, 6))


def _small():
    t = np.sort(np.random.default_rng(0).uniform(size=6))
    A = np.random.default_rng(1).uniform(0.1, 1.0, size=(6, 2))
    return A / A.sum(0), (t[:, None] - t[None, :]) ** 2, np.array([0.3, 0.7])


_UNROLLED = {
    # converged (plain) / a fixed iteration count (debiased converges sublinearly): the
    # map differentiated is then smooth, so finite differences of its gradient apply
    False: dict(epsilon=0.05, threshold=1e-12, max_iterations=300),
    True: dict(epsilon=0.05, debiased=True, threshold=0.0, min_iterations=200, max_iterations=200),
}
_IMPLICIT = dict(epsilon=0.05, threshold=1e-12, implicit_diff=ot.ImplicitDiff())


def _fd_hvp(grad, C, h=1e-5):
    return (to_numpy(grad(C + h * _DIR)) - to_numpy(grad(C - h * _DIR))) / (2 * h)


@pytest.mark.parametrize("debiased", [False, True])
def test_case_11_barycenter_second_derivatives_on_jax(debiased):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    A, C, w = (jnp.asarray(v) for v in _small())
    cot, direction = jnp.asarray(_COT), jnp.asarray(_DIR)

    def f(kw):
        return lambda C: jnp.sum(cot * ot.barycenter(A, C, w, **kw))

    grad = jax.jit(jax.grad(f(_UNROLLED[debiased])))  # one compilation for both points
    ref = _fd_hvp(lambda c: grad(jnp.asarray(c)), np.asarray(C))
    hess = np.tensordot(np.asarray(jax.jit(jax.hessian(f(_UNROLLED[debiased])))(C)), _DIR, 2)
    np.testing.assert_allclose(hess, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # the implicit rule is first order: every second derivative through it is refused (at
    # trace time, so also under jax.jit; jitted here only to keep the test fast)
    implicit = f(_IMPLICIT)
    igrad = jax.grad(implicit)
    for second in (
        jax.hessian(implicit),
        lambda C: jax.jvp(igrad, (C,), (direction,)),  # jax.jacfwd(jax.grad(f))
        jax.jacrev(igrad),
    ):
        with pytest.raises(ot.UnsupportedDerivativeError, match="first order"):
            jax.jit(second)(C)
    assert np.all(np.isfinite(np.asarray(jax.jit(igrad)(C))))  # first order works


@pytest.mark.parametrize("debiased", [False, True])
def test_case_11_barycenter_second_derivatives_on_torch(debiased):
    torch = pytest.importorskip("torch")
    A, C, w = (torch.tensor(v) for v in _small())
    cot, direction = torch.tensor(_COT), torch.tensor(_DIR)

    def f(kw):
        return lambda C: torch.sum(cot * ot.barycenter(A, C, w, **kw))

    def double_backward(fun, C):
        C = C.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fun(C), C, create_graph=True)
        (hv,) = torch.autograd.grad(torch.sum(g * direction), C)
        return hv.numpy()

    def grad(c):
        c = torch.tensor(c, requires_grad=True)
        return torch.autograd.grad(f(_UNROLLED[debiased])(c), c)[0]

    ref = _fd_hvp(grad, C.numpy())
    scale = np.abs(ref).max()
    hess = np.tensordot(torch.func.hessian(f(_UNROLLED[debiased]))(C).numpy(), _DIR, 2)
    for got in (double_backward(f(_UNROLLED[debiased]), C), hess):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)
    implicit = f(_IMPLICIT)
    with pytest.raises(ot.UnsupportedDerivativeError, match="first order"):
        double_backward(implicit, C)
    with pytest.raises(ot.UnsupportedDerivativeError, match="first order"):
        torch.func.hessian(implicit)(C)
    # first order is unchanged
    c = C.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(implicit(c), c)
    assert torch.all(torch.isfinite(g))


def test_case_11_capability_table_refuses_implicit_second_order():
    from otcore.autodiff import capabilities as cap

    for backend in ("jax", "torch"):
        cell = cap.support(ot.barycenter, backend, "implicit", 2)
        assert not cell.supported and "UnsupportedDerivativeError" in cell.reason
        assert cap.support(ot.barycenter, backend, "unrolled", 2).supported
