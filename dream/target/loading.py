"""Loading a target by zoo name or checkpoint directory, with one-line errors for broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dream.settings import DEFAULT_DEVICE, resolve_device, torch_dtype

from .adapter import TargetAdapter

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def resolve_target_path(name_or_path: str | Path) -> Path:
    """A zoo name (built on first use) or a checkpoint directory that looks loadable."""
    path = resolve_target_name(name_or_path)
    check_checkpoint_dir(path)
    return path


# The library reaches the zoo (tooling apart, which pulls in its build machinery) only here, and only when asked.
def resolve_target_name(name_or_path: str | Path) -> Path:
    """A zoo name (built on first use) or an existing directory, unchecked (dream.zoo.resolve_target)."""
    from dream.zoo.build import resolve_target

    return resolve_target(name_or_path)


def is_zoo_name(target: str) -> bool:
    from dream.zoo.build import ZOO

    return target in ZOO


def check_checkpoint_dir(path: Path) -> None:
    """ValueError naming what is wrong: no config.json, a config that is not JSON, or no weights."""
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{path} is not a model checkpoint: it has no config.json")
    try:
        parsed = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config} is not valid JSON ({err})") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise ValueError(f"{config} has no model_type: not a transformers config")
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise ValueError(f"{path} has a config.json but no weights (*.safetensors or *.bin)")


def load_target(name_or_path: str | Path, dtype: str | torch.dtype = "bf16",
                device: str | torch.device = DEFAULT_DEVICE, batch_invariant: str = "auto") -> TargetAdapter:
    """A TargetAdapter by zoo name or directory, in `dtype` (bf16 | fp32) on `device` (auto | cpu | cuda),
    with the batch-invariant mode `batch_invariant` (auto | on | off; see TargetAdapter)."""
    dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    device = resolve_device(device) if isinstance(device, str) else device
    target = TargetAdapter.from_pretrained(resolve_target_path(name_or_path), dtype=dtype, batch_invariant="off")
    target.model.to(device)
    target.set_batch_invariant(batch_invariant)  # probed where it runs: the kernels depend on the device
    return target
