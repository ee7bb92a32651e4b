"""LSTM decoder with Luong attention and input feeding, one time step at a time.

Input feeding makes step t depend on the attentional vector of step t-1, so the decoder cannot run as one fused
LSTM over the sequence. What does not depend on the previous step is hoisted out of the loop: the embedding part
of the first layer's input projection is computed for all steps at once and enters each step as that step's
bias, the attention keys are computed once per batch (`Attention.keys`), the output projection runs after the
loop and the dropout masks of every step are drawn at once.

`_advance` defines a step. `recurrence.Recurrence` (training with `fused_recurrence`: dot and general attention,
its own backward pass) and search's `search_step.FastStep` compute the same, held to it by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model import recurrence
from nmt.model.attention import Attention
from nmt.model.dropout import dropout, keep_mask
from nmt.model.gemm import linear
from nmt.tokenizer import PAD


@dataclass
class Memory:
    """What the decoder reads from the encoder: one row per sentence, shared by that sentence's beams."""

    outputs: torch.Tensor  # (n, S, H)
    keys: torch.Tensor  # (n, S, H) attention keys, precomputed
    mask: torch.Tensor  # (n, S) True at real source positions

    def index_select(self, rows: torch.Tensor) -> Memory:
        return Memory(*(x.index_select(0, rows) for x in (self.outputs, self.keys, self.mask)))

    def cat(self, other: Memory) -> Memory:
        """Both memories' sentences, the shorter zero-padded (masked out) to the longer source."""
        length = max(self.mask.size(1), other.mask.size(1))

        def padded(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x.new_zeros(x.size(0), length - x.size(1), *x.shape[2:])], dim=1)

        return Memory(*(torch.cat([padded(a), padded(b)]) for a, b in (
            (self.outputs, other.outputs), (self.keys, other.keys), (self.mask, other.mask))))


