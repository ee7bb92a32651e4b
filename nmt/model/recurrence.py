"""The decoder's teacher-forced recurrence as one autograd function: training's hot loop.

Autograd's step loop records dozens of nodes per target position and, walking
back, adds every recurrent weight's gradient into a full-size buffer once per
position: T products whose inner dimension is the batch, then T additions of a
(4H, in) matrix. This function computes the same thing (`Decoder._advance`
stays the definition; tests hold this to it) with each step's activations
written into preallocated tensors, walks back through time computing only what
the recurrence needs (the gradients of states and inputs), and forms each
weight gradient once at the end as one product over all positions,
(T*B, 4H)^T @ (T*B, in), where the hardware is efficient.

Precision: the gate and combination products run in the compute dtype (bf16
under CPU/GPU autocast, else float32); gate pre-activations, the cell state,
the nonlinearities and the attention (its products are one row per sentence,
which bf16 runs no faster on a CPU) stay float32. Only `dot` and `general`
attention are covered: their keys are computed before the loop, so the loop's
attention is two batched products and a softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.model.gemm import product, step_weight
from nmt.model.layout import stacked_layers

sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
tanh_backward = torch.ops.aten.tanh_backward.grad_input


@dataclass
class Spec:
    """What the function needs besides tensors that take gradients."""

    layers: int
    dtype: torch.dtype  # compute dtype of the matrix products
    score_bias: Tensor  # (B, 1, S) float32: 0 at real source positions, -inf at padding
    layer_masks: Tensor | None  # (layers - 1, T, B, H) dropout between layers, scaled; None = no dropout
    out_masks: Tensor | None  # (T, B, H) dropout on the attentional vector
    input_feed: bool


def compute_dtype(like: Tensor) -> torch.dtype:
    """The autocast dtype inside autocast, else the inputs' own."""
    if torch.is_autocast_enabled(like.device.type):
        return torch.get_autocast_dtype(like.device.type)
    return like.dtype


