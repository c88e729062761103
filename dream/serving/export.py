"""`dream export`: a dream draft directory as a folder vLLM's speculative config loads.

vLLM builds every draft's config with transformers' AutoConfig, which needs a `model_type`; our draft
checkpoints carry a strict config of their own instead (dream.draft.checkpoint). The export writes a
LlamaConfig-shaped config.json (sizes, rotary base) whose `architectures` names the plugin's draft class,
with the full DraftConfig and the target fingerprint under `dream_draft`, and copies the weights unchanged
(same tensor names, same dtype: the plugin maps them onto vLLM's fused layers when loading). dream and
eagle2 drafts run with vLLM's method "eagle" (dream.serving.draft_model), eagle3 drafts with "eagle3"
(dream.serving.eagle3_draft): their config also names the target layers vLLM must capture
(`eagle_aux_hidden_state_layer_ids`, read by vLLM's model runner).

`export_draft(dir, out)` writes one to a folder of the user's choice (`dream export`), for plain vLLM:
`vllm serve TARGET --speculative-config '{"method": "eagle", "model": "OUT", ...}'` (method "eagle3" for
an eagle3 draft, `vllm_method`) with the plugin installed. `exported_draft(dir)` does it once per distinct
checkpoint into the user's cache, so commands can take the draft directory itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream.draft.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_draft_config
from dream.draft.config import DraftConfig

# vLLM's EAGLEConfig keeps an architecture name that starts with "Eagle" (method "eagle") or "Eagle3"
# (method "eagle3") as it is; any other name it prefixes.
DRAFT_ARCHITECTURE = "EagleDreamDraft"      # dream and eagle2 drafts (draft_model.py)
EAGLE3_ARCHITECTURE = "Eagle3DreamDraft"    # eagle3 drafts (eagle3_draft.py)
EXPORT_FORMAT = "dream-vllm-draft"
EXPORT_VERSION = 1
CONFIG_KEY = "dream_draft"               # where the dream config sits inside the exported config.json


@dataclass(frozen=True)
class ExportedConfig:
    """What the plugin's draft class reads back from an exported config.json."""

    draft: DraftConfig                   # the resolved draft config, as trained
    target: dict[str, Any]               # fingerprint of the target the draft was trained against
    source: str                          # the draft directory it was exported from


def export_for_vllm(draft_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir`/config.json + model.safetensors for vLLM; returns out_dir. Overwrites an earlier export."""
    draft_dir = Path(draft_dir).resolve()
    config = read_draft_config(draft_dir)          # validated: unknown keys, version, dtype
    cfg = DraftConfig.from_dict(config["draft"])      # every architecture has a plugin class
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config = _hf_config(cfg, config, draft_dir)
    # Weights first, config last: a folder with a config.json is a complete export.
    shutil.copyfile(draft_dir / WEIGHTS_FILE, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return out


def export_draft(draft_dir: str | Path, out_dir: str | Path) -> Path:
    """Export `draft_dir` to `out_dir`, a new or empty folder: all of it or, on any error, nothing."""
    draft_dir, out = Path(draft_dir), Path(out_dir)
    _check_draft_files(draft_dir)
    read_draft_config(draft_dir)          # validated before anything is written
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A temporary folder beside the final one (same file system), renamed once complete; mkdir, unlike
    # tempfile.mkdtemp, keeps the umask's permissions, so whoever runs vLLM can read the export.
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        export_for_vllm(draft_dir, tmp)
        tmp.rename(out)                   # replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def exported_draft(draft_dir: str | Path, cache_root: str | Path | None = None) -> Path:
    """The export of `draft_dir` in the cache (made on first use), keyed by the checkpoint's content."""
    draft_dir = Path(draft_dir).resolve()
    _check_draft_files(draft_dir)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((draft_dir / name).read_bytes())
    digest.update(f"{EXPORT_FORMAT}/{EXPORT_VERSION}".encode())
    root = Path(cache_root) if cache_root is not None else _default_cache_root()
    out = root / digest.hexdigest()[:16]
    if not (out / CONFIG_FILE).is_file():
        # Export next to the final place, then rename: concurrent callers never see half a folder.
        tmp = root / f".tmp-{os.getpid()}-{out.name}"
        export_for_vllm(draft_dir, tmp)
        try:
            tmp.rename(out)
        except OSError:                            # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def vllm_method(draft_dir: str | Path) -> str:
    """vLLM's speculative method for a draft directory: "eagle3" for an eagle3 draft, else "eagle"."""
    cfg = DraftConfig.from_dict(read_draft_config(Path(draft_dir))["draft"])
    return "eagle3" if cfg.architecture == "eagle3" else "eagle"


def read_exported_config(hf_config: Any) -> ExportedConfig:
    """The dream part of an exported config (a transformers config object or its dict)."""
    data = hf_config if isinstance(hf_config, dict) else getattr(hf_config, CONFIG_KEY, None)
    if isinstance(data, dict) and CONFIG_KEY in data:
        data = data[CONFIG_KEY]
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"not an exported dream draft (no '{CONFIG_KEY}' entry of format {EXPORT_FORMAT}): "
            "run `dream export DRAFT_DIR --out DIR` or pass the draft directory to dream serve / bench"
        )
    if data.get("format_version") != EXPORT_VERSION:
        raise ValueError(f"exported draft has format_version {data.get('format_version')}, expected {EXPORT_VERSION}")
    return ExportedConfig(DraftConfig.from_dict(data["draft"]), dict(data["target"]), str(data["source"]))


def _check_draft_files(draft_dir: Path) -> None:
    if not draft_dir.is_dir():
        raise FileNotFoundError(f"{draft_dir}: no such directory")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (draft_dir / name).is_file():
            raise ValueError(f"{draft_dir} is not a draft checkpoint directory ({name} missing)")


def _hf_config(cfg: DraftConfig, config: dict[str, Any], source: Path) -> dict[str, Any]:
    """A config AutoConfig reads as a LlamaConfig; vLLM's proposer takes sizes and rotary from it."""
    return {
        "model_type": "llama",
        "architectures": [EAGLE3_ARCHITECTURE if cfg.architecture == "eagle3" else DRAFT_ARCHITECTURE],
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        # One attention layer per block (self or cross); vLLM sizes nothing by it, but keep it truthful.
        "num_hidden_layers": len(cfg.blocks),
        "vocab_size": cfg.vocab_size,                 # the TARGET's vocabulary: logits come back at its width
        "draft_vocab_size": cfg.draft_vocab_size or cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": False,
        "torch_dtype": config["dtype"],
        **_eagle3_fields(cfg),
        CONFIG_KEY: {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "draft": cfg.to_dict(),
            "target": config["target"],
            "source": str(source),
        },
    }


def _eagle3_fields(cfg: DraftConfig) -> dict[str, Any]:
    """What vLLM's EAGLE-3 path reads from an eagle3 draft's config: the target layers whose entering residual
    its model runner captures (vLLM's aux layer ids are exactly our aux_layers), and fc's input width."""
    if cfg.architecture != "eagle3":
        return {}
    return {"eagle_aux_hidden_state_layer_ids": list(cfg.aux_layers),
            "num_aux_hidden_states": len(cfg.aux_layers),
            "target_hidden_size": cfg.hidden_size}


def _default_cache_root() -> Path:
    # The same root as the zoo's built targets (dream.zoo.build).
    return Path(os.environ.get("DREAM_CACHE", "~/.cache/dream")).expanduser() / "vllm-drafts"