@dataclass
class DecoderState:
    h: list[torch.Tensor]  # per layer (N, H)
    c: list[torch.Tensor]  # per layer (N, H)
    feed: torch.Tensor  # (N, H) previous attentional vector, or (N, 0) without input feeding

    def index_select(self, rows: torch.Tensor) -> DecoderState:
        return DecoderState([h.index_select(0, rows) for h in self.h], [c.index_select(0, rows) for c in self.c],
                            self.feed.index_select(0, rows))

    def cat(self, other: DecoderState) -> DecoderState:
        return DecoderState([torch.cat(pair) for pair in zip(self.h, other.h)],
                            [torch.cat(pair) for pair in zip(self.c, other.c)], torch.cat([self.feed, other.feed]))


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hidden_size: int, layers: int, attention: str,
                 input_feed: bool, dropout: float, *, fused_recurrence: bool = False, compiled_steps: bool = False):
        super().__init__()
        self.emb_dim, self.hidden_size, self.input_feed = emb_dim, hidden_size, input_feed
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        first_input = emb_dim + (hidden_size if input_feed else 0)
        self.cells = nn.ModuleList([nn.LSTMCell(first_input if i == 0 else hidden_size, hidden_size)
                                    for i in range(layers)])
        self.attention = Attention(attention, hidden_size)
        self.combine = nn.Linear(2 * hidden_size, hidden_size, bias=False)  # W_c [context; h]
        self.dropout_p = dropout
        self.generator = nn.Linear(hidden_size, vocab_size)
        self.fused_recurrence, self.compiled_steps = fused_recurrence, compiled_steps

    def _embedding_gates(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (...,) -> (..., 4H): the first layer's input projection of the embeddings, biases included."""
        cell = self.cells[0]
        embedded = dropout(self.embed(tokens), self.dropout_p, self.training)
        return linear(embedded, cell.weight_ih[:, : self.emb_dim], cell.bias_ih + cell.bias_hh)

    def _first_layer(self, emb_gates: torch.Tensor, state: DecoderState):
        """The first LSTM layer, its embedding projection already in `emb_gates` (N, 4H)."""
        cell = self.cells[0]
        w_feed = cell.weight_ih[:, self.emb_dim:]  # (4H, H), or (4H, 0) without input feeding
        if emb_gates.is_cuda:  # the fused CUDA kernel takes the gate pre-activations directly
            input_gates = torch.addmm(emb_gates, state.feed, w_feed.t())
            hidden_gates = F.linear(state.h[0], cell.weight_hh).to(input_gates.dtype)
            h, c, _ = torch.ops.aten._thnn_fused_lstm_cell(input_gates, hidden_gates, state.c[0].to(input_gates.dtype))
            return h, c
        # on the CPU, lstm_cell accepts the per-row embedding gates as its input bias
        return torch.lstm_cell(state.feed, (state.h[0], state.c[0]), w_feed, cell.weight_hh, emb_gates, None)

    def _advance(self, emb_gates: torch.Tensor, memory: Memory, state: DecoderState,
                 masks: torch.Tensor | None = None):
        """One step from the first layer's embedding gates (N, 4H), with this step's dropout masks
        (layers, N, H) or None; returns (attentional vector, state, attention weights)."""
        h, c = self._first_layer(emb_gates, state)
        hs, cs = [h], [c]
        for layer, (cell, h_prev, c_prev) in enumerate(zip(self.cells[1:], state.h[1:], state.c[1:])):
            h, c = cell(h if masks is None else h * masks[layer], (h_prev, c_prev))
            hs.append(h)
            cs.append(c)
        context, weights = self.attention(h, memory.keys, memory.outputs, memory.mask)
        attentional = torch.tanh(linear(torch.cat([context, h], dim=1), self.combine.weight))  # (N, H)
        if masks is not None:
            attentional = attentional * masks[-1]
        feed = attentional if self.input_feed else state.feed
        return attentional, DecoderState(hs, cs, feed), weights

    @property
    def runs_recurrence(self) -> bool:
        """Whether training runs `recurrence.Recurrence` (it covers dot and general attention only)."""
        return self.fused_recurrence and self.attention.kind in ("dot", "general")

    def forward(self, tgt_in: torch.Tensor, memory: Memory, state: DecoderState,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced decoding: tgt_in (B, T) -> logits (B, T, V), or (n, V) for the n positions where
        `keep` (B, T) is True: the loss skips padding, so the output projection need not compute it."""
        batch, steps = tgt_in.shape
        emb_gates = self._embedding_gates(tgt_in.t())  # (T, B, 4H), all steps at once, a step's rows together
        # scaled dropout masks (layers, T, B, H): [l] between layers l and l + 1, [-1] on the attentional vector;
        # one draw per batch costs a fraction of one bernoulli call per step
        masks = None
        if self.training and self.dropout_p != 0.0:
            masks = keep_mask((len(self.cells), steps, batch, self.hidden_size), self.dropout_p, tgt_in.device)
        if self.runs_recurrence:  # (T, B, 4H) -> attentional vectors (B, T, H)
            score_bias = torch.where(memory.mask, 0.0, float("-inf")).unsqueeze(1)  # (B, 1, S)
            spec = recurrence.Spec(
                layers=len(self.cells), dtype=recurrence.compute_dtype(emb_gates), score_bias=score_bias,
                layer_masks=None if masks is None else masks[:-1], out_masks=None if masks is None else masks[-1],
                input_feed=self.input_feed, compiled=self.compiled_steps)
            upper = [w for cell in self.cells[1:] for w in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
            outputs = recurrence.Recurrence.apply(spec, emb_gates, memory.keys, memory.outputs, *state.h, *state.c,
                                                  self.cells[0].weight_ih[:, self.emb_dim:], self.cells[0].weight_hh,
                                                  *upper, self.combine.weight)
        else:
            outputs = []
            for t in range(steps):
                attentional, state, _ = self._advance(emb_gates[t], memory, state,
                                                      None if masks is None else masks[:, t])
                outputs.append(attentional)
            outputs = torch.stack(outputs, dim=1)  # (B, T, H)
        return linear(outputs if keep is None else outputs[keep], self.generator.weight, self.generator.bias)

    def step(self, tokens: torch.Tensor, memory: Memory, state: DecoderState):
        """The reference decoding step: tokens (N,) -> logits (N, V), the new state, attention (N, S)."""
        attentional, state, attention = self._advance(self._embedding_gates(tokens), memory, state)
        return linear(attentional, self.generator.weight, self.generator.bias), state, attention
