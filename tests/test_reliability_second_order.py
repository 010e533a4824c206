"""Issue 11, case 11: second derivatives with the default options (``use_danskin`` left at
its default, the envelope rule) must be exact on every backend, or refused; never a
silently wrong number.

The reference is a float64 central finite difference of the NumPy gradient (otcore's
analytic envelope gradient, exact at the optimum), along a fixed direction ``v`` that does
not depend on the inputs. The products are taken the ways users take them: ``ot.hvp``,
``jax.jvp`` of ``jax.grad``, PyTorch double backward with ``create_graph=True``.
"""

from __future__ import annotations

import numpy as np
import pytest

import otcore as ot

KW = {"epsilon": 0.05, "threshold": 1e-12}
RNG = np.random.default_rng(1111)
X = RNG.normal(size=(6, 2))
Y = RNG.normal(size=(5, 2)) + 0.5
V = np.random.default_rng(2222).normal(size=X.shape)

FUNCTIONS = {"reg_ot_cost": ot.reg_ot_cost, "sinkhorn_divergence": ot.sinkhorn_divergence}


def _fd_hvp(name, h=1e-5):
    grad = ot.grad(FUNCTIONS[name])
    return (grad(X + h * V, Y, **KW) - grad(X - h * V, Y, **KW)) / (2 * h)


def _assert_close(got, name):
    want = _fd_hvp(name)
    err = np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want)
    assert err < 1e-6, f"relative error {err:.2e} against finite differences"


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_case_11_numpy_ot_hvp_with_default_options_equals_finite_differences(name):
    _assert_close(ot.hvp(FUNCTIONS[name])(X, Y, **KW)(V), name)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_case_11_jax_second_derivatives_with_default_options_are_exact(name):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    fun = FUNCTIONS[name]
    x, y, v = jnp.asarray(X), jnp.asarray(Y), jnp.asarray(V)
    _assert_close(ot.hvp(fun)(x, y, **KW)(v), name)
    _, forward_over_reverse = jax.jvp(jax.grad(lambda z: fun(z, y, **KW)), (x,), (v,))
    _assert_close(forward_over_reverse, name)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_case_11_torch_second_derivatives_with_default_options_are_exact(name):
    torch = pytest.importorskip("torch")
    fun = FUNCTIONS[name]
    y, v = torch.tensor(Y), torch.tensor(V)
    _assert_close(ot.hvp(fun)(torch.tensor(X), y, **KW)(v), name)
    x = torch.tensor(X, requires_grad=True)
    (gx,) = torch.autograd.grad(fun(x, y, **KW), x, create_graph=True)
    (double_backward,) = torch.autograd.grad(gx, x, grad_outputs=v)
    _assert_close(double_backward.detach(), name)
