"""The training recurrence's element-wise work in C (`kernels.c`), built for this CPU at first use.

Per target position and layer, the gates, cell and attention are a dozen or more element-wise PyTorch operations on
(batch, 4H)-sized tensors, forward and backward: each a pass over memory, a dispatch and, under bf16, a conversion. On a
CPU those, beyond the matrix products, are where the recurrence's time goes. `kernels.c` does each layer's step, the
attention's step and the attentional vector's step in one pass, with the same arithmetic (float32 states and gates, the
compute dtype for what the products read, rounded as torch rounds); its exp is a polynomial accurate to a few float32
ulps, so results agree with PyTorch's operations to a few float32 rounding errors, not bit for bit. They run on the
calling thread only. Each wrapper below hands its tensors' addresses (and row strides) to the C function of its name,
whose comment describes the operands.

The library is compiled with `$CC` (else `cc`) for this CPU (`-march=native`) into `$NMT_CACHE/kernels/`, under a name
that covers the source, the compiler and the CPU's name and flags (Zen 3 and Zen 4 EPYCs may share a model name), and
loaded with ctypes. Without a compiler, or where the build fails, `library()` is None, the reason is logged once, and
the recurrence runs PyTorch's operations; `NMT_CPU_KERNELS=0` forces that. Every run on a machine must take the same
path, which exact resume relies on: so a cached library that does not load (truncated, overwritten) is set aside and
built again, and where the cache cannot be written the library is built in a temporary folder.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from nmt.cache import cache_root, set_aside, unwritable, unwritable_folder, written_whole
from nmt.device import cpu_flags, cpu_name

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared"]
_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
_SIGNATURES = {
    "cell_forward": [_I, _I, _I, _P, _L, _P, _L, _P, _L, _P, _P, _P, _P, _L, _P, _P, _L],
    "cell_backward": [_I, _I, _I, _P, _P, _P, _P, _P, _L, _P],
    "split_grad": [_I, _I, _I, _P, _L, _I, _P, _P, _P, _I],
    "attention_forward": [_I, _I, _I, _I, _P, _L, _P, _P, _P, _P, _L, _P],
    "attention_backward": [_I, _I, _I, _I, _P, _P, _L, _P, _P, _P, _L, _P, _L, _P],
    "combine_forward": [_I, _I, _I, _P, _P, _P, _P, _L],
    "combine_backward": [_I, _I, _I, _P, _L, _P, _P, _P, _P],
}


class _BuildFailed(Exception):
    """The compiler's complaint, in one line."""


def _compile(compiler: list[str], flags: list[str], out: Path) -> None:
    done = subprocess.run([*compiler, *flags, "-o", str(out), str(SOURCE)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no message"]
        raise _BuildFailed(f"{compiler[0]} failed: {next((x for x in lines if 'error' in x), lines[0])}")


def _load(path: Path) -> ctypes.CDLL:
    """The library at `path` with its functions' signatures set; OSError or AttributeError (a missing function)
    where it is not a library of these kernels."""
    _check_elf_extent(path)
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


def _check_elf_extent(path: Path) -> None:
    """OSError unless a 64-bit ELF file holds every segment and its section table: the loader maps a truncated
    library without complaint, and touching the missing pages kills the process (SIGBUS), no exception."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or (len(data) >= 64 and data[4] != 2):
        return  # not a 64-bit ELF file: the loader refuses what it cannot read
    if len(data) < 64:
        raise OSError(f"truncated: {len(data)} bytes, less than an ELF header")
    order = "<" if data[5] == 1 else ">"
    try:
        # e_phoff, e_shoff, (e_flags, e_ehsize), e_phentsize, e_phnum, e_shentsize, e_shnum
        program_at, sections_at, entry_size, entries, section_size, sections = struct.unpack_from(
            order + "QQ6xHHHH", data, 32)
        ends = [sections_at + section_size * sections, program_at + entry_size * entries]
        for k in range(entries):
            _, _, offset, _, _, size, _, _ = struct.unpack_from(order + "IIQQQQQQ", data, program_at + k * entry_size)
            ends.append(offset + size)
    except (struct.error, OverflowError):  # headers pointing past what an offset can be
        ends = [len(data) + 1]
    if max(ends) > len(data):
        raise OSError(f"truncated: {len(data)} bytes where its headers reach {max(ends)}")


def _build(flags: list[str] = FLAGS) -> tuple[ctypes.CDLL | None, str]:
    """The loaded library and how it was found, or None and why not. (Tests build for other CPUs' flags.)"""
    if os.environ.get("NMT_CPU_KERNELS", "").lower() in ("0", "off", "no", "false", "torch"):
        return None, "NMT_CPU_KERNELS=0"
    given = os.environ.get("CC") or "cc"  # it may carry arguments: "ccache gcc"
    try:
        command = shlex.split(given)
    except ValueError:  # unbalanced quotes
        command = []
    found = shutil.which(command[0]) if command else None
    if found is None:
        return None, f"no C compiler ({given}) on PATH"
    compiler, folder = [found, *command[1:]], cache_root() / "kernels"
    try:
        # the compiler by its path, size and time: a new compiler is a new entry, found by a stat rather than by
        # running `cc --version` in every process
        real = os.path.realpath(found)
        stat = os.stat(real)
        key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(command + flags).encode(),
                                         f"{real} {stat.st_size} {stat.st_mtime_ns}".encode(),
                                         f"{cpu_name()} {' '.join(cpu_flags())}".encode()]))
        target = folder / f"recurrence-{key.hexdigest()[:20]}.so"
        if target.exists():
            try:
                return _load(target), f"cached {target}"
            except (OSError, AttributeError) as error:  # truncated, overwritten, not ours: build it again
                set_aside(target, f"not a library of these kernels ({str(error).splitlines()[0][:160]})",
                          "building them again")
        unwritable_because = unwritable_folder(folder)
        if unwritable_because is None:
            # built under a name of its own, then renamed: ranks of one torchrun job may build at once
            with written_whole(target) as built:
                _compile(compiler, flags, built)
                lib = _load(built)  # by its own name: the dynamic loader would reuse one loaded before as `target`
            return lib, f"built {target}"
        unwritable(target, unwritable_because, "building the kernels for this process only")
        with tempfile.TemporaryDirectory() as tmp:  # a loaded library outlives its file
            _compile(compiler, flags, Path(tmp) / target.name)
            return _load(Path(tmp) / target.name), "built for this process only (the cache is not writable)"
    except _BuildFailed as failure:
        return None, str(failure)
    except (OSError, AttributeError, subprocess.SubprocessError) as error:
        return None, f"could not build or load them in {folder}: {error}"


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str]:
    lib, how = _build()
    log.info("fused CPU kernels unavailable (%s): the recurrence uses PyTorch's operations" if lib is None
             else "fused CPU kernels: %s", how)
    return lib, how


