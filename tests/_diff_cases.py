"""Shared material of the differentiation tests: problems, per-backend gradients, references.

Every problem is float64 with an absolute ε and a tight threshold, so that the potentials are
converged far below the tolerances the tests assert (the envelope and implicit gradients are
exact only at the fixed point). References are computed here without otcore's derivative
code: central finite differences of otcore's *values* on NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

import otcore as ot

EPS = 0.1
THRESHOLD = 1e-13
MAX_ITER = 3000


@dataclass(frozen=True)
class Case:
    """One entropic OT problem between point clouds (NumPy float64 data)."""

    name: str
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    a: np.ndarray = field(repr=False)
    b: np.ndarray = field(repr=False)
    tau_a: float = 1.0
    tau_b: float = 1.0
    batch_size: int | None = None

    @property
    def balanced(self) -> bool:
        return self.tau_a == 1.0 and self.tau_b == 1.0

    @property
    def args(self):
        return self.x, self.y, self.a, self.b

    def kwargs(self, **extra):
        """Keyword arguments of ``ot.reg_ot_cost`` for this problem."""
        kw = dict(
            epsilon=EPS,
            tau_a=self.tau_a,
            tau_b=self.tau_b,
            threshold=THRESHOLD,
            max_iterations=MAX_ITER,
        )
        if self.batch_size is not None:
            kw["batch_size"] = self.batch_size
        kw.update(extra)
        return kw

    def solve(self, x, y, a, b, epsilon=EPS, **extra):
        """``ot.solve`` of this problem on any backend's arrays (potentials, plan, ...)."""
        geom = ot.PointCloud(x, y, epsilon=epsilon, batch_size=self.batch_size)
        kw = dict(tau_a=self.tau_a, tau_b=self.tau_b, threshold=THRESHOLD, max_iterations=MAX_ITER)
        kw.update(extra)
        return ot.solve(geom, a, b, **kw)


def make_case(
    name,
    n,
    m,
    d=2,
    seed=0,
    tau_a=1.0,
    tau_b=1.0,
    zero_a=(),
    zero_b=(),
    mass_b=1.0,
    batch_size=None,
):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d))
    y = rng.uniform(size=(m, d)) + 0.2
    a = rng.uniform(0.3, 1.0, n)
    b = rng.uniform(0.3, 1.0, m)
    a[list(zero_a)] = 0.0
    b[list(zero_b)] = 0.0
    a, b = a / a.sum(), mass_b * b / b.sum()
    return Case(name, x, y, a, b, tau_a, tau_b, batch_size)


CASES = {
    c.name: c
    for c in (
        make_case("balanced", 7, 5, seed=0),
        make_case("unbalanced", 7, 5, seed=1, tau_a=0.9, tau_b=0.8, mass_b=1.3),
        make_case("one_sided", 7, 5, seed=2, tau_a=1.0, tau_b=0.8, mass_b=0.7),
        make_case("zero_weights", 7, 5, seed=3, zero_a=(0,), zero_b=(2,)),
        make_case("n_lt_m", 4, 7, d=3, seed=4),
        make_case("online", 6, 4, seed=5, batch_size=2),
    )
}


def case_params(*names):
    return [pytest.param(CASES[n], id=n) for n in (names or CASES)]


# -- gradients on each backend ------------------------------------------------------------


def backend_grad(be, fun, args, argnums, **kwargs):
    """Gradient of scalar ``fun(*args, **kwargs)`` w.r.t. ``argnums`` (a tuple) on backend
    ``be`` (a conftest ``Backend``), the way a user of that framework would take it:
    ``ot.grad`` without autodiff, ``jax.jit(jax.grad)`` on JAX, ``.backward()`` on PyTorch.
    ``args`` are NumPy arrays (or ``None``); returns NumPy arrays."""
    xs = [None if v is None else be.to_xp(v) for v in args]
    if be.name.startswith("jax"):
        import jax

        grads = jax.jit(jax.grad(lambda *z: fun(*z, **kwargs), argnums=argnums))(*xs)
    elif be.name.startswith("torch"):
        for k in argnums:
            xs[k].requires_grad_(True)
        value = fun(*xs, **kwargs)
        assert value.requires_grad
        value.backward()
        grads = tuple(xs[k].grad for k in argnums)
    else:
        grads = ot.grad(fun, argnums=argnums)(*xs, **kwargs)
    return tuple(be.to_np(g) for g in grads)


# -- references and comparisons -------------------------------------------------------------


def central_fd(fun, arg, h, directions=None):
    """Central differences of scalar ``fun`` at ``arg``: along each coordinate (an array
    shaped like ``arg``), or along each of ``directions`` (a 1-d array of results)."""
    if directions is None:
        out = np.zeros_like(arg)
        for idx in np.ndindex(*arg.shape):
            e = np.zeros_like(arg)
            e[idx] = h
            out[idx] = (fun(arg + e) - fun(arg - e)) / (2 * h)
        return out
    return np.array([(fun(arg + h * d) - fun(arg - h * d)) / (2 * h) for d in directions])


def simplex_directions(w):
    """Zero-sum directions on the support of ``w``: ``e_i - 1_S/|S|`` for ``i`` in S.

    Along them a balanced problem stays balanced (total mass unchanged) and the zero
    weights stay zero; ``<grad, e_i - 1_S/|S|>`` is the support-centred gradient entry i."""
    support = (w > 0).astype(float)
    dirs = []
    for i in np.flatnonzero(support):
        d = -support / support.sum()
        d[i] += 1.0
        dirs.append(d)
    return np.array(dirs)


def centred(g, w):
    """Gradient w.r.t. weights ``w`` restricted to the support, minus its mean there: the
    part that is defined for a balanced problem (the cost is only defined on the simplex)."""
    g = np.asarray(g, dtype=float)
    s = w > 0
    return np.where(s, g - g[s].mean(), 0.0)


def weight_view(g, w, balanced):
    """What to compare of a weight gradient: centred on the support if balanced, the
    support entries otherwise (zero weights sit on the boundary of the domain)."""
    return centred(g, w) if balanced else np.where(w > 0, np.asarray(g), 0.0)


def assert_rel(actual, expected, rtol, what=""):
    """``max|actual - expected| <= rtol * max|expected|`` (and ``expected`` not all zero)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), (what, actual)
    scale = np.abs(expected).max()
    assert scale > 0, what
    err = np.abs(actual - expected).max() / scale
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"


def potential_cotangents(case, seed=7):
    """Fixed random cotangents ``(v, u)`` for ``(f, g)``, independent of the inputs: zero at
    zero weights (where the potentials are -inf), and with ``Σv = Σu`` for a balanced
    problem so that ``<v, f> + <u, g>`` is invariant under the gauge ``(f + c, g - c)``."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=case.a.shape) * (case.a > 0)
    u = rng.normal(size=case.b.shape) * (case.b > 0)
    if case.balanced:
        s = case.b > 0
        u = u + s * (v.sum() - u.sum()) / s.sum()
    return v, u


def potentials_loss_np(case, x, y, a, b, v, u, **kw):
    """``<v, f> + <u, g>`` on NumPy (finite differences reference)."""
    out = case.solve(x, y, a, b, **kw)
    f = np.where(a > 0, out.f, 0.0)
    g = np.where(b > 0, out.g, 0.0)
    return float(v @ f + u @ g)
