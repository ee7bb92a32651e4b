"""Dropout masks from random bits: the model draws a mask the size of its activations for every batch, and on
the CPU how they are drawn shows in the step time. `bernoulli_` (what `nn.Dropout` uses) costs several times
`torch.rand` per element there, and `torch.rand` several times cutting 64-bit random integers into four 16-bit
draws, which is what `keep_mask` does. A 16-bit draw sets the keep probability to the nearest 1/65536."""

from __future__ import annotations

import math

import torch


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A mask of `shape`: 0 with probability p, else 1 / (1 - p) (the kept activations' scale)."""
    keep = 1.0 - p
    count = math.prod(shape)
    bits = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    draws = bits.view(torch.int16)[:count].view(shape)  # uniform over [-32768, 32767]
    return (draws < round(keep * 65536) - 32768).to(dtype).mul_(1.0 / keep)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p), in training only."""
    if not training or p == 0.0:
        return x
    return x * keep_mask(x.shape, p, x.device, x.dtype)
