"""The decoder's teacher-forced recurrence as one autograd function: training's hot loop.

Autograd's step loop records dozens of nodes per target position and, walking back, adds every recurrent
weight's gradient into a full-size buffer once per position: T products whose inner dimension is the batch,
then T additions of a (4H, in) matrix. This function computes the same thing (`Decoder._advance` stays the
definition; tests hold this to it) with each step's activations written into preallocated tensors, walks back
through time computing only the gradients of states and inputs, and forms each weight gradient once at the
end as one product over all positions, (T*B, 4H)^T @ (T*B, in), where the hardware is efficient.

Precision: the gate and combination products run in the compute dtype (bf16 under autocast, else float32);
gate pre-activations, the cell state, the nonlinearities and the attention (one row per sentence, which bf16
runs no faster on a CPU) stay float32. Only `dot` and `general` attention are covered: their keys are computed
before the loop, so the loop's attention is two batched products and a softmax.

Each step's element-wise work (a layer's gates and cell, the attention, the attentional vector, and their
gradients) is one call: to `kernels` (C) on a CPU where they could be built, else to `TorchSteps`, the same
arithmetic in PyTorch's operations; or, with `train.compile`, to those compiled by torch.compile
(`compiled_steps`: one path for a CPU and a GPU; on a CPU the C kernels measured faster, docs/performance.md).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from nmt.cache import cache_root, unwritable, unwritable_folder
from nmt.errors import NMTError
from nmt.model import kernels
from nmt.model.gemm import prepacked, product

sigmoid_backward = torch.ops.aten.sigmoid_backward
tanh_backward = torch.ops.aten.tanh_backward


@dataclass
class Spec:
    """What the function needs besides tensors that take gradients."""

    layers: int
    dtype: torch.dtype  # compute dtype of the matrix products
    score_bias: Tensor  # (B, 1, S) float32: 0 at real source positions, -inf at padding
    layer_masks: Tensor | None  # (layers - 1, T, B, H) dropout between layers, scaled; None = no dropout
    out_masks: Tensor | None  # (T, B, H) dropout on the attentional vector
    input_feed: bool
    compiled: bool = False  # the element-wise steps through `compiled_steps()`


def compute_dtype(like: Tensor) -> torch.dtype:
    """The autocast dtype inside autocast, else the inputs' own."""
    device = like.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else like.dtype


def stacked_layers(first: tuple[Tensor, Tensor], upper: list[tuple[Tensor, Tensor, Tensor, Tensor]],
                   dtype: torch.dtype, bias_dtype: torch.dtype, gate_rows: Tensor | None = None):
    """The decoder's LSTM weights as one matrix per layer, [W_in W_hh] (4H, in + H), so that a step's gates are one
    product with [x; h_prev]; for the training recurrence and for search. `first` is layer 0's (W_in, W_hh): its
    biases travel with the embedding gates. `upper`: per layer above, (W_ih, W_hh, b_ih, b_hh). `gate_rows` (4H, 1)
    scales each gate row (search doubles the cell-input rows). Returns the matrices in `dtype` and, per layer, the
    summed bias in `bias_dtype` (None for layer 0)."""

    def stack(w_in: Tensor, w_hh: Tensor) -> Tensor:
        matrix = torch.cat([w_in, w_hh], 1)
        return (matrix if gate_rows is None else matrix * gate_rows).to(dtype)

    matrices, biases = [stack(*first)], [None]
    for w_ih, w_hh, b_ih, b_hh in upper:
        matrices.append(stack(w_ih, w_hh))
        bias = b_ih + b_hh
        biases.append((bias if gate_rows is None else bias * gate_rows.squeeze(1)).to(bias_dtype))
    return matrices, biases


class Recurrence(torch.autograd.Function):
    """Inputs: spec, emb_gates (T, B, 4H) (time-major: a step's rows are contiguous), keys and memory (B, S, H), then
    per layer h0 and c0 (B, H), then the weights: w_feed (4H, F), w_hh of layer 0, (w_ih, w_hh, b_ih, b_hh) per upper
    layer, and W_c (H, 2H). Output: the attentional vectors after dropout, (B, T, H)."""

    @staticmethod
    def forward(ctx, spec: Spec, emb_gates: Tensor, keys: Tensor, memory: Tensor, *rest: Tensor) -> Tensor:
        with torch.autocast(emb_gates.device.type, enabled=False):
            return _forward(ctx, spec, emb_gates, keys, memory, rest)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):
            return (None, *_backward(ctx, grad_out))


