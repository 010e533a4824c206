"""PyTorch side of :mod:`otcore.neural`: ``torch.autograd.grad`` (with ``create_graph``
where the loss contains ``∇f``), parameters as leaf tensors, ``torch.optim`` factories."""

from __future__ import annotations

import numpy as np
import torch

from otcore._lib.tree import tree_leaves, tree_map, tree_unflatten
from otcore.backends.neural import TrainingOps


def _leaf(t):
    return t.detach().requires_grad_(True)


class _OtcoreOptimizer:
    """An :class:`otcore.neural.Adam` on leaf tensors: new leaves after each step."""

    def __init__(self, opt):
        self.opt = opt

    def init(self, params):
        with torch.no_grad():
            return self.opt.init(params)

    def update(self, params, grads, state):
        with torch.no_grad():
            new, state = self.opt.update(grads, state, params)
        return tree_map(_leaf, new), state

    def project(self, params, fn):
        with torch.no_grad():
            return tree_map(_leaf, fn(params))


class _TorchOptimizer:
    """A ``torch.optim`` factory ``params -> Optimizer``; it updates the leaves in place."""

    def __init__(self, factory, name):
        self.factory = factory
        self.name = name

    def init(self, params):
        opt = self.factory(tree_leaves(params))
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"{self.name} must be a callable returning a torch.optim.Optimizer "
                f"(e.g. lambda p: torch.optim.Adam(p, lr=1e-3)), got {type(opt).__name__}"
            )
        return opt

    def update(self, params, grads, state):
        for p, g in zip(tree_leaves(params), tree_leaves(grads)):
            p.grad = g
        state.step()
        state.zero_grad(set_to_none=True)
        return params, state

    def project(self, params, fn):
        with torch.no_grad():
            new = fn(params)
            for p, q in zip(tree_leaves(params), tree_leaves(new)):
                if q is not p:
                    p.copy_(q)
        return params


class TorchNeuralOps(TrainingOps):
    """Autodiff and optimiser plumbing for PyTorch tensors (``TorchAdapter.training()``)."""

    # -- arrays -----------------------------------------------------------------
    def asarray(self, x, dtype=None):
        return torch.as_tensor(np.asarray(x), dtype=dtype)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    # -- input gradients ----------------------------------------------------------
    def input_grad(self, fn, x):
        """``∇ fn(x)`` per row, with a graph back to ``fn``'s parameters when grad is on."""
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            xl = x.detach().requires_grad_(True)
            vals = fn(xl)
            (g,) = torch.autograd.grad(vals.sum(), xl, create_graph=create)
        return g

    def value_and_input_grad_fn(self, fn):
        def vg(x):
            with torch.enable_grad():
                xl = x.detach().requires_grad_(True)
                vals = fn(xl)
                (g,) = torch.autograd.grad(vals.sum(), xl)
            return vals.detach(), g.detach()

        return vg

    # -- optimisers ---------------------------------------------------------------
    def _wrap_adam(self, opt):
        return _OtcoreOptimizer(opt)

    def _wrap_other(self, opt, name):
        if isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"{name} must be a factory params -> torch.optim.Optimizer (the parameters do "
                "not exist yet), e.g. lambda p: torch.optim.Adam(p, lr=1e-3); got an Optimizer"
            )
        if callable(opt) and not (hasattr(opt, "init") and hasattr(opt, "update")):
            return _TorchOptimizer(opt, name)
        raise TypeError(
            f"{name} must be an otcore.neural.Adam or a factory params -> torch.optim.Optimizer "
            f"for PyTorch data, got {type(opt).__name__}"
        )

    def prepare_params(self, params):
        return tree_map(_leaf, params)

    def detach_params(self, params):
        return tree_map(lambda t: t.detach(), params)

    # -- steps ----------------------------------------------------------------------
    def make_train_step(self, loss_fn, opt_a, opt_b, update_a, update_b, project_a, project_b):
        def step(pa, pb, sa, sb, x, y):
            la, lb = tree_leaves(pa), tree_leaves(pb)
            with torch.enable_grad():
                loss, aux = loss_fn(pa, pb, x, y)
                grads = torch.autograd.grad(loss, la + lb, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(la + lb, grads)]
            if update_a:
                pa, sa = opt_a.update(pa, tree_unflatten(pa, grads[: len(la)]), sa)
            if update_b:
                pb, sb = opt_b.update(pb, tree_unflatten(pb, grads[len(la) :]), sb)
            pa = opt_a.project(pa, project_a)
            pb = opt_b.project(pb, project_b)
            return pa, pb, sa, sb, tuple(v.detach() for v in (loss, *aux))

        return step

    def make_eval_step(self, loss_fn):
        def step(pf, pg, x, y):
            pf_d = tree_unflatten(pf, [t.detach() for t in tree_leaves(pf)])
            pg_d = tree_unflatten(pg, [t.detach() for t in tree_leaves(pg)])
            with torch.no_grad():
                loss, aux = loss_fn(pf_d, pg_d, x, y)
            return tuple(v.detach() for v in (loss, *aux))

        return step
