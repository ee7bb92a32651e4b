"""Bidirectional multi-layer LSTM encoder over packed sequences."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.model.dropout import dropout
from nmt.tokenizer import PAD


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hidden_size: int, layers: int, dropout: float):
        super().__init__()
        if hidden_size % 2:
            raise ValueError("model.hidden_size must be even: the encoder splits it over two directions")
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.dropout_p = dropout
        self.lstm = nn.LSTM(emb_dim, hidden_size // 2, layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.layers = layers

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """src: (B, S), src_lengths: (B,) on the CPU.

        Returns the outputs (B, S, H), zero at padding, and the final (h, c) per
        layer with both directions concatenated: (layers, B, H) each, ready to
        start a decoder of the same depth and hidden size H.
        """
        embedded = dropout(self.embed(src), self.dropout_p, self.training)  # (B, S, E)
        packed = pack_padded_sequence(embedded, src_lengths, batch_first=True, enforce_sorted=False)
        outputs, (h, c) = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))

        def join_directions(state: torch.Tensor) -> torch.Tensor:
            # (layers * 2, B, H/2) -> (layers, B, H), forward then backward
            state = state.view(self.layers, 2, state.size(1), state.size(2))
            return torch.cat([state[:, 0], state[:, 1]], dim=2)

        return outputs, (join_directions(h), join_directions(c))
