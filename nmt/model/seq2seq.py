"""`Seq2Seq`: the encoder, the decoder and the one reference decoding step search may call."""

from __future__ import annotations

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.model import gemm, kernels
from nmt.model.decoder import Decoder, DecoderState, Memory
from nmt.model.encoder import Encoder
from nmt.tokenizer import PAD


class Seq2Seq(nn.Module):
    """`fused_recurrence` trains the decoder's loop through `recurrence.Recurrence` (dot and general
    attention) instead of autograd's step loop: the same function and gradients, fewer operations;
    `compiled_steps` runs that loop's element-wise steps compiled by torch.compile."""

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, *,
                 fused_recurrence: bool = False, compiled_steps: bool = False):
        super().__init__()
        self.encoder = Encoder(src_vocab_size, cfg.emb_dim, cfg.hidden_size, cfg.layers, cfg.dropout)
        self.decoder = Decoder(tgt_vocab_size, cfg.emb_dim, cfg.hidden_size, cfg.layers, cfg.attention,
                               cfg.input_feed, cfg.dropout, fused_recurrence=fused_recurrence,
                               compiled_steps=compiled_steps)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -cfg.init_range, cfg.init_range)
        with torch.no_grad():
            self.encoder.embed.weight[PAD].zero_()
            self.decoder.embed.weight[PAD].zero_()
        if cfg.tie_embeddings:  # ModelConfig checked emb_dim == hidden_size
            self.decoder.generator.weight = self.decoder.embed.weight

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[Memory, DecoderState]:
        outputs, (h, c) = self.encoder(src, src_lengths)  # h, c: (layers, B, H), the decoder's first state
        feed = h.new_zeros(h.size(1), self.decoder.hidden_size if self.decoder.input_feed else 0)
        state = DecoderState(list(h.unbind(0)), list(c.unbind(0)), feed)
        return Memory(outputs, self.decoder.attention.keys(outputs), src != PAD), state

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits of the targets whose inputs are tgt_in (B, T): see `Decoder.forward`."""
        return self.decoder(tgt_in, *self.encode(src, src_lengths), keep)

    def step(self, tokens: torch.Tensor, memory: Memory, state: DecoderState):
        return self.decoder.step(tokens, memory, state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix once: parameters() skips duplicates

    def computed_by(self, device: torch.device, precision: str) -> dict:
        """Which code computes training on `device` in `precision`: the recurrence's path and, for float32 on a
        CPU, the product routes (autocast's products do not take them). A resume is bit-exact only where these
        are the same, so checkpoints and metrics.jsonl record them."""
        if not self.decoder.runs_recurrence:
            recurrence = "autograd's step loop"
        elif self.decoder.compiled_steps:
            recurrence = "torch.compile"
        elif device.type == "cpu" and kernels.library() is not None:
            recurrence = "C kernels"
        else:
            recurrence = "PyTorch operations"
        if device.type != "cpu" or precision != "fp32":
            return {"precision": precision, "recurrence": recurrence, "products": f"{device.type} {precision}"}
        routes = gemm.routes()
        products = {"step": routes.step, "step_prepacked": routes.step_prepacked, "bulk": routes.bulk,
                    "gradients": routes.gradients, "search_prepacked": routes.prepacked}
        return {"precision": precision, "recurrence": recurrence, "products": products}
