"""One vocabulary of run settings for every verb: dtype names, devices, the token budget.

Every command spells a dtype `auto`, `bf16` or `fp32` and a device `auto`, `cpu` or `cuda`, with the same
defaults. dtype auto is bf16 where matmuls run natively in bf16 (a CUDA GPU; a CPU with AVX-512 BF16 or AMX)
and fp32 elsewhere: without those units torch emulates bf16 matmuls, several times slower than fp32 (measured
on an AVX2-only EPYC: a 111 x 576 by 576 x 1536 linear takes 32 ms in fp32, 178 ms in bf16, one thread).
Device auto is the GPU when there is one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_DTYPE = "auto"
_NATIVE_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DEFAULT_MAX_NEW_TOKENS = 128


def resolve_dtype_name(name: str) -> str:
    """`auto` -> `bf16` or `fp32` for this machine (see the module docstring); `bf16` / `fp32` pass through."""
    if name == "auto":
        return "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "fp32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX) and torch is not held below AVX-512."""
    flags = _cpu_flags()
    return bool(_NATIVE_BF16_CPU_FLAGS & flags) and _torch_isa_cap(flags) is None


def _torch_isa_cap(flags: set[str]) -> str | None:
    """The instruction set torch's kernels are held to when it is below what the CPU has, else None. Holding
    torch, oneDNN and MKL to AVX2 on an AVX-512 machine (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
    MKL_ENABLE_INSTRUCTIONS=AVX2) reproduces an AVX2-only CPU's kernel choices; `auto` then picks fp32 as there."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in ("DEFAULT", "AVX2") and "avx512f" in flags else None


def torch_held_below_cpu() -> bool:
    """Whether torch's kernels are held below the CPU's instruction set (see _torch_isa_cap). torch.compile's
    CPU code is then wrong: NaN from an RMSNorm + MLP + softmax graph whose ops are each right alone (torch
    2.13, AMX Xeon held to AVX2), so vLLM runs such a process eager."""
    return _torch_isa_cap(_cpu_flags()) is not None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())
    except OSError:                      # not Linux: assume no native bf16 (fp32 is never the slow choice)
        return set()


def cache_root() -> Path:
    """Where rebuilt artefacts live outside git: $DREAM_CACHE, default ~/.cache/dream."""
    return Path(os.environ.get("DREAM_CACHE", "~/.cache/dream")).expanduser()


def cpu_kind() -> str:
    """The CPU's model name and its widest matmul unit: "AMX", "AVX-512 BF16", "AVX-512", "AVX2" or "other".
    The kind decides which kernels torch picks, so every figure and probe result is recorded with it."""
    flags = _cpu_flags()
    kind = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                           ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "other")
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        model = ""
    cap = _torch_isa_cap(flags)
    kind = f"{kind}, torch held to {cap}" if cap else kind
    return f"{model} ({kind})" if model else kind


def torch_dtype(name: str) -> torch.dtype:
    """`auto` | `bf16` | `fp32` -> the torch dtype; ValueError names the accepted spellings."""
    name = resolve_dtype_name(name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The inverse of torch_dtype."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto": this rank's GPU when there is one, else the CPU; "cuda" means this rank's GPU."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
