"""Luong et al. (2015) global attention: dot, general and concat scores. The part of each score that depends
only on the encoder (`W_a h_s` for general, `W_2 h_s` for concat) is computed once per batch by `keys`, not at
every decoder step."""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.gemm import linear


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
            return linear(memory, self.w_a.weight)
        if self.kind == "concat":
            return self.w_key(memory)
        return memory

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        """query: (N, H); keys, memory: (n, S, H); mask: (n, S) True at real positions; N = n * g. Each
        sentence's memory serves g consecutive query rows (its beams), so beam search never copies the memory
        per beam. Returns the context (N, H) and the weights (N, S), which are zero at padding."""
        n, length, hidden = keys.shape
        queries = query.view(n, -1, hidden)  # (n, g, H)
        if self.kind == "concat":
            scores = self.v(torch.tanh(keys.unsqueeze(1) + self.w_query(queries).unsqueeze(2))).squeeze(3)
        else:
            scores = torch.bmm(queries, keys.transpose(1, 2))  # (n, g, S)
        # the softmax in at least float32, whatever the autocast dtype
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=2).to(memory.dtype)
        context = torch.bmm(weights, memory)  # (n, g, H)
        return context.view(-1, hidden), weights.view(-1, length)
