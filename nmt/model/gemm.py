"""Float32 matrix products on the CPU through oneDNN instead of PyTorch's default BLAS.

`torch.mm` hands float32 CPU products to MKL, which on this project's AMD EPYC
runs the model's shapes at 170-200 GFLOP/s; oneDNN's inner-product primitive
(what bf16 products already use) runs the same float32 products, in IEEE
float32, at 350-440 GFLOP/s. `product` is `F.linear` with that routing;
`linear` adds a backward pass that routes its two products the same way.
Elsewhere (GPU, float64, autocast, a torch without oneDNN) both are `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_BF16 = ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (ONEDNN and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.size(-1) > 0
            and not torch.is_autocast_enabled("cpu"))


def _dense(matrix: torch.Tensor) -> torch.Tensor:
    """`matrix` with its rows or its columns contiguous: other layouts (a column slice of a weight) send
    oneDNN to its reference kernel, hundreds of times slower (measured)."""
    if matrix.is_contiguous() or matrix.t().is_contiguous():
        return matrix
    return matrix.contiguous()


def prepacked(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (N, K), float32 or bfloat16 on a CPU, in oneDNN's own blocked layout (else unchanged): for
    weights used many times (search's), `product` then skips reordering them at every call, and adds the
    bias inside the product (addmm first copies it into every output row). Beam search ran ~10% faster."""
    if ONEDNN and weight.device.type == "cpu" and (
            weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and ONEDNN_BF16)):
        return torch.ops.mkldnn._reorder_linear_weight(_dense(weight))
    return weight


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias, outside autograd; a transposed view costs nothing."""
    if weight.is_mkldnn or _onednn(x, weight):  # the first: from `prepacked`
        rows = _dense(x.reshape(-1, x.size(-1)))  # a 3-D input, too, gets the reference kernel
        weight = weight if weight.is_mkldnn else _dense(weight)
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.size(0))
    return F.linear(x, weight, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return product(x, weight, bias)

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, weight.size(0))  # (M, N)
        grad_x = product(grad_out, weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = product(grad_rows.t(), x.reshape(-1, weight.size(1)).t()) if ctx.needs_input_grad[1] else None
        grad_bias = grad_rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, its float32 CPU products (forward and backward) done by oneDNN."""
    if _onednn(x, weight) and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _Linear.apply(x, _dense(weight), bias)
    return product(x, weight, bias)  # F.linear, and autograd's own backward, wherever oneDNN is not used
