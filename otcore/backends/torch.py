"""PyTorch adapter: eager loops (one host sync per convergence check), native logsumexp."""

from __future__ import annotations

import torch

from ._base import Adapter


class TorchAdapter(Adapter):
    """Adapter for ``torch.Tensor`` inputs (any device)."""

    name = "torch"

    def stop_gradient(self, x):
        return x.detach()

    def is_differentiating(self, *arrays) -> bool:
        return torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in arrays if a is not None
        )

    def logsumexp(self, x, axis: int):
        return torch.logsumexp(x, dim=axis)
