"""Where and in what precision to run: device choice, the CPU's bfloat16 support, autocast, threads, and
handing freed memory back to the system.

CPUs differ: bfloat16 arithmetic is native on CPUs with AVX-512-BF16 or AMX (oneDNN runs bf16 products and
LSTMs there at about twice the float32 rate); other AVX-512 CPUs emulate it, slower than float32; on AVX2-only
CPUs oneDNN has no bf16 LSTM, and training in bf16 would die in its first step. So `auto` picks bf16 only where
it is native (on a GPU: where it is supported), and an explicit bf16 where it is not is warned about (it runs,
several times slower than fp32), or refused for training where oneDNN has no bf16 kernels at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import platform
import re
from pathlib import Path

import torch

from nmt.errors import NMTError

log = logging.getLogger(__name__)


def resolve_device(name: str, *, setting: str = "train.device") -> torch.device:
    """`setting` names the option in messages: a config key, or a command's flag (`--device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        flag = setting.startswith("--")
        raise NMTError(f"{setting}{' ' if flag else '='}cuda but no CUDA GPU is visible; use "
                       f"{f'{setting} cpu' if flag else f'--set {setting}=cpu'} or auto")
    return torch.device(name)


@functools.cache
def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, with its family and model numbers where it has them:
    'AMD EPYC (family 26, model 2)'. Virtual machines often show only 'AMD EPYC' for Zen 3, 4 and 5 alike;
    the numbers tell them apart, in logs, in `nmt bench` and in the key of the cached product routes."""
    try:
        return _name_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except (OSError, ValueError):
        return platform.processor() or platform.machine()


def _first_processor(text: str) -> dict[str, str]:
    """The first processor's fields in a /proc/cpuinfo text: its first block of lines."""
    fields: dict[str, str] = {}
    for line in re.split(r"\n\s*\n", text.strip())[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _name_from_cpuinfo(text: str) -> str:
    """The first processor's name from a /proc/cpuinfo text (ValueError if it names none)."""
    fields = _first_processor(text)
    name = fields.get("model name")
    if not name:
        raise ValueError("no model name")
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    return f"{name} (family {family}, model {model})" if family.isdigit() and model.isdigit() else name


def cpu_flags() -> list[str]:
    """The first processor's flags in /proc/cpuinfo ("Features" on ARM); [] where it cannot be read."""
    try:
        fields = _first_processor(Path("/proc/cpuinfo").read_text())
    except OSError:
        return []
    return (fields.get("flags") or fields.get("Features", "")).split()


def cpu_capability() -> str:
    """The widest vector instruction set torch's CPU kernels use here: 'AVX2', 'AVX512', 'DEFAULT', ..."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_bf16_support() -> str:
    """'native' (AVX-512-BF16 or AMX, or an ARM CPU with bf16 that oneDNN uses), 'emulated' (oneDNN runs
    bf16 through float32 units: other AVX-512 CPUs) or 'none' (oneDNN has no bf16 kernels: AVX2 and older).
    Tests replace this function to stand in for another CPU."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "none"
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "native"  # on ARM, oneDNN reports bf16 only where the CPU has the bf16 instructions
    return "native" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "emulated"


def describe_cpu() -> str:
    """One phrase for logs and errors: 'AMD EPYC, AVX2, no native bfloat16'."""
    bf16 = {"native": "native bfloat16", "emulated": "bfloat16 emulated by oneDNN",
            "none": "no bfloat16"}[cpu_bf16_support()]
    return f"{cpu_name()}, {cpu_capability()}, {bf16}"


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def resolve_precision(name: str, device: torch.device, *, setting: str = "train.precision",
                      training: bool = True) -> str:
    """The precision to run in, from `auto`, fp32, bf16 or fp16, as the module docstring says (`setting` names
    the option in messages)."""
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return name
    if name == "fp16":
        raise NMTError(f"{setting}=fp16 needs a CUDA GPU; on a CPU use auto, fp32 or bf16")
    support = cpu_bf16_support()
    if name == "auto":
        return "bf16" if support == "native" else "fp32"
    if name == "bf16" and support != "native":
        if training and support == "none":
            raise NMTError(f"{setting}=bf16: this CPU ({describe_cpu()}) cannot train in bfloat16 "
                           f"(oneDNN has no bf16 LSTM for {cpu_capability()}); use {setting}=auto or fp32")
        _warn_once(f"{setting}=bf16 on a CPU without native bfloat16 ({describe_cpu()}): it runs several "
                   f"times slower than fp32 here; {setting}=auto chooses fp32")
    return name


def describe_machine() -> str:
    """What `nmt --version` prints: the versions, and the device and precision `auto` would choose here; a
    user's first check that a container sees its GPU (a CUDA torch without a GPU is said so)."""
    import nmt

    lines = [f"nmt {nmt.__version__}, torch {torch.__version__}, Python {platform.python_version()}"]
    device = resolve_device("auto")
    if device.type == "cuda":
        gpu = torch.cuda.get_device_properties(device)
        lines.append(f"device (train.device auto): cuda, {gpu.name}, {gpu.total_memory / 2**30:.0f} GiB, "
                     f"compute capability {gpu.major}.{gpu.minor}, CUDA {torch.version.cuda}, "
                     f"{torch.cuda.device_count()} GPU(s) visible")
    else:
        unseen = f"; no CUDA GPU visible to this torch (built for CUDA {torch.version.cuda})" if torch.version.cuda \
            else ""
        # the vector-instruction flags that decide nmt's CPU paths
        paths = sorted(set(cpu_flags()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx_vnni"})
        lines.append(f"device (train.device auto): cpu, {describe_cpu()}, flags {' '.join(paths) or 'none'}{unseen}")
    lines.append(f"precision (train.precision auto): {resolve_precision('auto', device)}")
    return "\n".join(lines)


def precision_reason(name: str, chosen: str, device: torch.device) -> str:
    """Why `chosen` was run, for the start-up log line."""
    if name != "auto":
        return f"{chosen} (as set)"
    if device.type == "cuda":
        return f"{chosen} (auto: {'bf16 supported' if chosen == 'bf16' else 'no bf16'} on this GPU)"
    return f"{chosen} (auto: {describe_cpu()})"


def autocast(device: torch.device, precision: str):
    """Autocast for bf16/fp16 (weights, loss and gradients stay float32); nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc; musl has none, other systems no libc.so.6
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc; elsewhere nothing). Every batch allocates
    tensors of other sizes; glibc keeps what they free in its heap, in pieces too small to reuse, so without
    this a training process grows for the whole run (20 minutes of the matched model on a CPU: 3.2 GiB over
    about 1.1 GiB in use). A fraction of a millisecond; the pages it frees are faulted back in as needed."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
