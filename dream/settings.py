"""One vocabulary of run settings for every verb: dtype names, devices, the token budget.

Every command spells a dtype `bf16` or `fp32` and a device `auto`, `cpu` or `cuda`, with the same defaults
(bf16: the only dtype in which speculation pays on a CPU; auto: the GPU when there is one).
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_DTYPE = "bf16"
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DEFAULT_MAX_NEW_TOKENS = 128


def torch_dtype(name: str) -> torch.dtype:
    """`bf16` | `fp32` -> the torch dtype; ValueError names the accepted spellings."""
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
