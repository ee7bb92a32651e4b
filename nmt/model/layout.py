"""The decoder's LSTM weights as one matrix per layer, [W_in W_hh] (4H, in + H), so that a step's gates
are one product with [x; h_prev]. Built here only, for the training recurrence and for search."""

from __future__ import annotations

import torch
from torch import Tensor


def stacked_layers(first: tuple[Tensor, Tensor], upper: list[tuple[Tensor, Tensor, Tensor, Tensor]],
                   dtype: torch.dtype, bias_dtype: torch.dtype, gate_rows: Tensor | None = None):
    """`first` is layer 0's (W_in, W_hh): its biases travel with the embedding gates. `upper` holds
    (W_ih, W_hh, b_ih, b_hh) per layer above. `gate_rows` (4H, 1) scales each gate row (search doubles
    the cell-input rows). Returns the matrices in `dtype` and, per layer, the summed bias in `bias_dtype`
    (None for layer 0)."""

    def stack(w_in: Tensor, w_hh: Tensor) -> Tensor:
        matrix = torch.cat([w_in, w_hh], 1)
        return (matrix if gate_rows is None else matrix * gate_rows).to(dtype)

    matrices, biases = [stack(*first)], [None]
    for w_ih, w_hh, b_ih, b_hh in upper:
        matrices.append(stack(w_ih, w_hh))
        bias = b_ih + b_hh
        biases.append((bias if gate_rows is None else bias * gate_rows.squeeze(1)).to(bias_dtype))
    return matrices, biases