class Recurrence(torch.autograd.Function):
    """Inputs: spec, emb_gates (T, B, 4H) (time-major: a step's rows are contiguous), keys and memory
    (B, S, H), then per layer h0 and c0 (B, H), then the weights: w_feed (4H, F), w_hh of layer 0,
    (w_ih, w_hh, b_ih, b_hh) per upper layer, and W_c (H, 2H). Output: the attentional vectors after
    dropout, (B, T, H)."""

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
    h0, c0, w = rest[:n_layers], rest[n_layers:2 * n_layers], rest[2 * n_layers:]
    steps, batch, four_h = emb_gates.shape
    hidden, feed = four_h // 4, w[0].shape[1]
    widths = [feed] + [hidden] * (n_layers - 1)  # each layer's input width, before its own h
    # layer 0's biases are inside emb_gates
    upper = [tuple(w[2 + 4 * k: 6 + 4 * k]) for k in range(n_layers - 1)]
    weights, biases = stacked_layers((w[0], w[1]), upper, cd, acc)
    w_combine = w[-1].to(cd)  # (H, 2H)
    # laying out a transpose for the backward pass costs more than its products gain
    step_weights, step_combine = [step_weight(m) for m in weights], step_weight(w_combine)
    keys_t, memory_acc = keys.to(acc).transpose(1, 2), memory.to(acc)  # (B, H, S), (B, S, H)

    def new(shape, dtype=acc):
        return emb_gates.new_empty(shape, dtype=dtype)

    # xh[l][t] is layer l's product input at step t: [its input; its h at t-1]; slot t+1 receives h_t
    xh = [new((steps + 1, batch, widths[n] + hidden), dtype=cd) for n in range(n_layers)]
    act = [new((steps, batch, four_h)) for _ in range(n_layers)]  # sigmoid(i, f, o), tanh(g)
    cell = [new((steps + 1, batch, hidden)) for _ in range(n_layers)]
    tanh_c = [new((steps, batch, hidden)) for _ in range(n_layers)]
    combine_in = new((steps, batch, 2 * hidden), dtype=cd)  # [context; top h]
    attentional = new((steps, batch, hidden))  # tanh(W_c [context; h]), before dropout
    outputs = xh[0][1:, :, :feed] if spec.input_feed else new((steps, batch, hidden), dtype=cd)
    xh[0][0, :, :feed] = 0  # no attentional vector before the first step
    for n in range(n_layers):
        xh[n][0, :, widths[n]:] = h0[n]
        cell[n][0] = c0[n]
    gates = new((batch, four_h))
    g_cols = slice(2 * hidden, 3 * hidden)
    step_gates = emb_gates.to(acc)  # (T, B, 4H)
    probs = []
    for t in range(steps):
        for n in range(n_layers):
            torch.add(product(xh[n][t], step_weights[n], step=True), step_gates[t] if n == 0 else biases[n],
                      out=gates)
            a = act[n][t]
            torch.sigmoid(gates, out=a)
            torch.tanh(gates[:, g_cols], out=a[:, g_cols])
            i, f, g, o = a.chunk(4, 1)
            c = cell[n][t + 1]
            torch.mul(f, cell[n][t], out=c).addcmul_(i, g)
            h = xh[n][t + 1][:, widths[n]:]
            torch.mul(o, torch.tanh(c, out=tanh_c[n][t]), out=h)
            if n + 1 < n_layers:
                above = xh[n + 1][t][:, :hidden]
                if spec.layer_masks is not None:
                    torch.mul(h, spec.layer_masks[n, t], out=above)
                else:
                    above.copy_(h)
        query = xh[-1][t + 1][:, widths[-1]:]  # (B, H)
        combine_in[t, :, hidden:] = query
        scores = torch.bmm(query.unsqueeze(1).to(acc), keys_t)  # (B, 1, S)
        p = torch.softmax(scores.add_(spec.score_bias), dim=2)  # (B, 1, S)
        probs.append(p)
        combine_in[t, :, :hidden] = torch.bmm(p, memory_acc).squeeze(1)
        torch.tanh(product(combine_in[t], step_combine, step=True), out=attentional[t])
        if spec.out_masks is not None:
            torch.mul(attentional[t], spec.out_masks[t], out=outputs[t])
        else:
            outputs[t] = attentional[t]
    ctx.acc, ctx.spec, ctx.widths, ctx.shapes = acc, spec, widths, (batch, steps, hidden, feed)
    ctx.weights, ctx.w_combine, ctx.keys_t, ctx.memory_acc = weights, w_combine, keys_t, memory_acc
    ctx.xh, ctx.act, ctx.cell, ctx.tanh_c = xh, act, cell, tanh_c
    ctx.combine_in, ctx.attentional, ctx.probs = combine_in, attentional, torch.cat(probs, 1)  # (B, T, S)
    ctx.dtypes = [x.dtype for x in (emb_gates, keys, memory, *rest)]
    return outputs.transpose(0, 1)


