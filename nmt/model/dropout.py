"""Dropout whose mask comes from `torch.rand`: on the CPU, the `bernoulli_` that `nn.Dropout` draws with
costs several times as much per element, and the model draws a mask for every batch."""

from __future__ import annotations

import torch


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p), in training only."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    return x * (torch.rand(x.shape, device=x.device) < keep).to(x.dtype).mul_(1.0 / keep)
