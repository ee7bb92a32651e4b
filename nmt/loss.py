"""The training loss: the negative log-likelihood of the target tokens, summed (the trainer divides it by
the batch's sentences, or its tokens), optionally label-smoothed."""

from __future__ import annotations

import torch


class SummedNLL(torch.autograd.Function):
    """The summed, optionally label-smoothed, NLL of logits, with a backward of two passes over the
    (n, V) matrix: exp, then scale-and-cast. Autograd's log_softmax + nll_loss backward builds a zero
    matrix, scatters into it, reads it back with the log-probabilities and casts the result: four."""

    @staticmethod
    def forward(ctx, logits, targets, label_smoothing):
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        loss = -log_probs.gather(1, targets.unsqueeze(1)).sum()
        if label_smoothing:
            loss = (1.0 - label_smoothing) * loss - label_smoothing * log_probs.mean(dim=-1).sum()
        ctx.save_for_backward(log_probs, targets)
        ctx.label_smoothing, ctx.logits_dtype = label_smoothing, logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad):
        log_probs, targets = ctx.saved_tensors
        smoothing = ctx.label_smoothing
        grad_logits = log_probs.exp()  # softmax, minus the target distribution below
        if smoothing:
            grad_logits.sub_(smoothing / log_probs.size(1))
        rows = torch.arange(targets.numel(), device=targets.device)
        grad_logits[rows, targets] -= 1.0 - smoothing
        return torch.mul(grad_logits, grad, out=torch.empty_like(grad_logits, dtype=ctx.logits_dtype)), None, None


def summed_nll(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """`F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=...)`: the log-softmax
    in float32 (at least), fused with the cast from bf16 logits, and a leaner backward."""
    return SummedNLL.apply(logits, targets, label_smoothing)
