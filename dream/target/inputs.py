"""Prompt + images -> TargetInputs: chat template, image placeholder expansion, visual-token mask.

Families whose stock processor constructs offline use it. Pixtral, SmolVLM and Qwen2-VL / Qwen2.5-VL
processors need torchvision just to construct (video processors), so for those the stock IMAGE processor
runs alone and the placeholder expansion, a few lines each, is done here the way the stock processor does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedConfig, PreTrainedTokenizerBase
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from .families import Family

T = TypeVar("T")

PER_TOKEN_KWARGS = ("token_type_ids", "mm_token_type_ids")  # model kwargs with one entry per token [1, S]


@dataclass
class TargetInputs:
    input_ids: Tensor  # [1, S] long
    visual_mask: Tensor  # [1, S] bool, True at visual-token positions
    model_kwargs: dict[str, Any]  # pixel_values, image_grid_thw, token_type_ids, ... (prefill only)


Expander = Callable[[dict, int], str]  # (image processor output, image index) -> expanded placeholder text


def _pixtral_expander(config: PreTrainedConfig, image_processor: Any) -> Expander:
    patch = config.vision_config.patch_size * getattr(config, "spatial_merge_size", 1)

    def expand(pix: dict, i: int) -> str:
        height, width = (int(x) for x in pix["image_sizes"][i])
        row = "[IMG]" * (width // patch) + "[IMG_BREAK]"
        return (row * (height // patch))[: -len("[IMG_BREAK]")] + "[IMG_END]"

    return expand


def _qwen_expander(config: PreTrainedConfig, image_processor: Any) -> Expander:
    merge = image_processor.merge_size**2
    return lambda pix, i: "<|image_pad|>" * int(pix["image_grid_thw"][i].prod() // merge)


def _smolvlm_expander(config: PreTrainedConfig, image_processor: Any) -> Expander:
    vision = config.vision_config
    seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2

    def expand(pix: dict, i: int) -> str:
        rows = [r for sample in pix["rows"] for r in sample]
        cols = [c for sample in pix["cols"] for c in sample]
        return get_image_prompt_string(
            rows[i], cols[i], seq_len, "<fake_token_around_image>", "<image>", "<global-img>"
        )

    return expand


_EXPANDERS = {"pixtral": _pixtral_expander, "qwen": _qwen_expander, "smolvlm": _smolvlm_expander}
_IMAGE_PROCESSOR_KWARGS = {"smolvlm": {"return_row_col_info": True}}
_NOT_MODEL_INPUTS = ("input_ids", "attention_mask", "rows", "cols")


class InputBuilder:
    """Builds TargetInputs for one loaded target."""

    def __init__(
        self,
        family: Family,
        config: PreTrainedConfig,
        tokenizer: PreTrainedTokenizerBase,
        processor: Any,  # stock ProcessorMixin, or the image processor for project-side families, or None
        max_context: int,
        dtype: torch.dtype,
    ) -> None:
        self.family, self.tokenizer, self.processor = family, tokenizer, processor
        self.max_context, self.dtype = max_context, dtype
        self.image_token_id = getattr(config, "image_token_id", None) if family.vision else None
        self.chat_template = getattr(processor, "chat_template", None) or tokenizer.chat_template
        self._expand = _EXPANDERS[family.expander](config, processor) if family.expander in _EXPANDERS else None

    def __call__(self, prompt: str | list[dict], images: Sequence[Image.Image] = (), *,
                 expand_images: bool = True) -> TargetInputs:
        images = list(images)
        text, add_special = self._prompt_text(prompt)
        self._check_images(text, images)
        if expand_images:
            encoded = self._encode(text, images, add_special)
        else:
            encoded = dict(self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special))
        input_ids = encoded["input_ids"]
        if input_ids.shape[1] > self.max_context:
            raise ValueError(
                f"prompt is {input_ids.shape[1]} tokens, longer than the model's context of {self.max_context}"
            )
        if self.image_token_id is None or not expand_images:
            visual_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            visual_mask = input_ids == self.image_token_id
        kwargs = {k: v for k, v in encoded.items() if k not in _NOT_MODEL_INPUTS}
        # Pixels follow the model's dtype, as a bf16 model's vision tower expects.
        kwargs = {k: v.to(self.dtype) if _is_float_tensor(v) else v for k, v in kwargs.items()}
        if self.family.mm_token_type_ids:
            kwargs["mm_token_type_ids"] = visual_mask.long()
        return TargetInputs(input_ids=input_ids, visual_mask=visual_mask, model_kwargs=kwargs)

    def _prompt_text(self, prompt: str | list[dict]) -> tuple[str, bool]:
        """The prompt as text, and whether the tokenizer should still add its special tokens.

        A string is used verbatim (the family's image placeholder marks each image); chat messages go
        through the chat template, which already writes every special token.
        """
        if isinstance(prompt, str):
            return prompt, True
        if self.chat_template is None:
            raise ValueError("this model has no chat template: pass the prompt as a string")
        text = self.tokenizer.apply_chat_template(
            prompt, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )
        return text, False

    def _check_images(self, text: str, images: list[Image.Image]) -> None:
        placeholder = self.family.placeholder
        if placeholder is None:
            if images:
                raise ValueError(f"{self.family.name} is a text-only model: it takes no images")
            return
        count = text.count(placeholder)
        if count and not images:
            raise ValueError(f"the prompt has {count} image placeholder(s) {placeholder!r} but no image was given")
        if count != len(images):
            raise ValueError(
                f"the prompt has {count} image placeholder(s) {placeholder!r} "
                f"but {len(images)} image(s) were given"
            )

    def _encode(self, text: str, images: list[Image.Image], add_special: bool) -> dict[str, Tensor]:
        if self.family.expander is None:
            return dict(self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special))
        if self.family.expander == "stock":
            encoded = self.processor(
                text=text, images=images or None, return_tensors="pt", add_special_tokens=add_special
            )
            return dict(encoded)
        pixel_inputs: dict = {}
        if images:
            extra = _IMAGE_PROCESSOR_KWARGS.get(self.family.expander, {})
            pixel_inputs = dict(self.processor(images, return_tensors="pt", **extra))
            pieces = text.split(self.family.placeholder)
            text = pieces[0] + "".join(self._expand(pixel_inputs, i) + piece for i, piece in enumerate(pieces[1:]))
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
        return {**pixel_inputs, **encoded}


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and torch.is_floating_point(value)


def processor_chat_template(path: str | Path) -> str | None:
    """The chat template a checkpoint keeps beside its processor (chat_template.json or .jinja), if any.

    Project-side families load no processor, and some checkpoints keep their template only there.
    """
    path = Path(path)
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def batch_signature(inputs: TargetInputs) -> tuple:
    """Inputs with equal signatures can share a batch: their image tensors have the same shape past the first
    dim (images split into different numbers of tiles, or no image at all, differ)."""
    kwargs = inputs.model_kwargs
    return tuple(sorted((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in kwargs.items()
                        if torch.is_tensor(v) and k not in PER_TOKEN_KWARGS))


def group_by_signature(items: Sequence[T], inputs_of: Callable[[T], TargetInputs]) -> list[list[T]]:
    """`items` split into batchable groups (one `batch_signature` each), in first-seen order, each group in the
    order given."""
    groups: dict[tuple, list[T]] = {}
    for item in items:
        groups.setdefault(batch_signature(inputs_of(item)), []).append(item)
    return list(groups.values())


def pad_batch(batch: Sequence[TargetInputs], pad_id: int, side: Literal["left", "right"]
              ) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """One forward's inputs from several prompts of one `batch_signature`: input_ids [B, S] padded with `pad_id`
    on `side`, the attention mask [B, S] (1 at real tokens), and the model kwargs (per-token ones padded with
    0 the same way, image tensors concatenated)."""
    length = max(inputs.input_ids.shape[1] for inputs in batch)

    def pad(row: Tensor, value: int) -> Tensor:
        missing = length - row.shape[-1]
        return torch.nn.functional.pad(row, (missing, 0) if side == "left" else (0, missing), value=value)

    input_ids = torch.stack([pad(inputs.input_ids[0], pad_id) for inputs in batch])
    attention_mask = torch.stack([pad(torch.ones_like(inputs.input_ids[0]), 0) for inputs in batch])
    kwargs: dict[str, Any] = {}
    for key, value in batch[0].model_kwargs.items():
        values = [inputs.model_kwargs[key] for inputs in batch]
        if key in PER_TOKEN_KWARGS:
            kwargs[key] = torch.stack([pad(v[0], 0) for v in values])
        else:
            kwargs[key] = torch.cat(values) if torch.is_tensor(value) else value
    return input_ids, attention_mask, kwargs