def _forward(ctx, spec: Spec, emb_gates: Tensor, keys: Tensor, memory: Tensor, rest) -> Tensor:
    n_layers, cd = spec.layers, spec.dtype
    acc = torch.promote_types(cd, torch.float32)  # dtype of gates, cell states and softmax
    # who does the element-wise work: the compiled steps when asked for, else the C kernels where they run
    ops = compiled_steps() if spec.compiled else kernels if kernels.usable(acc, cd, emb_gates) else TorchSteps
    h0, c0, w = rest[:n_layers], rest[n_layers:2 * n_layers], rest[2 * n_layers:]
    steps, batch, four_h = emb_gates.shape
    hidden, feed = four_h // 4, w[0].shape[1]
    widths = [feed] + [hidden] * (n_layers - 1)  # each layer's input width, before its own h
    # layer 0's biases are inside emb_gates
    upper = [tuple(w[2 + 4 * k: 6 + 4 * k]) for k in range(n_layers - 1)]
    weights, biases = stacked_layers((w[0], w[1]), upper, cd, acc)
    w_combine = w[-1].to(cd)  # (H, 2H)
    # laying out a transpose for the backward pass costs more than its products gain
    step_weights, step_combine = [prepacked(m, step=True) for m in weights], prepacked(w_combine, step=True)
    keys_acc, memory_acc = keys.to(acc).contiguous(), memory.to(acc).contiguous()  # (B, S, H)
    score_bias = spec.score_bias.squeeze(1).contiguous()  # (B, S)

    new = functools.partial(emb_gates.new_empty, dtype=acc)
    # xh[l][t] is layer l's product input at step t: [its input; its h at t-1]; slot t+1 receives h_t
    xh = [new((steps + 1, batch, widths[n] + hidden), dtype=cd) for n in range(n_layers)]
    act = [new((steps, batch, four_h)) for _ in range(n_layers)]  # sigmoid(i, f, o), tanh(g)
    cell = [new((steps + 1, batch, hidden)) for _ in range(n_layers)]
    tanh_c = [new((steps, batch, hidden)) for _ in range(n_layers)]
    combine_in = new((steps, batch, 2 * hidden), dtype=cd)  # [context; top h]
    attentional = new((steps, batch, hidden))  # tanh(W_c [context; h]), before dropout
    probs = new((batch, steps, keys.size(1)))
    outputs = xh[0][1:, :, :feed] if spec.input_feed else new((steps, batch, hidden), dtype=cd)
    xh[0][0, :, :feed] = 0  # no attentional vector before the first step
    for n in range(n_layers):
        xh[n][0, :, widths[n]:] = h0[n]
        cell[n][0] = c0[n]
    step_gates = emb_gates.to(acc)  # (T, B, 4H)
    for t in range(steps):
        for n in range(n_layers):
            above = xh[n + 1][t][:, :hidden] if n + 1 < n_layers else None
            mask = spec.layer_masks[n, t] if above is not None and spec.layer_masks is not None else None
            ops.cell_forward(product(xh[n][t], step_weights[n], step=True), step_gates[t] if n == 0 else biases[n],
                             cell[n][t], act[n][t], cell[n][t + 1], tanh_c[n][t], xh[n][t + 1][:, widths[n]:],
                             mask, above)
        ops.attention_forward(xh[-1][t + 1][:, widths[-1]:], keys_acc, memory_acc, score_bias, probs[:, t],
                              combine_in[t])
        ops.combine_forward(product(combine_in[t], step_combine, step=True), attentional[t], outputs[t],
                            None if spec.out_masks is None else spec.out_masks[t])
    ctx.acc, ctx.spec, ctx.widths, ctx.shapes, ctx.ops = acc, spec, widths, (batch, steps, hidden, feed), ops
    ctx.weights, ctx.w_combine, ctx.keys, ctx.memory = weights, w_combine, keys_acc, memory_acc
    ctx.xh, ctx.act, ctx.cell, ctx.tanh_c = xh, act, cell, tanh_c
    ctx.combine_in, ctx.attentional, ctx.probs = combine_in, attentional, probs  # probs (B, T, S)
    ctx.dtypes = [x.dtype for x in (emb_gates, keys, memory, *rest)]
    return outputs.transpose(0, 1)


