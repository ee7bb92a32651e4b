"""Luong et al. (2015) global attention: dot, general and concat scores.

The part of each score that depends only on the encoder (`W_a h_s` for
general, `W_2 h_s` for concat) is computed once per batch by `keys`, not at
every decoder step.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, kind: str, hidden_size: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.w_a = nn.Linear(hidden_size, hidden_size, bias=False)
        elif kind == "concat":
            self.w_query = nn.Linear(hidden_size, hidden_size, bias=False)
            self.w_key = nn.Linear(hidden_size, hidden_size, bias=True)
            self.v = nn.Linear(hidden_size, 1, bias=False)
        elif kind != "dot":
            raise ValueError(f"unknown attention '{kind}'")

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """memory: (B, S, H) encoder outputs -> (B, S, H) precomputed keys."""
        if self.kind == "general":
            return self.w_a(memory)
        if self.kind == "concat":
            return self.w_key(memory)
        return memory

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        """query: (B, H); keys, memory: (B, S, H); mask: (B, S) True at real positions.

        Returns the context (B, H) and the weights (B, S), which are zero at padding.
        """
        if self.kind == "concat":
            scores = self.v(torch.tanh(keys + self.w_query(query).unsqueeze(1))).squeeze(2)
        else:
            scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)  # (B, S)
        weights = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=1).to(memory.dtype)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (B, H)
        return context, weights
