"""Tiny random-initialised targets of every supported family, built from config alone (no hub).

`build_tiny_target(family, path)` writes a checkpoint directory (model, tokenizer, processor or image
processor, chat template) that loads exactly like a user's checkpoint through
`TargetAdapter.from_pretrained(path)`. Every model stays well under 1M parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import transformers as tf
from PIL import Image

from tiny_tokenizers import MAX_POSITIONS, QWEN_TOKENS, build_tokenizer

FAMILIES = (
    "llama",
    "gemma3_text",
    "llava",
    "llava_next",
    "pixtral",
    "idefics3",
    "smolvlm",
    "gemma3",
    "qwen2_vl",
    "qwen2_5_vl",
)
TEXT_FAMILIES = ("llama", "gemma3_text")
VLM_FAMILIES = tuple(f for f in FAMILIES if f not in TEXT_FAMILIES)

GEMMA3_WINDOW = 8  # tests run contexts well past this
def _text_kwargs(tok: tf.PreTrainedTokenizerFast, **over) -> dict:
    base = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
        tie_word_embeddings=False,
    )
    base.update(over)
    return base


def _vision_kwargs(**over) -> dict:
    base = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    base.update(over)
    return base


def _gemma3_text(tok, text: dict) -> tf.Gemma3TextConfig:
    text = {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"], **text}
    return tf.Gemma3TextConfig(
        **_text_kwargs(tok, num_hidden_layers=len(text["layer_types"]), query_pre_attn_scalar=16, **text),
        sliding_window=GEMMA3_WINDOW,
    )


def _llama(tok, text):
    return tf.LlamaForCausalLM(tf.LlamaConfig(**_text_kwargs(tok, **text))), None


def _gemma3_text_lm(tok, text):
    return tf.Gemma3ForCausalLM(_gemma3_text(tok, text)), None


def _clip_image_processor(size: int = 32) -> tf.CLIPImageProcessor:
    return tf.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _llava(tok, text):
    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**_vision_kwargs(projection_dim=32)),
        text_config=tf.LlamaConfig(**_text_kwargs(tok, **text)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        vision_feature_layer=-1,
    )
    proc = tf.LlavaProcessor(
        image_processor=_clip_image_processor(),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return tf.LlavaForConditionalGeneration(cfg), proc


def _llava_next(tok, text):
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    cfg = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**_vision_kwargs(projection_dim=32)),
        text_config=tf.LlamaConfig(**_text_kwargs(tok, **text)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
    )
    image_proc = tf.LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    proc = tf.LlavaNextProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return tf.LlavaNextForConditionalGeneration(cfg), proc


def _pixtral(tok, text):
    cfg = tf.LlavaConfig(
        vision_config=tf.PixtralVisionConfig(**_vision_kwargs(head_dim=16)),
        text_config=tf.MistralConfig(**_text_kwargs(tok, sliding_window=None, **text)),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        multimodal_projector_bias=False,
    )
    image_proc = tf.PixtralImageProcessor(size={"longest_edge": 32}, patch_size={"height": 8, "width": 8})
    return tf.LlavaForConditionalGeneration(cfg), _stock_processor(
        tf.PixtralProcessor, image_proc, tok, patch_size=8, spatial_merge_size=1)


def _idefics_parts(tok, text, config_cls, vision_cls, image_proc_cls):
    cfg = config_cls(
        vision_config=vision_cls(**_vision_kwargs()),
        text_config=tf.LlamaConfig(**_text_kwargs(tok, **text)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    image_proc = image_proc_cls(
        do_image_splitting=True,
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 32},
    )
    return cfg, image_proc


def _idefics3(tok, text):
    cfg, image_proc = _idefics_parts(
        tok, text, tf.Idefics3Config, tf.Idefics3VisionConfig, tf.Idefics3ImageProcessor
    )
    proc = tf.Idefics3Processor(
        image_processor=image_proc, tokenizer=tok, image_seq_len=4, chat_template=tok.chat_template
    )
    return tf.Idefics3ForConditionalGeneration(cfg), proc


def _smolvlm(tok, text):
    cfg, image_proc = _idefics_parts(tok, text, tf.SmolVLMConfig, tf.SmolVLMVisionConfig, tf.SmolVLMImageProcessor)
    return tf.SmolVLMForConditionalGeneration(cfg), _stock_processor(
        tf.SmolVLMProcessor, image_proc, tok, video_processor=tf.SmolVLMVideoProcessor, image_seq_len=4)


def _gemma3(tok, text):
    text = dict(text)
    image_tokens = text.pop("mm_tokens_per_image", 4)     # not a text-config field: soft tokens per image
    cfg = tf.Gemma3Config(
        vision_config=tf.SiglipVisionConfig(**_vision_kwargs()),
        # Tied, as transformers ties Gemma3 by the outer config's default; said in the text config too, which
        # is where vLLM reads it (the checkpoint then has no lm_head tensor).
        text_config=_gemma3_text(tok, {"tie_word_embeddings": True, **text}),
        mm_tokens_per_image=image_tokens,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    image_proc = tf.Gemma3ImageProcessor(size={"height": 32, "width": 32})
    proc = tf.Gemma3Processor(
        image_processor=image_proc, tokenizer=tok, image_seq_length=image_tokens, chat_template=tok.chat_template
    )
    return tf.Gemma3ForConditionalGeneration(cfg), proc


def _stock_processor(processor_cls, image_proc, tok, *, video_processor=None, **kwargs):
    """The family's stock processor where torchvision imports (vLLM builds it; its video processor needs
    torchvision), else the image processor alone (the harness needs no more: dream.target.inputs)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return image_proc
    if video_processor is not None:
        kwargs["video_processor"] = video_processor()
    return processor_cls(image_processor=image_proc, tokenizer=tok, chat_template=tok.chat_template, **kwargs)


