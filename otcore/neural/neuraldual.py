"""Neural W2 dual (Makkuva et al. 2020; Amos 2023), as OTT-JAX's ``W2NeuralDual``.

The loss is written once in array API code; the framework helpers returned by the
adapters' ``training()`` hook (:mod:`otcore.backends.neural`) supply gradients (``jax.value_and_grad`` + ``jax.jit``, or
``torch.autograd``) and the optimiser plumbing.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import warnings

import array_api_compat

from otcore._lib import xp as _xp
from otcore._lib.adam import Adam
from otcore._lib.progress import progress
from otcore._lib.tree import tree_map
from otcore.backends import adapter_by_name, adapter_for
from otcore.errors import NonFiniteIterationError
from otcore.neural.conjugate import FenchelConjugateLBFGS
from otcore.neural.networks import ICNN, PotentialMLP
from otcore.neural.potentials import DualPotentials

__all__ = ["DEFAULT_CONJUGATE_SOLVER", "W2NeuralDual"]

DEFAULT_CONJUGATE_SOLVER = FenchelConjugateLBFGS(
    gtol=1e-5,
    max_iter=20,
    max_linesearch_iter=20,
    linesearch_type="backtracking",
    linesearch_init="increase",
    increase_factor=1.5,
)

_AMORTIZATION = ("regression", "objective")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _make_loss(net_a, net_b, solver, amortization_loss, pos_weights, beta, ops, to_optimize):
    """Loss of one training step, with ``net_a`` the primal potential and ``net_b`` its
    conjugate amortiser: ``(params_a, params_b, source, target) -> (loss, aux)``."""

    def value(net, params, other, other_params, x):
        if net.is_potential:
            return net.apply(params, x)
        xp = _xp.namespace(x)
        grad = ops.stop_gradient(net.apply(params, x))
        return -other.apply(other_params, grad) + _xp.rowdot(xp, grad, x)

    def gradient(net, params, x):
        if net.is_potential:
            return ops.input_grad(lambda z: net.apply(params, z), x)
        return net.apply(params, x)

    def loss_fn(pa, pb, source, target):
        xp = _xp.namespace(source)
        x_hat = gradient(net_b, pb, target)

        def f_value(p, x):
            return value(net_a, p, net_b, pb, x)

        if solver is not None:
            pa_sg = tree_map(ops.stop_gradient, pa)
            pb_sg = tree_map(ops.stop_gradient, pb)

            def f_detached(x):
                return value(net_a, pa_sg, net_b, pb_sg, x)

            res = solver.solve(
                f_detached,
                target,
                x_init=ops.stop_gradient(x_hat),
                value_and_grad=ops.value_and_input_grad_fn(f_detached),
            )
            x_star = ops.stop_gradient(res.grad)
        else:
            x_star = x_hat

        f_source = f_value(pa, source)
        f_star = _xp.rowdot(xp, x_star, target) - f_value(pa, x_star)
        dual_loss = xp.mean(f_source) + xp.mean(f_star)
        if amortization_loss == "regression":
            amor_loss = xp.mean((x_hat - x_star) ** 2)
        else:
            pa_sg = tree_map(ops.stop_gradient, pa)
            amor_loss = xp.mean(f_value(pa_sg, x_hat) - _xp.rowdot(xp, x_hat, target))
        if to_optimize == "both":
            loss = dual_loss + amor_loss
        elif to_optimize == "f":
            loss = dual_loss
        else:
            loss = amor_loss
        if not pos_weights:
            loss = loss + beta * (net_a.weight_penalty(pa) + net_b.weight_penalty(pb))
        w_dist = (
            xp.mean(_xp.rowdot(xp, source, source))
            + xp.mean(_xp.rowdot(xp, target, target))
            - 2 * dual_loss
        )
        return loss, (dual_loss, amor_loss, w_dist)

    return loss_fn


class W2NeuralDual:
    """Learn the W2 optimal map ``∇f`` between two continuous measures from samples.

    Minimises ``E_α f(x) + E_β f*(y)`` over a convex potential ``f`` (an :class:`ICNN`,
    or a :class:`PotentialMLP`), where ``f*(y) = sup_x ⟨x, y⟩ − f(x)`` is estimated from
    an amortised guess ``∇g(y)`` fine-tuned by ``conjugate_solver`` (Amos 2023). Then
    ``∇f`` pushes the source to the target and ``∇f*`` the target back. The semantics and
    defaults are OTT-JAX's ``W2NeuralDual``; the implementation is written once for JAX
    and PyTorch (the batches' framework; NumPy batches need ``backend=``).

    Args:
        dim_data: dimension ``d`` of the data.
        neural_f: network of ``f`` (default ``ICNN(dim_data, (64, 64, 64, 64))``).
        neural_g: network of the amortiser ``g ≈ f*`` (same default). At most one of the
            two may be a gradient model (``is_potential=False``).
        optimizer_f, optimizer_g: an :class:`Adam` (default ``Adam(1e-4, 0.5, 0.9)``), an
            optax transformation (JAX) or a factory ``params -> torch.optim.Optimizer``
            (PyTorch).
        num_train_iters: number of training iterations.
        num_inner_iters: ``g`` steps per ``f`` step in alternating mode.
        back_and_forth: alternate the roles of ``f`` and ``g`` every other step (Jacobs &
            Léger 2020); ``None`` means ``True`` exactly when ``neural_f`` is a
            :class:`PotentialMLP`. Parallel updates only.
        valid_freq: validate every ``valid_freq`` steps (when validation loaders are given).
        log_freq: log the training losses every ``log_freq`` steps.
        logging: return ``(potentials, logs)`` instead of ``potentials``.
        seed: seed of the parameter initialisation (same seed: same initial networks on
            every framework).
        pos_weights: use non-negative hidden weights in the ICNNs; with ``False`` the loss
            gets ``beta·Σ‖relu(−W)‖_F`` (for ``f`` and ``g``) and ``f``'s weights are clipped.
        beta: weight of that penalty.
        conjugate_solver: a :class:`FenchelConjugateLBFGS`, or ``None`` to use ``∇g`` as is.
        amortization_loss: ``"regression"`` (``‖∇g(y) − x*(y)‖²``, Amos 2023) or
            ``"objective"`` (``f(∇g(y)) − ⟨∇g(y), y⟩``, Makkuva et al. 2020).
        parallel_updates: update ``f`` and ``g`` together from one loss; otherwise
            ``num_inner_iters`` steps of ``g`` then one of ``f``.
        backend: ``"jax"`` or ``"torch"`` for NumPy batches (JAX and PyTorch batches
            select their own framework).
        progress_bar: show a progress bar (tqdm when installed) on stderr.

    Example:
        >>> import numpy as np, otcore as ot
        >>> rng = np.random.default_rng(0)
        >>> source = rng.standard_normal((128, 2))
        >>> target = source + np.array([2.0, 0.0])
        >>> solver = ot.neural.W2NeuralDual(
        ...     2, neural_f=ot.neural.ICNN(2, (16,)), neural_g=ot.neural.ICNN(2, (16,)),
        ...     num_train_iters=2, backend="torch", progress_bar=False, logging=True)
        >>> potentials, logs = solver(source, target)
        >>> potentials.transport(source).shape, sorted(logs["train_logs"])
        ((128, 2), ['directions', 'loss_f', 'loss_g', 'w_dist'])
    """

    def __init__(
        self,
        dim_data,
        neural_f=None,
        neural_g=None,
        optimizer_f=None,
        optimizer_g=None,
        num_train_iters=20000,
        num_inner_iters=1,
        back_and_forth=None,
        valid_freq=1000,
        log_freq=1000,
        logging=False,
        seed=0,
        pos_weights=True,
        beta=1.0,
        conjugate_solver=DEFAULT_CONJUGATE_SOLVER,
        amortization_loss="regression",
        parallel_updates=True,
        backend=None,
        progress_bar=True,
    ):
        self.dim_data = _check_int("dim_data", dim_data, 1)
        self.num_train_iters = _check_int("num_train_iters", num_train_iters, 0)
        self.num_inner_iters = _check_int("num_inner_iters", num_inner_iters, 1)
        self.valid_freq = _check_int("valid_freq", valid_freq, 1)
        self.log_freq = _check_int("log_freq", log_freq, 1)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        self.seed = int(seed)
        self.logging = bool(logging)
        self.pos_weights = bool(pos_weights)
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta >= 0:
            raise ValueError(f"beta must be a non-negative float, got {beta!r}")
        self.beta = float(beta)
        if amortization_loss not in _AMORTIZATION:
            raise ValueError(
                f"amortization_loss must be 'regression' or 'objective', got {amortization_loss!r}"
            )
        self.amortization_loss = amortization_loss
        if conjugate_solver is not None and not hasattr(conjugate_solver, "solve"):
            raise TypeError(
                "conjugate_solver must be a FenchelConjugateLBFGS (or have a .solve method) or "
                f"None, got {type(conjugate_solver).__name__}"
            )
        self.conjugate_solver = conjugate_solver
        if backend not in (None, "jax", "torch"):
            raise ValueError(f"backend must be None, 'jax' or 'torch', got {backend!r}")
        self.backend = backend
        self.progress_bar = bool(progress_bar)

        if neural_f is None:
            neural_f = ICNN(self.dim_data, dim_hidden=(64, 64, 64, 64))
        if neural_g is None:
            neural_g = ICNN(self.dim_data, dim_hidden=(64, 64, 64, 64))
        self.neural_f = self._check_net("neural_f", neural_f)
        self.neural_g = self._check_net("neural_g", neural_g)
        if not (self.neural_f.is_potential or self.neural_g.is_potential):
            raise ValueError(
                "neural_f and neural_g cannot both be gradient models (is_potential=False): "
                "the value of one is recovered through the other"
            )

        self.optimizer_f = Adam() if optimizer_f is None else optimizer_f
        self.optimizer_g = Adam() if optimizer_g is None else optimizer_g

        if back_and_forth is None:
            back_and_forth = isinstance(self.neural_f, PotentialMLP)
        self.back_and_forth = bool(back_and_forth)
        self.parallel_updates = bool(parallel_updates)
        if self.parallel_updates and self.num_inner_iters > 1:
            warnings.warn(
                "parallel_updates=True but num_inner_iters > 1: using alternating updates",
                stacklevel=2,
            )
            self.parallel_updates = False
        if self.back_and_forth and not self.parallel_updates:
            raise ValueError(
                "back_and_forth=True needs parallel updates (parallel_updates=True and "
                "num_inner_iters=1); set back_and_forth=False for alternating updates"
            )
        self._ops = None
        self._state = None
        self._steps = {}

    # -- validation ------------------------------------------------------------------
    def _check_net(self, name, net):
        for attr in ("apply", "init_params", "is_potential", "dim_data"):
            if not hasattr(net, attr):
                raise TypeError(
                    f"{name} must be an otcore.neural network (ICNN, PotentialMLP), "
                    f"got {type(net).__name__}"
                )
        if net.dim_data != self.dim_data:
            raise ValueError(f"{name}.dim_data is {net.dim_data} but dim_data is {self.dim_data}")
        if isinstance(net, ICNN) and net.pos_weights != self.pos_weights:
            warnings.warn(
                f"{name}.pos_weights={net.pos_weights} differs from W2NeuralDual's "
                f"pos_weights={self.pos_weights}; using {self.pos_weights}",
                stacklevel=3,
            )
            net = dataclasses.replace(net, pos_weights=self.pos_weights)
        return net

    def _training_ops(self, batch, name):
        """The training helpers of the batch's framework (or of ``backend=``)."""
        if not array_api_compat.is_array_api_obj(batch):
            raise TypeError(f"{name} must yield arrays of shape (n, d), got {type(batch).__name__}")
        adapter = adapter_for(batch, names=[name])
        if not adapter.has_autodiff:
            if self.backend is None:
                raise TypeError(
                    f"{name} yields {type(batch).__module__}.{type(batch).__name__} arrays, which "
                    "have no automatic differentiation: pass backend='jax' or backend='torch' "
                    "to W2NeuralDual (or give JAX / PyTorch arrays)"
                )
            return adapter_by_name(self.backend).training()
        if self.backend is not None and self.backend != adapter.name:
            raise TypeError(
                f"{name} yields {adapter.name} arrays but backend={self.backend!r}; drop "
                "backend= or give NumPy arrays"
            )
        return adapter.training()

    def _prepare(self, batch, name):
        ops = self._ops
        if not array_api_compat.is_array_api_obj(batch):
            raise TypeError(f"{name} must yield arrays of shape (n, d), got {type(batch).__name__}")
        if not ops.is_native(batch):
            if adapter_for(batch, names=[name]).has_autodiff:
                raise TypeError(f"{name} yields arrays of another framework than {ops.name}")
            x = ops.asarray(batch, dtype=None if self._dtype is None else self._dtype)
        else:
            x = batch
        xp = ops.xp
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{name} must yield real floating arrays, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.dim_data:
            raise ValueError(
                f"{name} must yield arrays of shape (n, {self.dim_data}), got {tuple(x.shape)}"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{name} yielded an empty batch")
        if self._dtype is not None and x.dtype != self._dtype:
            raise TypeError(
                f"{name} yields {x.dtype} arrays but training runs in {self._dtype} (the first "
                "batch's dtype); give every batch one dtype"
            )
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError(f"{name} yielded a batch with NaN or infinite values")
        return x

    @staticmethod
    def _iterator(loader, name):
        if loader is None:
            return None
        if array_api_compat.is_array_api_obj(loader):
            return itertools.repeat(loader)  # one fixed batch
        try:
            return iter(loader)
        except TypeError:
            raise TypeError(
                f"{name} must be an iterable of (n, d) arrays or one (n, d) array, "
                f"got {type(loader).__name__}"
            ) from None

    @staticmethod
    def _next(it, name):
        try:
            return next(it)
        except StopIteration:
            raise ValueError(
                f"{name} ran out of batches; give an endless iterator (e.g. itertools.cycle) "
                "or a single array"
            ) from None

    # -- setup -------------------------------------------------------------------------
    def _setup(self, source, target):
        ops = self._ops
        leaf_dtype = source.dtype
        dev = _xp.device_of(source)
        base = self.seed
        import numpy as np  # host-side seeding only

        rng_f = np.random.default_rng([base, 0])
        rng_g = np.random.default_rng([base, 1])
        pf = self.neural_f.init_params(ops.xp, leaf_dtype, dev, rng_f, samples=(source, target))
        pg = self.neural_g.init_params(ops.xp, leaf_dtype, dev, rng_g, samples=(target, source))
        pf, pg = ops.prepare_params(pf), ops.prepare_params(pg)
        self._opt_f = ops.wrap_optimizer(self.optimizer_f, "optimizer_f")
        self._opt_g = ops.wrap_optimizer(self.optimizer_g, "optimizer_g")
        self._state = [pf, pg, self._opt_f.init(pf), self._opt_g.init(pg)]

    def _step_fn(self, kind):
        """``kind``: ``fwd``/``bwd`` (parallel), ``f``/``g`` (alternating) or ``eval``."""
        if kind in self._steps:
            return self._steps[kind]
        ops = self._ops
        proj_f = None if self.pos_weights else self.neural_f.project
        ident = lambda p: p  # noqa: E731
        args = (self.conjugate_solver, self.amortization_loss, self.pos_weights, self.beta, ops)
        if kind == "bwd":
            loss = _make_loss(self.neural_g, self.neural_f, *args, "both")
            fn = ops.make_train_step(
                loss, self._opt_g, self._opt_f, True, True, ident, proj_f or ident
            )
        elif kind == "eval":
            fn = ops.make_eval_step(_make_loss(self.neural_f, self.neural_g, *args, "both"))
        else:
            which = {"fwd": "both", "f": "f", "g": "g"}[kind]
            loss = _make_loss(self.neural_f, self.neural_g, *args, which)
            fn = ops.make_train_step(
                loss,
                self._opt_f,
                self._opt_g,
                kind in ("fwd", "f"),
                kind in ("fwd", "g"),
                proj_f or ident,
                ident,
            )
        self._steps[kind] = fn
        return fn

    # -- training ------------------------------------------------------------------------
    def __call__(
        self,
        trainloader_source,
        trainloader_target,
        validloader_source=None,
        validloader_target=None,
        callback=None,
    ):
        """Train and return :class:`DualPotentials` (and the logs if ``logging``).

        Args:
            trainloader_source, trainloader_target: iterables of ``(n, d)`` batches (or one
                array, used as a fixed batch).
            validloader_source, validloader_target: optional validation batches, used every
                ``valid_freq`` steps.
            callback: optional ``callback(step, potentials)`` called after every step.

        Returns:
            ``potentials`` or ``(potentials, logs)`` with
            ``logs = {"train_logs": {...}, "valid_logs": {...}}`` (losses as floats).

        Raises:
            TypeError: NumPy batches without ``backend=``, mixed frameworks or dtypes.
            ValueError: wrong batch shape, non-finite batch, exhausted loader.
            NonFiniteIterationError: the training loss became NaN or infinite.
        """
        its = self._iterator(trainloader_source, "trainloader_source")
        itt = self._iterator(trainloader_target, "trainloader_target")
        if (validloader_source is None) != (validloader_target is None):
            raise ValueError("give both validloader_source and validloader_target, or neither")
        ivs = self._iterator(validloader_source, "validloader_source")
        ivt = self._iterator(validloader_target, "validloader_target")

        first = (self._next(its, "trainloader_source"), self._next(itt, "trainloader_target"))
        if self._ops is None:
            self._ops = self._training_ops(first[0], "trainloader_source")
            self._dtype = None
            src = self._prepare(first[0], "trainloader_source")
            self._dtype = src.dtype
        else:
            src = self._prepare(first[0], "trainloader_source")
        tgt = self._prepare(first[1], "trainloader_target")
        if self._state is None:
            self._setup(src, tgt)
        pending = [(src, tgt)]

        def batch():
            if pending:
                return pending.pop()
            return (
                self._prepare(self._next(its, "trainloader_source"), "trainloader_source"),
                self._prepare(self._next(itt, "trainloader_target"), "trainloader_target"),
            )

        train_logs = {"loss_f": [], "loss_g": [], "w_dist": [], "directions": []}
        valid_logs = {"loss_f": [], "loss_g": [], "w_dist": []}
        bar = progress(self.num_train_iters, "W2NeuralDual", self.progress_bar)
        metrics = None
        try:
            for step in range(self.num_train_iters):
                metrics, direction = self._train_step(step, batch)
                if step % self.log_freq == 0:
                    loss_f, loss_g, w_dist = (float(v) for v in metrics[1:])
                    self._check_finite(step, w_dist, loss_f, loss_g)
                    bar.set_postfix_str(f"w_dist={w_dist:.4g}")
                    if self.logging:
                        train_logs["loss_f"].append(loss_f)
                        train_logs["loss_g"].append(loss_g)
                        train_logs["w_dist"].append(w_dist)
                        train_logs["directions"].append(direction)
                if callback is not None:
                    callback(step, self.to_dual_potentials())
                if ivs is not None and step != 0 and step % self.valid_freq == 0:
                    vs = self._prepare(self._next(ivs, "validloader_source"), "validloader_source")
                    vt = self._prepare(self._next(ivt, "validloader_target"), "validloader_target")
                    pf, pg = self._state[0], self._state[1]
                    vals = [float(v) for v in self._step_fn("eval")(pf, pg, vs, vt)[1:]]
                    if self.logging:
                        for key, v in zip(("loss_f", "loss_g", "w_dist"), vals):
                            valid_logs[key].append(v)
                bar.update(1)
        finally:
            bar.close()
        if metrics is not None:
            self._check_finite(self.num_train_iters - 1, *(float(v) for v in metrics[1:]))
        potentials = self.to_dual_potentials()
        logs = {"train_logs": train_logs, "valid_logs": valid_logs}
        return (potentials, logs) if self.logging else potentials

    def _train_step(self, step, batch):
        pf, pg, sf, sg = self._state
        if self.parallel_updates:
            forward = not self.back_and_forth or step % 2 == 0
            x, y = batch()
            if forward:
                pf, pg, sf, sg, metrics = self._step_fn("fwd")(pf, pg, sf, sg, x, y)
            else:  # roles swapped: the target plays the source, g the primal potential
                pg, pf, sg, sf, metrics = self._step_fn("bwd")(pg, pf, sg, sf, y, x)
            self._state = [pf, pg, sf, sg]
            return metrics, "forward" if forward else "backward"
        for _ in range(self.num_inner_iters):
            x, y = batch()
            pf, pg, sf, sg, _ = self._step_fn("g")(pf, pg, sf, sg, x, y)
        x, y = batch()
        pf, pg, sf, sg, metrics = self._step_fn("f")(pf, pg, sf, sg, x, y)
        self._state = [pf, pg, sf, sg]
        return metrics, "forward"

    @staticmethod
    def _check_finite(step, w_dist, loss_f, loss_g):
        if not all(math.isfinite(v) for v in (w_dist, loss_f, loss_g)):
            raise NonFiniteIterationError(
                f"training diverged at step {step}: w_dist={w_dist}, loss_f={loss_f}, "
                f"loss_g={loss_g}; lower the learning rate or check the data scale"
            )

    def to_dual_potentials(self, finetune_g=True):
        """The current :class:`DualPotentials` (``finetune_g``: fine-tune ``∇g`` into ``∇f*``).

        Raises:
            RuntimeError: before the first training call (nothing to return yet).
        """
        if self._state is None:
            raise RuntimeError("W2NeuralDual has not been trained yet: call it on data first")
        ops = self._ops
        return DualPotentials(
            self.neural_f,
            self.neural_g,
            ops.detach_params(self._state[0]),
            ops.detach_params(self._state[1]),
            ops,
            self.conjugate_solver if finetune_g else None,
        )
