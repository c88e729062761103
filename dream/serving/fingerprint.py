"""A target's fingerprint read from its checkpoint folder, without building the model (for `dream serve`).

The same fields as TargetAdapter.fingerprint() that a served target can be checked on before vLLM starts:
model type, hidden size, text layers, head rows and the head hash (sha256 of the bf16-rounded head weight,
first 16 hex digits). The head is `lm_head.weight`, or the text model's input embedding when tied.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from dream.draft.checkpoint import read_draft_config

_HEAD_KEYS = ("lm_head.weight",)
_TIED_SUFFIX = "embed_tokens.weight"


def checkpoint_fingerprint(target_dir: str | Path) -> dict[str, Any]:
    """model_type, hidden_size, num_layers, vocab_size and lm_head_sha256 of a stock HF checkpoint folder."""
    target_dir = Path(target_dir)
    config = json.loads((target_dir / "config.json").read_text())
    text = config.get("text_config", config)
    head = _head_weight(target_dir, bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings"))))
    digest = hashlib.sha256(head.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return {
        "model_type": config["model_type"],
        "hidden_size": text["hidden_size"],
        "num_layers": text["num_hidden_layers"],
        "vocab_size": head.shape[0],
        "lm_head_sha256": digest.hexdigest()[:16],
    }


def check_draft_for_target(draft_dir: str | Path, target_dir: str | Path) -> None:
    """ValueError naming every field where the draft's recorded target and this target differ."""
    saved = read_draft_config(draft_dir)["target"]
    current = checkpoint_fingerprint(target_dir)
    diffs = [f"{k}: draft {saved.get(k)!r} != target {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise ValueError(f"draft {draft_dir} was trained against a different target: " + "; ".join(diffs))


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
