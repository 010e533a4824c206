"""Wasserstein dictionary learning: planted atoms, cross-backend equality, gradients,
transform and errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import otcore as ot
from otcore.tools.dictionary import _softmax

N = 30
T = np.linspace(0.0, 1.0, N)
C = (T[:, None] - T[None, :]) ** 2
EPS = 2e-3
# three atoms of different positions and widths: their barycenters (displacement
# interpolations of Gaussians) span a triangle in (mean, std) whose corners are the atoms
ATOMS = np.stack(
    [np.exp(-((T - c) ** 2) / (2 * s * s)) for c, s in ((0.2, 0.03), (0.5, 0.1), (0.8, 0.05))]
)
ATOMS /= ATOMS.sum(1, keepdims=True)
WEIGHTS = np.random.default_rng(0).dirichlet(np.full(3, 0.3), size=40)


def _data(iterations=50):
    kw = dict(threshold=0.0, min_iterations=iterations, max_iterations=iterations)
    return np.asarray(ot.barycenter(ATOMS.T, C, WEIGHTS, epsilon=EPS, lse_mode=False, **kw))


def _matched(learned, planted):
    best = min(
        itertools.permutations(range(len(planted))),
        key=lambda p: np.abs(learned[list(p)] - planted).sum(),
    )
    return list(best)


def test_recovers_planted_atoms():
    Y = _data()
    model = ot.WassersteinDictionary(
        3, epsilon=EPS, loss="kl", n_iterations=250, learning_rate=0.1, progress=False
    ).fit(Y, C)
    history = model.loss_history_
    assert len(history) == 250 and history[-1] < history[0] / 100  # from 1.5 to < 0.015
    perm = _matched(model.atoms_, ATOMS)
    # each learned atom is closer (L1) to its planted atom than to any other planted atom
    dist = np.abs(model.atoms_[perm][:, None, :] - ATOMS[None, :, :]).sum(-1)
    assert np.all(np.diag(dist) < 1.0) and np.all(np.argmin(dist, axis=1) == np.arange(3))
    assert np.abs(model.weights_[:, perm] - WEIGHTS).mean() < 0.05
    recon = model.reconstruct()
    assert np.abs(recon - Y).sum(1).mean() < 0.1
    np.testing.assert_allclose(model.atoms_.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(model.weights_.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("loss", ["quadratic", "kl", "wasserstein"])
def test_numpy_torch_jax_fit_the_same_dictionary(loss):
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    Y = _data()[:8]
    kw = dict(epsilon=0.01, loss=loss, n_iterations=4, barycenter_iterations=20, progress=False)
    ref = ot.WassersteinDictionary(3, **kw).fit(Y, C)
    converters = (torch.tensor, jax.numpy.asarray) if loss == "quadratic" else (torch.tensor,)
    for convert in converters:
        model = ot.WassersteinDictionary(3, **kw).fit(convert(Y), convert(C))
        assert type(model.atoms_) is type(convert(Y))
        np.testing.assert_allclose(np.asarray(model.atoms_), ref.atoms_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(model.weights_), ref.weights_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.loss_history_, ref.loss_history_, rtol=1e-12)


@pytest.mark.parametrize("loss", ["quadratic", "kl", "wasserstein"])
def test_objective_gradients_match_finite_differences(loss):
    Y = _data()[:5]
    model = ot.WassersteinDictionary(
        3, epsilon=0.01, loss=loss, barycenter_iterations=20, progress=False
    )
    geom, Y = model._prepare(Y, C)
    objective = model._objective(geom, Y)
    rng = np.random.default_rng(1)
    alpha, lam = rng.normal(size=(3, N)), rng.normal(size=(5, 3))
    _, (g_alpha, g_lam) = objective(alpha, lam)
    h = 1e-6
    for which, grad in ((0, g_alpha), (1, g_lam)):
        d = rng.normal(size=grad.shape)
        plus = [alpha, lam]
        minus = [alpha, lam]
        plus[which] = plus[which] + h * d
        minus[which] = minus[which] - h * d
        fd = (float(objective(*plus)[0]) - float(objective(*minus)[0])) / (2 * h)
        rtol = 1e-6 if loss != "wasserstein" else 1e-3  # the divergence solves to 1e-4
        assert abs(np.sum(grad * d) - fd) <= rtol * max(abs(fd), 1e-3), (which, fd)


def test_each_sample_gets_its_own_weight_gradient():
    Y = _data()[:4]
    model = ot.WassersteinDictionary(3, epsilon=0.01, barycenter_iterations=20, progress=False)
    geom, Y = model._prepare(Y, C)
    rng = np.random.default_rng(2)
    alpha, lam = rng.normal(size=(3, N)), rng.normal(size=(4, 3))
    _, (_, g_lam) = model._objective(geom, Y)(alpha, lam)
    # rows differ (no batch-averaged gradient broadcast to every sample) and sum to 0
    assert np.min(np.abs(g_lam[0] - g_lam[1:])) > 1e-8
    np.testing.assert_allclose(g_lam.sum(1), 0.0, atol=1e-15)


def test_transform_recovers_weights_with_known_atoms():
    Y = _data()[:6]
    model = ot.WassersteinDictionary(
        3, epsilon=EPS, loss="kl", n_iterations=1, learning_rate=0.1, progress=False
    ).fit(Y, C)
    model.atoms_ = ATOMS.copy()  # the planted atoms: weights become identifiable
    w = model.transform(Y, n_iterations=300)
    assert w.shape == (6, 3)
    assert np.abs(w - WEIGHTS[:6]).mean() < 0.03  # random weights: about 0.3


def test_softmax_is_stable():
    z = np.array([[1000.0, 0.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(_softmax(np, z), [[1.0, 0.0], [0.5, 0.5]])


def test_errors():
    Y = _data()[:3]
    with pytest.raises(ValueError, match="n_atoms must be an integer"):
        ot.WassersteinDictionary(0)
    with pytest.raises(ValueError, match="loss must be one of"):
        ot.WassersteinDictionary(2, loss="l1")
    with pytest.raises(ValueError, match="learning_rate must be a positive"):
        ot.WassersteinDictionary(2, learning_rate=-1.0)
    with pytest.raises(ValueError, match="betas must be two numbers"):
        ot.WassersteinDictionary(2, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="barycenter_iterations"):
        ot.WassersteinDictionary(2, barycenter_iterations=0)
    model = ot.WassersteinDictionary(2, epsilon=0.01, n_iterations=1, progress=False)
    with pytest.raises(ValueError, match=r"Y must have shape \(M, n\)"):
        model.fit(Y[:, :10], C)
    with pytest.raises(ValueError, match="mass 1"):
        model.fit(Y * 2, C)
    with pytest.raises(ValueError, match="Y must be non-negative"):
        model.fit(Y - 0.01, C)
    with pytest.raises(ValueError, match="cost must be square"):
        model.fit(Y, C[:, :10])
    with pytest.raises(ValueError, match="epsilon is given by the geometry"):
        model.fit(Y, ot.Geometry(C, epsilon=0.01))
    with pytest.raises(RuntimeError, match="call fit before transform"):
        ot.WassersteinDictionary(2).transform(Y)
    with pytest.raises(RuntimeError, match="call fit before reconstruct"):
        ot.WassersteinDictionary(2).reconstruct()
    diverging = ot.WassersteinDictionary(
        2, epsilon=1e-4, loss="kl", n_iterations=5, learning_rate=1e3, progress=False
    )
    with (
        pytest.raises(FloatingPointError, match="non-finite"),
        np.errstate(invalid="ignore", over="ignore", divide="ignore"),
    ):
        diverging.fit(Y, C)