def _backward(ctx, grad_out: Tensor):
    spec, widths, weights, w_combine = ctx.spec, ctx.widths, ctx.weights, ctx.w_combine
    batch, steps, hidden, feed = ctx.shapes
    n_layers, cd, acc = spec.layers, spec.dtype, ctx.acc
    xh, act, cell, tanh_c = ctx.xh, ctx.act, ctx.cell, ctx.tanh_c
    def new(shape, dtype=acc):
        return grad_out.new_empty(shape, dtype=dtype)

    d_gates = [new((steps, batch, 4 * hidden), dtype=cd) for _ in range(n_layers)]  # d_gates[0] = d emb_gates
    d_combine = new((steps, batch, hidden), dtype=cd)
    d_context = new((batch, steps, hidden))
    d_scores = new((batch, steps, ctx.probs.size(2)))
    d_h = [new((batch, hidden)).zero_() for _ in range(n_layers)]
    d_c = [new((batch, hidden)).zero_() for _ in range(n_layers)]
    d_act = new((batch, 4 * hidden))  # gradient w.r.t. i, f, g, o
    d_feed = None
    g_cols = slice(2 * hidden, 3 * hidden)
    grad_steps = grad_out.transpose(0, 1)  # (T, B, H)
    memory_t = ctx.memory_acc.transpose(1, 2)  # (B, H, S)
    keys = ctx.keys_t.transpose(1, 2)  # (B, S, H)
    for t in reversed(range(steps)):
        d_out = grad_steps[t].to(acc) if d_feed is None else d_feed + grad_steps[t]
        if spec.out_masks is not None:
            d_out = d_out * spec.out_masks[t]
        tanh_backward(d_out, ctx.attentional[t], grad_input=d_combine[t])
        d_in = product(d_combine[t], w_combine.t(), step=True)  # (B, 2H): [d context; d h]
        d_ctx = d_in[:, :hidden].to(acc)
        d_context[:, t] = d_ctx
        d_prob = torch.bmm(d_ctx.unsqueeze(1), memory_t)  # (B, 1, S)
        p = ctx.probs[:, t:t + 1]
        d_score = torch._softmax_backward_data(d_prob, p, 2, acc)
        d_scores[:, t] = d_score.squeeze(1)
        d_h[-1] += d_in[:, hidden:]
        d_h[-1] += torch.bmm(d_score, keys).squeeze(1)
        for n in reversed(range(n_layers)):
            a = act[n][t]
            i, f, g, o = a.chunk(4, 1)
            d_i, d_f, d_g, d_o = d_act.chunk(4, 1)
            tc = tanh_c[n][t]
            torch.mul(d_h[n], tc, out=d_o)
            d_c[n] += tanh_backward(d_h[n] * o, tc, grad_input=torch.empty_like(tc))
            torch.mul(d_c[n], g, out=d_i)
            torch.mul(d_c[n], i, out=d_g)
            torch.mul(d_c[n], cell[n][t], out=d_f)
            d_c[n].mul_(f)  # now the gradient w.r.t. the previous step's cell state
            dg = d_gates[n][t]
            sigmoid_backward(d_act, a, grad_input=dg)
            tanh_backward(d_g, g, grad_input=dg[:, g_cols])
            d_xh = product(dg, weights[n].t(), step=True)  # (B, in + H)
            d_h[n].copy_(d_xh[:, widths[n]:])
            if n > 0:
                x_grad = d_xh[:, :hidden]
                d_h[n - 1] += x_grad * spec.layer_masks[n - 1, t] if spec.layer_masks is not None else x_grad
            elif spec.input_feed:
                d_feed = d_xh[:, :feed].to(acc)
    # weight gradients: one product over all positions each
    rows = steps * batch
    grads_w = []
    for n in range(n_layers):
        flat = d_gates[n].view(rows, -1)
        d_w = product(flat.t(), xh[n][:steps].reshape(rows, -1).t(), gradient=True).to(acc)  # (4H, in + H)
        if n == 0:
            grads_w += [d_w[:, :widths[0]], d_w[:, widths[0]:]]
        else:
            d_b = flat.sum(0, dtype=acc)
            grads_w += [d_w[:, :hidden], d_w[:, hidden:], d_b, d_b]
    grads_w.append(product(d_combine.view(rows, hidden).t(), ctx.combine_in.view(rows, -1).t(),
                           gradient=True).to(acc))
    # the attention's sums over steps, in `acc`: they are small, and bf16 would cost accuracy here
    d_memory = torch.bmm(ctx.probs.transpose(1, 2), d_context)  # (B, S, H)
    queries = ctx.combine_in[:, :, hidden:].transpose(0, 1).to(acc)  # (B, T, H)
    d_keys = torch.bmm(d_scores.transpose(1, 2), queries)
    grads = [d_gates[0], d_keys, d_memory, *d_h, *d_c, *grads_w]
    return [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