def _backward(ctx, grad_out: Tensor):
    spec, widths, weights, w_combine, ops = ctx.spec, ctx.widths, ctx.weights, ctx.w_combine, ctx.ops
    batch, steps, hidden, feed = ctx.shapes
    n_layers, cd, acc = spec.layers, spec.dtype, ctx.acc
    xh, act, cell, tanh_c = ctx.xh, ctx.act, ctx.cell, ctx.tanh_c

    new = functools.partial(grad_out.new_empty, dtype=acc)
    d_gates = [new((steps, batch, 4 * hidden), dtype=cd) for _ in range(n_layers)]  # d_gates[0] = d emb_gates
    d_combine = new((steps, batch, hidden), dtype=cd)
    d_context = new((batch, steps, hidden))
    d_scores = new((batch, steps, ctx.probs.size(2)))
    d_h = [new((batch, hidden)).zero_() for _ in range(n_layers)]
    d_c = [new((batch, hidden)).zero_() for _ in range(n_layers)]
    d_feed = new((batch, feed)) if spec.input_feed else None  # from step t + 1's first layer
    grad_steps = grad_out.to(cd).contiguous().transpose(0, 1)  # (T, B, H)
    for t in reversed(range(steps)):
        ops.combine_backward(grad_steps[t], ctx.attentional[t], d_combine[t], None if t == steps - 1 else d_feed,
                             None if spec.out_masks is None else spec.out_masks[t])
        d_in = product(d_combine[t], w_combine.t(), step=True)  # (B, 2H): [d context; d h]
        ops.attention_backward(d_in, ctx.probs[:, t], ctx.keys, ctx.memory, d_context[:, t], d_scores[:, t], d_h[-1])
        for n in reversed(range(n_layers)):
            ops.cell_backward(d_h[n], d_c[n], act[n][t], tanh_c[n][t], cell[n][t], d_gates[n][t])
            d_xh = product(d_gates[n][t], weights[n].t(), step=True)  # (B, in + H)
            if n > 0:
                mask = None if spec.layer_masks is None else spec.layer_masks[n - 1, t]
                ops.split_grad(d_xh, d_h[n], d_h[n - 1], mask)
            else:
                ops.split_grad(d_xh, d_h[n], d_feed, accumulate=False)
    # weight gradients: one product over all positions each
    rows = steps * batch
    grads_w = []
    for n in range(n_layers):
        flat = d_gates[n].view(rows, -1)
        d_w = product(flat.t(), xh[n][:steps].reshape(rows, -1).t(), gradient=True).to(acc)  # (4H, in + H)
        grads_w += [d_w[:, :widths[n]], d_w[:, widths[n]:]]
        if n > 0:  # an upper layer's b_ih and b_hh
            grads_w += [flat.sum(0, dtype=acc)] * 2
    grads_w.append(product(d_combine.view(rows, hidden).t(), ctx.combine_in.view(rows, -1).t(),
                           gradient=True).to(acc))
    # the attention's sums over steps, in `acc`: they are small, and bf16 would cost accuracy here
    d_memory = torch.bmm(ctx.probs.transpose(1, 2), d_context)  # (B, S, H)
    queries = ctx.combine_in[:, :, hidden:].transpose(0, 1).to(acc)  # (B, T, H)
    d_keys = torch.bmm(d_scores.transpose(1, 2), queries)
    grads = [d_gates[0], d_keys, d_memory, *d_h, *d_c, *grads_w]
    return [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)]


