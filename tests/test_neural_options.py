"""W2NeuralDual options (logging, validation, callbacks, penalties, alternating and
back-and-forth updates, gradient models, optimisers) and every error path. Tiny networks
and a handful of PyTorch steps: these check plumbing, not accuracy."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

import otcore as ot
from otcore._lib import tree as _tree

torch = pytest.importorskip("torch")
NEURAL = ot.neural
D = 2


def _batches(shift=0.0, n=16, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    while True:
        yield torch.tensor(rng.normal(size=(n, D)) + shift, dtype=dtype)


class Counting:
    """An iterable that counts the batches taken from it."""

    def __init__(self, it):
        self.it, self.count = it, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        return next(self.it)


def _solver(iters=3, **kw):
    kw.setdefault("neural_f", NEURAL.ICNN(D, (4,)))
    kw.setdefault("neural_g", NEURAL.ICNN(D, (4,)))
    kw.setdefault("conjugate_solver", NEURAL.FenchelConjugateLBFGS(max_iter=3))
    kw.setdefault("optimizer_f", NEURAL.Adam(1e-2))
    kw.setdefault("optimizer_g", NEURAL.Adam(1e-2))
    kw.setdefault("progress_bar", False)
    return NEURAL.W2NeuralDual(D, num_train_iters=iters, **kw)


def _copy(params):
    return [t.detach().clone() for t in _tree.tree_leaves(params)]


# -- options ----------------------------------------------------------------------------


def test_logs_validation_and_callback():
    seen = []
    solver = _solver(iters=7, logging=True, log_freq=3, valid_freq=2)
    pot, logs = solver(
        _batches(),
        _batches(1.0, seed=1),
        _batches(seed=2),
        _batches(1.0, seed=3),
        callback=lambda step, p: seen.append((step, type(p).__name__)),
    )
    train, valid = logs["train_logs"], logs["valid_logs"]
    assert len(train["w_dist"]) == 3  # steps 0, 3, 6
    assert train["directions"] == ["forward"] * 3
    assert len(valid["w_dist"]) == 3  # steps 2, 4, 6
    assert all(math.isfinite(v) for v in train["loss_f"] + train["loss_g"] + valid["w_dist"])
    assert seen == [(i, "DualPotentials") for i in range(7)]
    assert isinstance(pot, NEURAL.DualPotentials)


def test_training_continues_across_calls_and_zero_iterations():
    solver = _solver(iters=0)
    src, tgt = _batches(), _batches(1.0, seed=1)
    before = _copy(solver(src, tgt).params_f)
    solver.num_train_iters = 2
    after = _copy(solver(src, tgt).params_f)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    solver.num_train_iters = 0
    again = _copy(solver(src, tgt).params_f)
    assert all(torch.equal(a, b) for a, b in zip(after, again))


def test_single_array_is_a_fixed_batch():
    x = torch.tensor(np.random.default_rng(0).normal(size=(16, D)))
    pot = _solver(iters=2)(x, x + 1.0)
    assert pot.transport(x).shape == (16, D)


def test_pos_weights_false_penalises_and_clips_f():
    f = NEURAL.ICNN(D, (4, 4), pos_weights=False)
    g = NEURAL.ICNN(D, (4, 4), pos_weights=False)
    solver = _solver(iters=3, neural_f=f, neural_g=g, pos_weights=False, beta=2.0)
    pot = solver(_batches(), _batches(1.0, seed=1))
    assert all(bool((w >= 0).all()) for w in pot.params_f["w_z"])
    assert any(bool((w < 0).any()) for w in pot.params_g["w_z"])  # g is only penalised


def test_pos_weights_mismatch_warns_and_uses_solver_setting():
    with pytest.warns(UserWarning, match="pos_weights"):
        solver = _solver(neural_f=NEURAL.ICNN(D, (4,), pos_weights=False))
    assert solver.neural_f.pos_weights is True


@pytest.mark.parametrize("loss", ["regression", "objective"])
def test_amortization_losses_train_g(loss):
    solver = _solver(iters=2, amortization_loss=loss, logging=True)
    first = solver.neural_g.init_params(np, np.float64, "cpu", np.random.default_rng([0, 1]))
    pot, logs = solver(_batches(), _batches(1.0, seed=1))
    moved = [
        not np.allclose(a, b.numpy())
        for a, b in zip(_tree.tree_leaves(first), _tree.tree_leaves(pot.params_g))
    ]
    assert any(moved)
    if loss == "objective":  # mean f(x̂) − ⟨x̂, y⟩ = −(mean f*(y)) at the guess: finite
        assert math.isfinite(logs["train_logs"]["loss_g"][0])


def test_alternating_updates_consume_inner_batches():
    src, tgt = Counting(_batches()), Counting(_batches(1.0, seed=1))
    solver = _solver(iters=2, num_inner_iters=3, parallel_updates=False)
    solver(src, tgt)
    assert src.count == tgt.count == 2 * (3 + 1)


def test_parallel_with_inner_iters_warns_and_alternates():
    with pytest.warns(UserWarning, match="alternating"):
        solver = _solver(num_inner_iters=2)
    assert solver.parallel_updates is False


def test_back_and_forth_default_with_mlp_f():
    solver = _solver(
        iters=4,
        neural_f=NEURAL.PotentialMLP(D, (8,)),
        neural_g=NEURAL.PotentialMLP(D, (8,)),
        logging=True,
        log_freq=1,
    )
    assert solver.back_and_forth is True
    _, logs = solver(_batches(), _batches(1.0, seed=1))
    assert logs["train_logs"]["directions"] == ["forward", "backward"] * 2


def test_gradient_model_g_and_no_conjugate_solver():
    g = NEURAL.PotentialMLP(D, (8,), is_potential=False)
    pot = _solver(iters=2, neural_g=g, conjugate_solver=None)(_batches(), _batches(1.0, seed=1))
    y = torch.tensor(np.random.default_rng(3).normal(size=(5, D)))
    expected = g.apply(pot.params_g, y)  # no fine-tuning: the inverse map is g itself
    torch.testing.assert_close(pot.transport(y, forward=False), expected)


def test_torch_optim_factory():
    made = []

    def factory(params):
        made.append(len(params))
        return torch.optim.SGD(params, lr=1e-2)

    solver = _solver(iters=2, optimizer_f=factory)
    net = solver.neural_f
    first = net.init_params(np, np.float64, "cpu", np.random.default_rng([0, 0]))
    pot = solver(_batches(), _batches(1.0, seed=1))
    assert made == [len(_tree.tree_leaves(first))]
    assert not np.allclose(first["w_x"][0]["lin"], pot.params_f["w_x"][0]["lin"].numpy())


def test_optax_on_jax():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, D)))
    solver = _solver(
        iters=2,
        optimizer_f=optax.sgd(1e-2),
        optimizer_g=optax.adam(1e-2),
        conjugate_solver=None,  # a smaller program to compile: this tests the optax plumbing
    )
    pot = solver(x, x + 1.0)
    assert isinstance(pot.transport(x), jax.Array)


def test_plot_ot_map():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    x = np.random.default_rng(0).normal(size=(16, D))
    pot = _solver(iters=1, backend="torch")(x, x + 1.0)
    fig, ax = pot.plot_ot_map(x, x + 1.0, forward=False)
    assert len(ax.collections) == 4  # source, target, pushed, arrows
    matplotlib.pyplot.close(fig)


# -- errors -------------------------------------------------------------------------------


def _first(batch):
    return itertools.repeat(batch)


def test_numpy_batches_need_backend():
    x = np.zeros((4, D))
    with pytest.raises(TypeError, match="backend='jax' or backend='torch'"):
        _solver()(x, x)


def test_backend_mismatch_and_unknown_backend():
    x = torch.zeros((4, D))
    with pytest.raises(TypeError, match="backend='jax'"):
        _solver(backend="jax")(x, x)
    with pytest.raises(ValueError, match="backend"):
        _solver(backend="numpy")


@pytest.mark.parametrize(
    ("src", "exc", "match"),
    [
        (
            torch.zeros((4, 3)),
            ValueError,
            r"trainloader_source must yield arrays of shape \(n, 2\)",
        ),
        (torch.zeros(4), ValueError, "trainloader_source must yield"),
        (torch.zeros((4, D), dtype=torch.int64), TypeError, "real floating"),
        (
            torch.full((4, D), float("nan")),
            ValueError,
            "trainloader_source yielded a batch with NaN",
        ),
        ([[0.0, 1.0]], TypeError, "trainloader_source"),
    ],
)
def test_bad_source_batches(src, exc, match):
    with pytest.raises(exc, match=match):
        _solver()(src if isinstance(src, list) else _first(src), _batches())


def test_nonfinite_later_target_batch():
    def target():
        yield torch.zeros((4, D), dtype=torch.float64)
        yield torch.tensor([[0.0, float("inf")]] * 4, dtype=torch.float64)

    with pytest.raises(ValueError, match="trainloader_target yielded a batch with NaN"):
        _solver(iters=3)(_batches(n=4), target())


def test_mixed_dtypes():
    with pytest.raises(TypeError, match="dtype"):
        _solver()(_batches(), _batches(dtype=torch.float32))


def test_exhausted_loader():
    with pytest.raises(ValueError, match="ran out of batches"):
        _solver(iters=3)(_batches(), [torch.zeros((4, D), dtype=torch.float64)])


def test_one_validation_loader_only():
    with pytest.raises(ValueError, match="validloader"):
        _solver()(_batches(), _batches(), _batches())


def test_divergence_raises():
    big = torch.full((4, D), 1e200, dtype=torch.float64)
    with pytest.raises(ot.NonFiniteIterationError, match="diverged"):
        _solver(iters=1)(big, big)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"amortization_loss": "cycle"}, ValueError, "amortization_loss"),
        ({"back_and_forth": True, "parallel_updates": False}, ValueError, "back_and_forth"),
        ({"beta": -1.0}, ValueError, "beta"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"iters": -1}, ValueError, "num_train_iters"),
        ({"log_freq": 0}, ValueError, "log_freq"),
        ({"conjugate_solver": "lbfgs"}, TypeError, "conjugate_solver"),
        ({"neural_f": NEURAL.ICNN(3, (4,))}, ValueError, "neural_f.dim_data"),
        ({"neural_g": object()}, TypeError, "neural_g"),
        (
            {
                "neural_f": NEURAL.PotentialMLP(D, (4,), is_potential=False),
                "neural_g": NEURAL.PotentialMLP(D, (4,), is_potential=False),
            },
            ValueError,
            "both be gradient models",
        ),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match):
            _solver(**kwargs)


def test_bad_optimizers():
    x = torch.zeros((4, D), dtype=torch.float64)
    optax = pytest.importorskip("optax")
    with pytest.raises(TypeError, match="optimizer_f"):
        _solver(optimizer_f=optax.adam(1e-3))(x, x)
    p = torch.zeros(1, requires_grad=True)
    with pytest.raises(TypeError, match="factory"):
        _solver(optimizer_g=torch.optim.Adam([p]))(x, x)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        _solver(optimizer_g=lambda params: None)(x, x)
    with pytest.raises(ValueError, match="learning_rate"):
        NEURAL.Adam(learning_rate=0.0)


def test_potentials_errors():
    with pytest.raises(RuntimeError, match="not been trained"):
        _solver().to_dual_potentials()
    x = torch.zeros((4, D), dtype=torch.float64)
    pot = _solver(iters=1)(x, x + 1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        pot.transport(torch.zeros((4, 3), dtype=torch.float64))
    solver3 = NEURAL.W2NeuralDual(
        3,
        neural_f=NEURAL.ICNN(3, (4,)),
        neural_g=NEURAL.ICNN(3, (4,)),
        num_train_iters=0,
        progress_bar=False,
    )
    pot3 = solver3(torch.zeros((4, 3)), torch.ones((4, 3)))
    with pytest.raises(ValueError, match="2-D"):
        pot3.plot_ot_map(torch.zeros((4, 3)), torch.zeros((4, 3)))
