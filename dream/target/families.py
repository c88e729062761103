"""What differs between the supported model families: one small table, nothing else is per-family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedConfig


@dataclass(frozen=True)
class Family:
    name: str
    vision: bool  # loaded with AutoModelForImageTextToText (else AutoModelForCausalLM)
    # "stock": the family's own processor; "pixtral" / "smolvlm" / "qwen": a project-side placeholder expansion
    # around the stock image processor (those processors need torchvision to construct); None: text only.
    expander: Literal["stock", "pixtral", "smolvlm", "qwen"] | None
    placeholder: str | None  # what a prompt writes where an image goes (counted against the images)
    mrope: bool = False  # 3-row M-RoPE positions, offset by the rope delta the prefill computes
    mm_token_type_ids: bool = False  # the prefill needs mm_token_type_ids (1 at image tokens)


_QWEN = dict(vision=True, expander="qwen", placeholder="<|image_pad|>", mrope=True, mm_token_type_ids=True)

FAMILIES: dict[str, Family] = {
    "llava": Family("llava", vision=True, expander="stock", placeholder="<image>"),
    "pixtral": Family("pixtral", vision=True, expander="pixtral", placeholder="[IMG]"),
    "llava_next": Family("llava_next", vision=True, expander="stock", placeholder="<image>"),
    "idefics3": Family("idefics3", vision=True, expander="stock", placeholder="<image>"),
    "smolvlm": Family("smolvlm", vision=True, expander="smolvlm", placeholder="<image>"),
    "gemma3": Family("gemma3", vision=True, expander="stock", placeholder="<start_of_image>"),
    "qwen2_vl": Family("qwen2_vl", **_QWEN),
    "qwen2_5_vl": Family("qwen2_5_vl", **_QWEN),
}
# Images go through transformers' PIL image processors, whether torchvision is installed or not (with it,
# transformers would default to its torchvision ones, whose resizing rounds differently): one pixel pipeline
# for the harness, datagen and vLLM (dream.serving.targets), so drafts see at inference what they trained on.
IMAGE_BACKEND = "pil"
TEXT_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def family_of(config: PreTrainedConfig) -> Family:
    """The family of a checkpoint's config; ValueError for an architecture this adapter does not support."""
    model_type = config.model_type
    if model_type == "llava" and getattr(config.vision_config, "model_type", None) == "pixtral":
        return FAMILIES["pixtral"]
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in TEXT_MODEL_TYPES:
        return Family(model_type, vision=False, expander=None, placeholder=None)
    supported = sorted([*FAMILIES, *TEXT_MODEL_TYPES])
    raise ValueError(f"unsupported architecture {model_type!r}: supported model types are {supported}")
