"""The training loss: the negative log-likelihood of the target tokens, summed, optionally label-smoothed."""

from __future__ import annotations

import torch

#: rows per chunk are chosen so that a chunk's float32 log-probabilities (4 MiB) stay in the CPU's caches
CHUNK_ELEMENTS = 2**20


class SummedNLL(torch.autograd.Function):
    """When a gradient is wanted, the forward pass also forms it, a chunk of rows at a time while their float32
    log-probabilities are still in the cache, in the logits' dtype; the backward pass only scales it. Autograd's
    log_softmax + nll_loss keeps the (n, V) float32 log-probabilities and makes four more passes over them in memory."""

    @staticmethod
    def forward(ctx, logits, targets, label_smoothing):
        n, vocab = logits.shape
        acc = torch.promote_types(logits.dtype, torch.float32)
        want_grad = ctx.needs_input_grad[0]
        grad_logits = torch.empty_like(logits) if want_grad else None
        loss = logits.new_zeros((), dtype=acc)
        rows = max(1, CHUNK_ELEMENTS // max(vocab, 1))
        for start in range(0, n, rows):
            chunk_targets = targets[start:start + rows]
            log_probs = torch.log_softmax(logits[start:start + rows], dim=-1, dtype=acc)
            nll = -log_probs.gather(1, chunk_targets.unsqueeze(1)).sum()
            if label_smoothing:
                nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1).sum()
            loss += nll
            if want_grad:  # softmax minus the target distribution
                probs = log_probs.exp_()
                if label_smoothing:
                    probs.sub_(label_smoothing / vocab)
                probs[torch.arange(len(chunk_targets), device=probs.device), chunk_targets] -= 1.0 - label_smoothing
                grad_logits[start:start + rows] = probs
        ctx.grad_logits = grad_logits
        return loss

    @staticmethod
    def backward(ctx, grad):
        grad_logits, ctx.grad_logits = ctx.grad_logits, None  # one backward pass per forward: scaled in place
        # a Python number: bf16 gradients are scaled in float32, not by the scale rounded to bf16
        return grad_logits.mul_(grad.item()), None, None


def summed_nll(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """`F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=...)`: the log-softmax
    in float32 (at least), fused with the cast from bf16 logits, and a leaner backward."""
    return SummedNLL.apply(logits, targets, label_smoothing)