def library() -> ctypes.CDLL | None:
    """The kernels, built or found once per process; None where they cannot be (the reason is logged)."""
    return _loaded()[0]


def describe() -> str:
    """For `nmt bench`: which element-wise path the CPU recurrence takes."""
    lib, how = _loaded()
    return "fused C kernels" if lib is not None else f"PyTorch operations ({how})"


def usable(acc: torch.dtype, compute: torch.dtype, *tensors: Tensor) -> bool:
    """Whether the steps can run on the kernels: CPU tensors, float32 states, float32 or bf16 products, a library."""
    return (acc == torch.float32 and compute in (torch.float32, torch.bfloat16)
            and all(t.device.type == "cpu" for t in tensors) and library() is not None)


def _require(condition: bool, what: str) -> None:
    """The kernels read raw pointers: a wrong layout would be silent garbage, so it is checked even under -O."""
    if not condition:
        raise ValueError(f"kernel operand {what}")


def _rows(t: Tensor | None) -> tuple[int | None, int]:
    """A (B, n) operand as the kernels read it, address and row stride: rows of contiguous elements (None, 0)."""
    if t is None:
        return None, 0
    _require(t.dim() == 2 and (t.stride(1) == 1 or t.size(1) == 1), "rows must be contiguous")
    return t.data_ptr(), t.stride(0)


def _bf(t: Tensor) -> int:
    _require(t.dtype in (torch.bfloat16, torch.float32), "dtype must be float32 or bfloat16")
    return int(t.dtype == torch.bfloat16)


def _ptr(t: Tensor | None) -> int | None:
    if t is None:
        return None
    _require(t.is_contiguous(), "must be contiguous")
    return t.data_ptr()


def cell_forward(pre: Tensor, add: Tensor, cell_prev: Tensor, act: Tensor, cell: Tensor, tanh_cell: Tensor,
                 h: Tensor, mask: Tensor | None = None, above: Tensor | None = None) -> None:
    add_rows = _rows(add) if add.dim() == 2 else (_ptr(add), 0)
    library().cell_forward(*h.shape, _bf(h), *_rows(pre), *add_rows, *_rows(cell_prev), _ptr(act), _ptr(cell),
                           _ptr(tanh_cell), *_rows(h), _ptr(mask), *_rows(above))


def cell_backward(d_h: Tensor, d_cell: Tensor, act: Tensor, tanh_cell: Tensor, cell_prev: Tensor,
                  d_gates: Tensor) -> None:
    library().cell_backward(*d_h.shape, _bf(d_gates), _ptr(d_h), _ptr(d_cell), _ptr(act), _ptr(tanh_cell),
                            *_rows(cell_prev), _ptr(d_gates))


def split_grad(d_xh: Tensor, d_h: Tensor, below: Tensor | None = None, mask: Tensor | None = None,
               accumulate: bool = True) -> None:
    library().split_grad(*d_h.shape, _bf(d_xh), *_rows(d_xh), d_xh.size(1) - d_h.size(1), _ptr(d_h), _ptr(below),
                         _ptr(mask), int(accumulate))


def attention_forward(query: Tensor, keys: Tensor, memory: Tensor, bias: Tensor, probs_t: Tensor,
                      combine: Tensor) -> None:
    library().attention_forward(*keys.shape, _bf(combine), *_rows(query), _ptr(keys), _ptr(memory), _ptr(bias),
                                *_rows(probs_t), _ptr(combine))


def attention_backward(d_combine: Tensor, probs_t: Tensor, keys: Tensor, memory: Tensor, d_context_t: Tensor,
                       d_scores_t: Tensor, d_query: Tensor) -> None:
    library().attention_backward(*keys.shape, _bf(d_combine), _ptr(d_combine), *_rows(probs_t), _ptr(keys),
                                 _ptr(memory), *_rows(d_context_t), *_rows(d_scores_t), _ptr(d_query))


def combine_forward(pre: Tensor, attentional: Tensor, out: Tensor, mask: Tensor | None = None) -> None:
    library().combine_forward(*attentional.shape, _bf(out), _ptr(pre), _ptr(attentional), _ptr(mask), *_rows(out))


def combine_backward(grad: Tensor, attentional: Tensor, d_pre: Tensor, feed: Tensor | None = None,
                     mask: Tensor | None = None) -> None:
    _require(grad.dtype == d_pre.dtype, "grad and d_pre must share a dtype")
    library().combine_backward(*attentional.shape, _bf(d_pre), *_rows(grad), _ptr(feed), _ptr(mask),
                               _ptr(attentional), _ptr(d_pre))
