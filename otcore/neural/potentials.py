"""Learned Brenier potentials: values, transport maps, W2² and a 2-D plot."""

from __future__ import annotations

from otcore._lib import xp as _xp
from otcore._lib.tree import tree_leaves

__all__ = ["DualPotentials"]


class DualPotentials:
    """The convex potential ``f`` learned by :class:`W2NeuralDual` and its conjugate.

    Units: the cost is ``‖x − y‖²`` (no ½). ``f`` is the *convex (Brenier) potential*:
    the optimal map is ``T = ∇f`` and its inverse ``∇f*``. The Kantorovich potentials of
    the cost ``‖x − y‖²`` are ``‖x‖² − 2f(x)`` and ``‖y‖² − 2f*(y)``, so that
    ``distance = E‖x‖² + E‖y‖² − 2(E f(x) + E f*(y)) = W2²``. (OTT-JAX 0.6's
    ``to_dual_potentials`` mixes the ½-cost and the full cost and returns half of both
    the displacement and the distance; this class does not.)

    Methods accept arrays of the training framework (or NumPy arrays, returned as NumPy).

    Args:
        f_net, g_net: the networks (see :mod:`otcore.neural.networks`).
        params_f, params_g: their trained parameters.
        ops: the framework's training helpers (``adapter.training()``, see
            :class:`otcore.backends.neural.TrainingOps`).
        conjugate_solver: used to fine-tune ``∇g`` into ``∇f*`` (``None``: use ``∇g``).

    Example:
        >>> import numpy as np, otcore as ot
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.standard_normal((64, 2)), rng.standard_normal((64, 2)) + 1.0
        >>> solver = ot.neural.W2NeuralDual(
        ...     2, neural_f=ot.neural.ICNN(2, (8,)), neural_g=ot.neural.ICNN(2, (8,)),
        ...     num_train_iters=2, backend="torch", progress_bar=False)
        >>> pot = solver(x, y)
        >>> pot.transport(x).shape, pot.f(x).shape, bool(np.isfinite(pot.distance(x, y)))
        ((64, 2), (64,), True)
        >>> pot.g(y).shape, pot.transport(y, forward=False).shape  # conjugate and inverse map
        ((64,), (64, 2))
    """

    def __init__(self, f_net, g_net, params_f, params_g, ops, conjugate_solver=None):
        self.f_net, self.g_net = f_net, g_net
        self.params_f, self.params_g = params_f, params_g
        self.ops = ops
        self.conjugate_solver = conjugate_solver
        self._jitted = {}

    # -- helpers -----------------------------------------------------------------
    def _in(self, x, name):
        ops = self.ops
        if ops.is_native(x):
            arr, back = x, lambda v: v
        else:
            arr = ops.asarray(x)
            back = ops.to_numpy
        if arr.ndim != 2 or arr.shape[1] != self.f_net.dim_data:
            raise ValueError(
                f"{name} must have shape (n, {self.f_net.dim_data}), got {tuple(arr.shape)}"
            )
        leaf = tree_leaves(self.params_f)[0]
        xp = _xp.namespace(leaf)
        if arr.dtype != leaf.dtype:
            arr = xp.astype(arr, leaf.dtype)
        return arr, back

    def _value(self, net, params, other_net, other_params, x):
        if net.is_potential:
            return net.apply(params, x)
        xp = _xp.namespace(x)
        grad = self.ops.stop_gradient(net.apply(params, x))
        return -other_net.apply(other_params, grad) + _xp.rowdot(xp, grad, x)

    def _f_value(self, x):
        return self._value(self.f_net, self.params_f, self.g_net, self.params_g, x)

    def _f_grad(self, x):
        if self.f_net.is_potential:
            return self.ops.value_and_input_grad_fn(self._f_value)(x)[1]
        return self.f_net.apply(self.params_f, x)

    def _g_grad(self, y):
        if self.g_net.is_potential:
            fn = lambda z: self.g_net.apply(self.params_g, z)  # noqa: E731
            return self.ops.value_and_input_grad_fn(fn)(y)[1]
        return self.g_net.apply(self.params_g, y)

    def _conjugate(self, y, finetune):
        """``(f*(y), ∇f*(y))`` from ``∇g(y)``, fine-tuned by the conjugate solver."""
        xp = _xp.namespace(y)
        x_hat = self._g_grad(y)
        if finetune and self.conjugate_solver is not None:
            vg = self.ops.value_and_input_grad_fn(self._f_value)
            x_hat = self.conjugate_solver.solve(
                self._f_value, y, x_init=x_hat, value_and_grad=vg
            ).grad
        x_hat = self.ops.stop_gradient(x_hat)
        return _xp.rowdot(xp, x_hat, y) - self._f_value(x_hat), x_hat

    def _run(self, key, fn, *args):
        if key not in self._jitted:
            self._jitted[key] = self.ops.jit(fn)
        return self._jitted[key](*args)

    # -- public API -----------------------------------------------------------------
    def f(self, x):
        """The convex potential ``f(x)``, shape ``(n,)``, for ``x`` of shape ``(n, d)``.

        See the class example.
        """
        arr, back = self._in(x, "x")
        return back(self.ops.stop_gradient(self._run("f", self._f_value, arr)))

    def g(self, y, finetune=True):
        """The conjugate ``f*(y) = sup_x ⟨x, y⟩ − f(x)``, shape ``(n,)``.

        Evaluated at ``x = ∇g(y)``, fine-tuned by the conjugate solver when
        ``finetune`` (the amortised ``g`` itself is only a warm start).

        See the class example.
        """
        arr, back = self._in(y, "y")
        val, _ = self._run(("g", finetune), lambda v: self._conjugate(v, finetune), arr)
        return back(val)

    def transport(self, x, forward=True, finetune=True):
        """Push points through the learned map.

        ``forward=True``: ``∇f(x)`` (source to target). ``forward=False``: ``∇f*(y)``
        (target to source), the conjugate maximiser fine-tuned from ``∇g(y)``.

        See the class example.
        """
        arr, back = self._in(x, "x")
        if forward:
            return back(self.ops.stop_gradient(self._run("T", self._f_grad, arr)))
        _, xs = self._run(("g", finetune), lambda v: self._conjugate(v, finetune), arr)
        return back(xs)

    def distance(self, x, y, finetune=True):
        """Full ``W2²`` for the cost ``‖x−y‖²``: ``E‖x‖² + E‖y‖² − 2(E f(x) + E f*(y))``.

        See the class example.
        """
        xa, back = self._in(x, "x")
        ya, _ = self._in(y, "y")
        xp = _xp.namespace(xa)
        fx = self._run("f", self._f_value, xa)
        gy, _ = self._run(("g", finetune), lambda v: self._conjugate(v, finetune), ya)
        d = (
            xp.mean(_xp.rowdot(xp, xa, xa))
            + xp.mean(_xp.rowdot(xp, ya, ya))
            - 2 * (xp.mean(fx) + xp.mean(gy))
        )
        return back(self.ops.stop_gradient(d))

    def plot_ot_map(self, source, target, forward=True, ax=None, max_arrows=256, **kwargs):
        """Scatter the source, target and pushed points with arrows (2-D data only).

        Args:
            source, target: samples ``(n, 2)``.
            forward: draw ``∇f`` from ``source`` (``True``) or ``∇f*`` from ``target``.
            ax: a matplotlib axis (default: a new figure).
            max_arrows: at most this many arrows are drawn.
            **kwargs: passed to ``ax.quiver``.

        Returns:
            ``(fig, ax)``.

        Example:
            >>> import numpy as np, otcore as ot
            >>> solver = ot.neural.W2NeuralDual(2, num_train_iters=0, backend="torch")
            >>> pot = solver(np.zeros((4, 2)), np.ones((4, 2)))  # untrained networks
            >>> import matplotlib
            >>> matplotlib.use("Agg")
            >>> fig, ax = pot.plot_ot_map(np.zeros((4, 2)), np.ones((4, 2)))
        """
        import matplotlib.pyplot as plt

        if self.f_net.dim_data != 2:
            raise ValueError(f"plot_ot_map needs 2-D data, got dim_data={self.f_net.dim_data}")
        src, _ = self._in(source, "source")
        tgt, _ = self._in(target, "target")
        start = src if forward else tgt
        end = self.transport(start, forward=forward)
        start, end = self.ops.to_numpy(start), self.ops.to_numpy(end)
        src, tgt = self.ops.to_numpy(src), self.ops.to_numpy(tgt)
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 5))
        else:
            fig = ax.figure
        ax.scatter(src[:, 0], src[:, 1], s=6, alpha=0.5, label="source")
        ax.scatter(tgt[:, 0], tgt[:, 1], s=6, alpha=0.5, label="target")
        ax.scatter(
            end[:, 0], end[:, 1], s=6, alpha=0.8, label="pushed " + ("∇f" if forward else "∇f*")
        )
        k = min(max_arrows, start.shape[0])
        delta = end[:k] - start[:k]
        kwargs = {"angles": "xy", "scale_units": "xy", "scale": 1, "width": 0.003, **kwargs}
        ax.quiver(start[:k, 0], start[:k, 1], delta[:, 0], delta[:, 1], alpha=0.4, **kwargs)
        ax.legend(loc="best")
        ax.set_aspect("equal")
        return fig, ax
