"""PyTorch adapter: eager loops (one host sync per convergence check), native logsumexp."""

from __future__ import annotations

import torch

from ._base import Adapter


class TorchAdapter(Adapter):
    """Adapter for ``torch.Tensor`` inputs (any device)."""

    name = "torch"

    has_autodiff = True

    def vjp(self, fun, args, kwargs):
        leaves = [
            a.detach().requires_grad_(True)
            if isinstance(a, torch.Tensor) and a.is_floating_point()
            else a
            for a in args
        ]
        with torch.enable_grad():
            out = fun(*leaves, **kwargs)
        tracked = [
            i for i, a in enumerate(leaves) if isinstance(a, torch.Tensor) and a.requires_grad
        ]

        def vjp_fn(cotangent):
            grads = torch.autograd.grad(
                out, [leaves[i] for i in tracked], cotangent, allow_unused=True
            )
            result = [None] * len(args)
            for i, g in zip(tracked, grads):
                result[i] = torch.zeros_like(leaves[i]) if g is None else g
            return tuple(result)

        return out.detach(), vjp_fn

    def stop_gradient(self, x):
        return x.detach()

    def is_differentiating(self, *arrays) -> bool:
        return torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in arrays if a is not None
        )

    def logsumexp(self, x, axis: int):
        return torch.logsumexp(x, dim=axis)
