"""A target's identity: the fingerprint that drafts, shard manifests and training checkpoints record, and
the one comparison that refuses a mismatch.

Fields: model_type, family, vocab_size, hidden_size, num_layers and lm_head_sha256 (sha256 of the
bf16-rounded LM head weight, first 16 hex digits, so one checkpoint loaded in fp32 or in bf16 has one
fingerprint). From a checkpoint folder, without building the model (`dream serve`), every field but family;
the head there is `lm_head.weight`, or the text model's input embedding when tied.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

if TYPE_CHECKING:
    from .adapter import TargetAdapter

_HEAD_KEYS = ("lm_head.weight",)
_TIED_SUFFIX = "embed_tokens.weight"


def head_sha256(weight: torch.Tensor) -> str:
    """First 16 hex digits of the sha256 of the bf16-rounded head weight [V, H]."""
    weight = weight.detach().to("cpu", torch.bfloat16).contiguous()
    return hashlib.sha256(weight.view(torch.int16).numpy().tobytes()).hexdigest()[:16]


def target_fingerprint(target: TargetAdapter) -> dict[str, Any]:
    """The fingerprint of a loaded target."""
    return {
        "model_type": target.model.config.model_type,
        "family": target.family,
        "vocab_size": target.vocab_size,
        "hidden_size": target.hidden_size,
        "num_layers": target.num_layers,
        "lm_head_sha256": head_sha256(target.model.get_output_embeddings().weight),
    }


def checkpoint_fingerprint(target_dir: str | Path) -> dict[str, Any]:
    """model_type, hidden_size, num_layers, vocab_size (head rows) and lm_head_sha256 of a stock HF
    checkpoint folder, read from config.json and the head tensor alone."""
    target_dir = Path(target_dir)
    config = json.loads((target_dir / "config.json").read_text())
    text = config.get("text_config", config)
    head = _head_weight(target_dir, bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings"))))
    return {
        "model_type": config["model_type"],
        "hidden_size": text["hidden_size"],
        "num_layers": text["num_hidden_layers"],
        "vocab_size": head.shape[0],
        "lm_head_sha256": head_sha256(head),
    }


def check_same_target(recorded: dict[str, Any], current: dict[str, Any], what: str, where: str | Path) -> None:
    """ValueError, one line, naming every field of `current` where the fingerprint that `what` ("draft",
    "shards", "checkpoint") at `where` recorded differs. Only the fields `current` has are compared: a
    caller that cannot know a field (the head hash inside vLLM) leaves it out."""
    current = json.loads(json.dumps(current))    # the recorded side went through JSON (tuples became lists)
    diffs = [f"{key}: {what} {recorded.get(key)!r} != target {value!r}"
             for key, value in sorted(current.items()) if recorded.get(key) != value]
    if diffs:
        raise ValueError(f"{what} {where}: made from a different target: " + "; ".join(diffs))


def _head_weight(target_dir: Path, tied: bool) -> torch.Tensor:
    files = sorted(target_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{target_dir} has no .safetensors weights")
    for file in files:
        with safe_open(str(file), "pt") as handle:
            keys = list(handle.keys())
            for key in _HEAD_KEYS:
                if key in keys:
                    return handle.get_tensor(key)
            if tied:
                # The text model's embedding (VLMs name it model.text_model.embed_tokens, model.language_model...).
                tied_keys = [k for k in keys if k.endswith(_TIED_SUFFIX) and "vision" not in k]
                if len(tied_keys) == 1:
                    return handle.get_tensor(tied_keys[0])
    raise ValueError(f"cannot find the LM head (or tied embedding) in {target_dir}")
