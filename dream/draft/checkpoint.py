"""Draft checkpoints, HF-style: a directory with config.json and model.safetensors.

config.json holds the resolved DraftConfig, the entropy layer window and the training settings the draft
was trained with, the saved dtype, and the fingerprint of the target it was trained against
(TargetAdapter.fingerprint(): model type, vocabulary, hidden size, layers, head hash). The target's
embedding and LM head are shared and frozen, so they are never saved; a reduced vocabulary's `vocab_map`
is (it is part of what was trained). Loading against a different target, unknown config keys, and
unreadable weights all raise ValueError with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dream.draft.base import DraftModel
from dream.draft.config import DraftConfig, LayerWindow
from dream.draft.dream_model import DreamDraft
from dream.draft.eagle3_model import Eagle3Draft
from dream.draft.eagle_model import Eagle2Draft
from dream.draft.head import target_head
from dream.jsonfile import read_tagged_json
from dream.target.identity import check_same_target
from dream.target.packing import prepack_draft

FORMAT = "dream-draft"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_TOP_KEYS = {"format", "format_version", "architecture", "draft", "layer_window", "training", "target", "dtype"}
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class DraftCheckpoint:
    draft: DraftModel                   # weights loaded, target head bound, eval mode
    layer_window: LayerWindow | None    # the entropy window its intermediate supervision used
    training: dict[str, Any]            # training settings recorded at save time
    target_fingerprint: dict[str, Any]  # the target it was trained against
    saved_dtype: str                    # "bfloat16" | "float32"


_CLASSES: dict[str, type[DraftModel]] = {"dream": DreamDraft, "eagle2": Eagle2Draft, "eagle3": Eagle3Draft}


def build_draft(cfg: DraftConfig) -> DraftModel:
    """A freshly initialised draft of cfg.architecture."""
    return _CLASSES[cfg.architecture](cfg)


def save_draft(
    path: str | Path,
    draft: DraftModel,
    target_fingerprint: dict[str, Any],
    *,
    layer_window: LayerWindow | None = None,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write config.json + model.safetensors into `path` (created); floating weights stored as `dtype`."""
    dtype_name = next((name for name, d in _DTYPES.items() if d == dtype), None)
    if dtype_name is None:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype}")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": draft.config.architecture,
        "draft": draft.config.to_dict(),
        "layer_window": None if layer_window is None else layer_window.to_dict(),
        "training": dict(training or {}),
        "target": target_fingerprint,
        "dtype": dtype_name,
    }
    text = json.dumps(config, indent=2, sort_keys=True)   # fails early on a non-JSON training value
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.to(dtype) if t.is_floating_point() else t).detach().contiguous().cpu()
        for name, t in draft.state_dict().items()
    }
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    (path / CONFIG_FILE).write_text(text + "\n")
    return path


def read_draft_config(path: str | Path) -> dict[str, Any]:
    """config.json of a draft directory, validated (unknown keys raise)."""
    file = Path(path) / CONFIG_FILE
    config = read_tagged_json(file, FORMAT, "config", missing="not a draft checkpoint directory")
    unknown = sorted(set(config) - _TOP_KEYS)
    missing = sorted(_TOP_KEYS - set(config))
    if unknown or missing:
        raise ValueError(f"{file}: unknown keys {unknown}, missing keys {missing}")
    if config["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {config['format_version']} is not {FORMAT_VERSION}")
    if config["dtype"] not in _DTYPES:
        raise ValueError(f"{file}: dtype {config['dtype']!r} is not one of {list(_DTYPES)}")
    if config["architecture"] != config["draft"].get("architecture"):
        raise ValueError(f"{file}: architecture disagrees with draft.architecture")
    return config


def target_device(target: Any) -> torch.device:
    model = getattr(target, "model", target)
    return next(model.parameters()).device


def load_draft(path: str | Path, target: Any, *, dtype: torch.dtype = torch.float32) -> DraftCheckpoint:
    """Load a draft for `target` (a TargetAdapter): refuses a checkpoint trained against another target."""
    path = Path(path)
    config = read_draft_config(path)
    check_same_target(config["target"], target.fingerprint(), "draft", path)
    draft_config = DraftConfig.from_dict(config["draft"])
    window = None if config["layer_window"] is None else LayerWindow.from_dict(config["layer_window"])
    draft = build_draft(draft_config)
    draft.load_state_dict(_read_weights(path / WEIGHTS_FILE, draft), strict=True)
    draft = draft.to(device=target_device(target), dtype=dtype).eval()     # the draft runs where the target does
    prepack_draft(draft)      # loaded for inference: its linears run on prepacked weights where that is faster
    draft.bind_head(target_head(target))
    return DraftCheckpoint(draft, window, config["training"], config["target"], config["dtype"])


def _read_weights(file: Path, draft: DraftModel) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(file))
    except FileNotFoundError:
        raise ValueError(f"{file} does not exist") from None
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{file} cannot be read (truncated or corrupted): {err}") from None
    expected = draft.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{file}: missing tensors {missing}, unexpected tensors {unexpected}")
    wrong = [f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if tensors[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{file}: tensor shapes do not match the config: {wrong}")
    return tensors
