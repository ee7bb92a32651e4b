"""Bidirectional multi-layer LSTM encoder.

On the CPU each layer runs as one padded call, which oneDNN computes: the packed sequences `nn.LSTM` takes fall back to
ATen's step-by-step loop whenever a batch's sentences differ in length (batches are grouped by target length, so many
do), slower there, per sentence, than oneDNN computing the padding too. Padding must not leak into a sentence's states,
so each layer's input gets one more feature, 1 at padding, whose weights drive the input gate to 0 and the forget gate
to 1 there exactly (`PAD_GATE`): the state passes padding unchanged. The backward direction meets the padding first,
from a zero state, and so reaches each sentence's last token at zero; the forward direction carries its final cell state
through the padding, and its final h is read at the last token. Elsewhere (CUDA, where cuDNN runs packed sequences
natively) the layers run through `nn.LSTM` over packed sequences: the same function, which the tests hold them to. Where
oneDNN has no bfloat16 kernels (AVX2 CPUs) its LSTM cannot run in bf16, so under bf16 autocast there (an explicit bf16
decode, which `device.resolve_precision` warns about) the layers run in float32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.model.dropout import dropout
from nmt.model.gemm import ONEDNN_BF16
from nmt.tokenizer import PAD

#: the pre-activation added at padding: sigmoid(-PAD_GATE) is 0 and sigmoid(PAD_GATE) is 1 in float32, also after
#: bfloat16 rounding and beside any pre-activation bounded weights can give
PAD_GATE = 1e4


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hidden_size: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.dropout_p = dropout
        self.lstm = nn.LSTM(emb_dim, hidden_size // 2, layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, *, packed: bool | None = None):
        """src: (B, S), src_lengths: (B,) on the CPU. `packed`: run `nn.LSTM` over packed sequences (default:
        off the CPU only). Returns the outputs (B, S, H), zero at padding, and the final (h, c) per layer with
        both directions concatenated: (layers, B, H) each, ready to start a decoder of the same depth and H."""
        embedded = dropout(self.embed(src), self.dropout_p, self.training)  # (B, S, E)
        if packed is False or (packed is None and src.device.type == "cpu"):
            return self._padded(embedded, src_lengths, src != PAD)
        outputs, (h, c) = self.lstm(pack_padded_sequence(embedded, src_lengths, batch_first=True, enforce_sorted=False))
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))
        # (layers * 2, B, H/2), each layer's forward direction then its backward one -> (layers, B, H)
        return outputs, (torch.cat([h[0::2], h[1::2]], dim=2), torch.cat([c[0::2], c[1::2]], dim=2))

    def _padded(self, embedded: torch.Tensor, src_lengths: torch.Tensor, mask: torch.Tensor):
        batch, half = embedded.size(0), self.lstm.hidden_size
        at_padding = (~mask).unsqueeze(2).to(embedded.dtype)  # (B, S, 1)
        # the padding feature's input weights: -PAD_GATE into the input gate, +PAD_GATE into the forget gate
        column = self.lstm.weight_ih_l0.new_zeros(4 * half, 1)  # gate order i, f, g, o
        column[:half], column[half:2 * half] = -PAD_GATE, PAD_GATE
        last = (torch.arange(batch, device=mask.device), src_lengths.to(mask.device) - 1)
        x, hs, cs = embedded, [], []
        # bf16 autocast would hand oneDNN an LSTM it has no kernel for; the embeddings are float32
        float32_only = embedded.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not ONEDNN_BF16
        for layer in range(self.lstm.num_layers):
            if layer:
                x = dropout(x, self.dropout_p, self.training)
            zeros = x.new_zeros(2, batch, half)
            weights = []
            for w_ih, w_hh, b_ih, b_hh in self.lstm.all_weights[2 * layer: 2 * layer + 2]:  # `_VF.lstm`'s order
                weights += [torch.cat([w_ih, column], 1), w_hh, b_ih, b_hh]
            with torch.autocast("cpu", enabled=False) if float32_only else contextlib.nullcontext():
                x, h, c = torch._VF.lstm(torch.cat([x, at_padding], 2), (zeros, zeros), weights,
                                         True, 1, 0.0, self.training, True, True)  # x: (B, S, H)
            hs.append(torch.cat([x[last][:, :half], h[1]], 1))  # the forward direction's h at the last token
            cs.append(torch.cat([c[0], c[1]], 1))
        return x * mask.unsqueeze(2).to(x.dtype), (torch.stack(hs), torch.stack(cs))
