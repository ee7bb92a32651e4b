"""The decoding step search runs, `DecodeStep`: `Seq2Seq` itself (its `step` is the reference,
`Decoder._advance`), or `FastStep`, built from a model once per translation job, which computes the same step
in fewer operations from the model's weights laid out once:

- one product per LSTM layer on [input; h] (`recurrence.stacked_layers`);
- the cell-input gate's rows doubled, so that tanh(x) = 2 sigmoid(2x) - 1 and one sigmoid covers all four gates
  (float32 tanh is slow on the CPU; doubling is exact);
- a token's first-layer embedding gates are a row of a (V, 4H) table, a lookup instead of a product;
- the matrices in oneDNN's blocked layout where this machine's products use it (`gemm.prepacked`).

The weights are a snapshot: build a new `FastStep` after the model changes (training validates with a fresh one
each time). `for_search` picks the reference where `FastStep` does not apply (concat attention, CUDA, whose
fused LSTM cell already serves the reference step).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from nmt.model.decoder import DecoderState, Memory
from nmt.model.gemm import prepacked, product
from nmt.model.recurrence import compute_dtype, stacked_layers


class DecodeStep(Protocol):
    """What greedy and beam search call. Memory and state have `index_select(rows)`, and `cat(other)`
    for sentences joining a running `BeamSearch`."""

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S) padded ids and their lengths (B,) -> the memory and the decoder's first state."""

    def step(self, tokens: Tensor, memory: Memory, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        """tokens (N,) -> logits (N, V), the next state and the attention weights (N, S)."""


def for_search(model) -> DecodeStep:
    """The step a search of `model` should run, in the current autocast dtype: call it inside the
    precision context the search will run in."""
    if model.decoder.attention.kind not in ("dot", "general") or model.decoder.generator.weight.is_cuda:
        return model
    return FastStep(model)


class FastStep:
    def __init__(self, model):
        self.model = model
        decoder = self.decoder = model.decoder
        self.hidden_size, self.input_feed = decoder.hidden_size, decoder.input_feed
        self.dtype = dtype = compute_dtype(decoder.generator.weight)
        with torch.no_grad():
            doubled = torch.ones(4 * self.hidden_size, 1, device=decoder.generator.weight.device)
            doubled[2 * self.hidden_size: 3 * self.hidden_size] = 2.0
            first, emb_dim = decoder.cells[0], decoder.emb_dim
            upper = [(c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh) for c in decoder.cells[1:]]
            layers, self.biases = stacked_layers((first.weight_ih[:, emb_dim:], first.weight_hh), upper, dtype,
                                                 torch.promote_types(dtype, torch.float32), gate_rows=doubled)
            self.layers = [prepacked(w) for w in layers]  # per layer (4H, in + H)
            # (V, 4H): layer 0's input projection of every target embedding, biases included
            self.emb_gates = product(decoder.embed.weight.to(dtype),
                                     (first.weight_ih[:, :emb_dim] * doubled).to(dtype),
                                     ((first.bias_ih + first.bias_hh) * doubled.squeeze(1)).to(dtype))
            self.combine = prepacked(decoder.combine.weight.to(dtype))  # (H, 2H)
            self.generator = prepacked(decoder.generator.weight.to(dtype))  # (V, H)
            self.generator_bias = decoder.generator.bias.to(dtype)

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        return self.model.encode(src, src_lengths)

    def step(self, tokens: Tensor, memory: Memory, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        dtype, hidden = self.dtype, self.hidden_size
        accumulate = torch.promote_types(dtype, torch.float32)  # gates and cell state
        emb_gates = self.emb_gates.index_select(0, tokens)  # (N, 4H)
        below = state.feed.to(dtype)  # layer 0's input: the previous attentional vector
        hs, cs = [], []
        for n, (w, bias) in enumerate(zip(self.layers, self.biases)):
            gates = product(torch.cat([below, state.h[n].to(dtype)], 1), w, step=True,
                            varying_rows=True).to(accumulate)  # (N, 4H)
            gates += emb_gates if n == 0 else bias
            torch.sigmoid_(gates)[:, 2 * hidden: 3 * hidden].mul_(2).sub_(1)  # tanh: those rows were doubled
            i, f, cell_input, o = gates.chunk(4, 1)
            c = torch.addcmul(f * state.c[n], i, cell_input)
            # o * tanh(c), kept in the compute dtype: h only ever enters products
            below = (o * torch.sigmoid(2 * c).mul_(2).sub_(1)).to(dtype)
            hs.append(below)
            cs.append(c)
        context, attention = self.decoder.attention(below, memory.keys, memory.outputs, memory.mask)
        combine_in = torch.cat([context.to(dtype), below], 1)  # (N, 2H)
        attentional = torch.tanh(product(combine_in, self.combine, step=True, varying_rows=True))  # (N, H)
        logits = product(attentional, self.generator, self.generator_bias, step=True, varying_rows=True)
        feed = attentional if self.input_feed else state.feed
        return logits, DecoderState(hs, cs, feed), attention


class Ensemble:
    """Several models decoding as one: each runs its own step on its own memory and state, and the search
    sees the mean of their log-probabilities (and of their attention weights)."""

    def __init__(self, steps: list[DecodeStep]):
        self.steps = steps

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Each, Each]:
        encoded = [step.encode(src, src_lengths) for step in self.steps]
        return Each([memory for memory, _ in encoded]), Each([state for _, state in encoded])

    def step(self, tokens: Tensor, memory: Each, state: Each) -> tuple[Tensor, Each, Tensor]:
        outputs = [step.step(tokens, m, s) for step, m, s in zip(self.steps, memory.items, state.items)]
        log_probs = torch.stack([torch.log_softmax(logits.float(), dim=1) for logits, _, _ in outputs]).mean(0)
        attention = torch.stack([weights.float() for _, _, weights in outputs]).mean(0)
        return log_probs, Each([s for _, s, _ in outputs]), attention  # log-probs are logits the search normalises


class Each:
    """One memory or state per ensemble member, selected together."""

    def __init__(self, items: list):
        self.items = items

    def index_select(self, rows: Tensor) -> Each:
        return Each([item.index_select(rows) for item in self.items])

    def cat(self, other: Each) -> Each:
        return Each([mine.cat(theirs) for mine, theirs in zip(self.items, other.items)])
