"""Export a `train_vision` checkpoint's shipped parts to the assets folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dream.zoo import model as M
from dream.zoo.objectives import log
from dream.zoo.spec import ZooSpec


def export(ckpt_path: Path, assets: Path) -> None:
    """A checkpoint's shipped parts -> bf16 safetensors + spec.json + train_info.json in `assets`."""
    from safetensors.torch import save_file

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    spec = ZooSpec.from_dict(ckpt["spec"])
    state = ckpt["trainable"]
    vision = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()
              if k.startswith(("model.vision_model.", "model.connector."))}
    delta = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items() if "lora_" in k or k == M.NEW_EMBED_KEY}
    assets.mkdir(parents=True, exist_ok=True)
    save_file(vision, assets / M.VISION_FILE)
    save_file(delta, assets / M.LM_DELTA_FILE)
    spec.save(assets / M.SPEC_FILE)
    lm_history = [h for h in ckpt["history"] if h["stage"] == "lm"]
    info = {"checkpoint": str(ckpt_path), "stage": ckpt["stage"], "step": ckpt["step"], "best_val_exact": ckpt["best"],
            "last_val": lm_history[-1] if lm_history else None, "config": ckpt["config"]}
    (assets / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in assets.iterdir()}
    log(f"exported {ckpt_path} (stage {ckpt['stage']} step {ckpt['step']}) -> {assets}: {sizes}")
