"""Where and in what precision to run: device choice, autocast, thread count."""

from __future__ import annotations

import contextlib
import logging

import torch

from nmt.errors import NMTError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NMTError("train.device=cuda but no CUDA GPU is visible; use --set train.device=cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU that supports it and fp32 elsewhere; fp16 needs a GPU."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise NMTError("train.precision=fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    return name


def autocast(device: torch.device, precision: str):
    """Autocast for bf16/fp16 (weights, loss and gradients stay float32); nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