def _qwen(tok, text_over, config_cls, text_cls, vision_cfg, model_cls):
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in zip(("vs", "img", "ve", "vid"), QWEN_TOKENS)}
    # mrope_section splits head_dim / 2 rotary frequencies (8 at head_dim 16) over (time, height, width).
    k = text_over.get("head_dim", 16) // 16
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2 * k, 3 * k, 3 * k]}
    text = text_cls(**_text_kwargs(tok, **text_over), rope_parameters=rope)
    cfg = config_cls(
        vision_config=vision_cfg,
        text_config=text,
        image_token_id=ids["img"],
        video_token_id=ids["vid"],
        vision_start_token_id=ids["vs"],
        vision_end_token_id=ids["ve"],
    )
    image_proc = tf.Qwen2VLImageProcessor(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=64 * 64
    )
    processor_cls = tf.Qwen2_5_VLProcessor if model_cls is tf.Qwen2_5_VLForConditionalGeneration else tf.Qwen2VLProcessor
    return model_cls(cfg), _stock_processor(processor_cls, image_proc, tok, video_processor=tf.Qwen2VLVideoProcessor)


def _qwen2_vl(tok, text):
    vision = tf.Qwen2VLVisionConfig(
        depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=8, spatial_merge_size=2
    )
    return _qwen(tok, text, tf.Qwen2VLConfig, tf.Qwen2VLTextConfig, vision, tf.Qwen2VLForConditionalGeneration)


def _qwen2_5_vl(tok, text):
    vision = tf.Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=8,
        spatial_merge_size=2,
        out_hidden_size=64,
        window_size=32,
        fullatt_block_indexes=[1],
    )
    return _qwen(tok, text, tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLTextConfig, vision, tf.Qwen2_5_VLForConditionalGeneration)


_BUILDERS: dict[str, Callable] = {
    "llama": _llama,
    "gemma3_text": _gemma3_text_lm,
    "llava": _llava,
    "llava_next": _llava_next,
    "pixtral": _pixtral,
    "idefics3": _idefics3,
    "smolvlm": _smolvlm,
    "gemma3": _gemma3,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
}


def build_tiny_target(family: str, path: str | Path, seed: int = 0, **text: Any) -> Path:
    """Write a tiny random checkpoint of `family` into `path` (created) and return the path.

    `text` overrides text-config fields (e.g. head_dim=32: vLLM's CPU attention has no kernel for 16; Gemma3's
    layer_types, whose length sets the layer count); for gemma3 also mm_tokens_per_image (a square, default 4)."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown fixture family {family!r}; choose from {FAMILIES}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = build_tokenizer(family)
    model, processor = _BUILDERS[family](tok, text)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path


def tiny_image(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A random RGB image (width, height) = size."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def stock_model(path: str | Path, dtype: torch.dtype = torch.float32, **kwargs) -> tf.PreTrainedModel:
    """The checkpoint loaded plainly through its Auto class (default attention): the reference to match."""
    config = tf.AutoConfig.from_pretrained(path)
    vision = hasattr(config, "vision_config")
    auto = tf.AutoModelForImageTextToText if vision else tf.AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=dtype, **kwargs).eval()


def extend_model_kwargs(model_kwargs: dict, n: int) -> dict:
    """Prefill kwargs for the prompt followed by n more text tokens (per-token type ids padded with 0)."""
    out = dict(model_kwargs)
    for key in ("token_type_ids", "mm_token_type_ids"):
        if key in out:
            out[key] = torch.nn.functional.pad(out[key], (0, n))
    return out


@torch.no_grad()
def reference_logits(model: tf.PreTrainedModel, inputs, extra: torch.Tensor) -> torch.Tensor:
    """[len(extra), V]: a fresh, cache-free forward over prompt + extra; logits at the extra tokens."""
    ids = torch.cat([inputs.input_ids, extra[None].to(inputs.input_ids)], dim=1)
    kwargs = extend_model_kwargs(inputs.model_kwargs, extra.numel())
    return model(input_ids=ids, use_cache=False, **kwargs).logits[0, -extra.numel() :]


def ancestors_from_parents(parents: list[int]) -> torch.Tensor:
    """[N, N] bool: ancestors[i, j] iff j == i or j is an ancestor of i (parents[i] < i; root -1)."""
    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            anc[i] |= anc[p]
    return anc


def depths_from_parents(parents: list[int]) -> torch.Tensor:
    depths: list[int] = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    return torch.tensor(depths)


def open_draft(draft: torch.nn.Module, *, std: float = 0.1, gate: float = 1.0) -> torch.nn.Module:
    """Re-initialise a draft so every input visibly matters: larger weights, cross-attention gates opened."""
    draft.reset_parameters(std=std)
    for name, p in draft.named_parameters():
        if name.endswith("_gate"):
            p.data.fill_(gate)
    return draft