class TorchSteps:
    """`kernels`' step functions, with the same signatures, in PyTorch's operations: for float64, a GPU, CPUs where
    the kernels cannot be built, and torch.compile (`compiled_steps`). Each computes its values and then copies them
    into its outputs: the compiler does not trace an `out=` into a strided view."""

    @staticmethod
    def cell_forward(pre, add, cell_prev, act, cell, tanh_cell, h, mask=None, above=None):
        i, f, g, o = torch.add(pre, add).chunk(4, 1)  # float32 whatever pre's dtype: add is float32
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        torch.cat([i, f, g, o], 1, out=act)
        cell.copy_(f * cell_prev + i * g)
        tanh_cell.copy_(cell.tanh())
        h_new = o * tanh_cell
        h.copy_(h_new)
        if above is not None:
            above.copy_(h_new if mask is None else h_new * mask)

    @staticmethod
    def cell_backward(d_h, d_cell, act, tanh_cell, cell_prev, d_gates):
        i, f, g, o = act.chunk(4, 1)
        d_cell += tanh_backward(d_h * o, tanh_cell)
        d_i, d_f, d_g, d_o = d_cell * g, d_cell * cell_prev, d_cell * i, d_h * tanh_cell
        d_cell.mul_(f)  # now the gradient w.r.t. the previous step's cell state
        d_gates.copy_(torch.cat([sigmoid_backward(d_i, i), sigmoid_backward(d_f, f), tanh_backward(d_g, g),
                                 sigmoid_backward(d_o, o)], 1))

    @staticmethod
    def split_grad(d_xh, d_h, below=None, mask=None, accumulate=True):
        width = d_xh.size(1) - d_h.size(1)
        d_h.copy_(d_xh[:, width:])
        if below is None:
            return
        x_grad = d_xh[:, :width] if mask is None else d_xh[:, :width] * mask
        below.add_(x_grad) if accumulate else below.copy_(x_grad)

    @staticmethod
    def attention_forward(query, keys, memory, bias, probs_t, combine):
        hidden = keys.size(2)
        scores = torch.bmm(query.to(keys.dtype).unsqueeze(1), keys.transpose(1, 2))  # (B, 1, S)
        p = torch.softmax(scores + bias.unsqueeze(1), dim=2)
        probs_t.copy_(p.squeeze(1))
        combine[:, :hidden] = torch.bmm(p, memory).squeeze(1)
        combine[:, hidden:] = query

    @staticmethod
    def attention_backward(d_combine, probs_t, keys, memory, d_context_t, d_scores_t, d_query):
        hidden = keys.size(2)
        d_context_t.copy_(d_combine[:, :hidden])
        d_prob = torch.bmm(d_context_t.unsqueeze(1), memory.transpose(1, 2))  # (B, 1, S)
        probs = probs_t.unsqueeze(1)
        d_score = probs * (d_prob - (d_prob * probs).sum(2, keepdim=True))  # softmax's backward
        d_scores_t.copy_(d_score.squeeze(1))
        d_query += d_combine[:, hidden:] + torch.bmm(d_score, keys).squeeze(1)

    @staticmethod
    def combine_forward(pre, attentional, out, mask=None):
        attentional.copy_(pre.to(attentional.dtype).tanh())  # in float32, as the docstring says
        out.copy_(attentional if mask is None else attentional * mask)

    @staticmethod
    def combine_backward(grad, attentional, d_pre, feed=None, mask=None):
        d = grad.to(attentional.dtype) if feed is None else feed + grad
        d_pre.copy_(tanh_backward(d if mask is None else d * mask, attentional))


def check_compilable(device: torch.device) -> None:
    """On a CPU inductor compiles C++: without a compiler the first step would die deep inside torch."""
    compiler = os.environ.get("CXX") or "g++"
    if device.type == "cpu" and shutil.which(compiler) is None:
        raise NMTError(f"train.compile=true on a CPU needs a C++ compiler ({compiler}, or set $CXX), and none "
                       "is on PATH: install one (Debian: apt-get install g++) or leave train.compile at auto")


@functools.cache
def compiled_steps() -> SimpleNamespace:
    """`TorchSteps` compiled by `torch.compile` (inductor: fused C++ on a CPU, Triton on a GPU), sizes dynamic so
    that every batch shape shares one compilation; kept under $NMT_CACHE, so that a second process loads it
    instead of compiling again (where the cache cannot be written: in a temporary folder, for this process)."""
    folder = cache_root() / "inductor"
    because = unwritable_folder(folder)
    if because is not None:
        unwritable(folder, because, "compiling the steps for this process only")
        folder = Path(tempfile.mkdtemp(prefix="nmt-inductor-"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return SimpleNamespace(**{name: torch.compile(getattr(TorchSteps, name), dynamic=True, fullgraph=True)
                              for name in vars(TorchSteps) if not name.startswith("_")})
