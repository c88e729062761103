"""The EAGLE-3 draft (dream.draft.eagle3_model) as a vLLM model, run by vLLM's own EAGLE-3 path (method "eagle3").

Route: vLLM's EAGLE-3 machinery end to end. The target (a `SupportsEagle3` class, dream.serving.targets)
returns, besides its final hidden state, the residual entering each aux layer (vLLM's aux layer i is
`hidden_states + residual` before layer i: exactly the harness's aux layer i); the model runner concatenates
them per token and the proposer calls the draft's `combine_hidden_states` (fc) on them before the first pass;
each speculative step is fed the draft's second output, its last layer's state before the final norm. The
proposer asserts that an "eagle3" draft is one of vLLM's own EAGLE-3 classes, so this class subclasses
`Eagle3LlamaForCausalLM` and keeps its model (vllm/model_executor/models/llama_eagle3.py: fc, one decoder layer
whose attention reads [input_layernorm(embedding) ; hidden_norm(feature)], the residual starting from the
feature, the final norm, returning (post-norm, pre-norm)). That is the harness's Eagle3Layer computation, and
its checkpoint names are EAGLE-3's (`midlayer.*` -> `layers.0.*` through vLLM's own weight mapper).

The memory rule is the EAGLE shift every draft here uses (dream.serving.draft_model): the row in slot p carries
the token of position p + 1 and the fused state of position p, so the token at position i reads the fused
state of i - 1. The first prompt token gets no row (the harness feeds it zeros); every visual token is kept.

What differs from vLLM's class, and why:
- inputs and head are the target's (dream.serving.draft_io): vLLM's class ignores image embeddings (the
  proposer then falls back to text-only inputs) and scores with a head of its own through an offset table
  (`d2t`); ours reads the target's merged image embeddings and scores with the target's head restricted to
  `vocab_map` (draft id -> target id), as the harness does;
- combine_hidden_states: vLLM captures each distinct aux layer once, in ascending order (EagleModelMixin sorts
  and dedupes the ids), while fc reads [low ; mid ; high] in aux_layers order, which on shallow targets repeats
  a layer or descends (aux_layers clamps to 1..L-1): the captured states are put back in that order first;
- no embedding table of its own (a stand-in until the proposer shares the target's), no parallel drafting
  (it needs a trained `mask_hidden`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModalEmbeddings
from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM
from vllm.model_executor.models.llama_eagle3 import LlamaModel as Eagle3LlamaModel
from vllm.model_executor.models.utils import maybe_prefix

from dream.draft.config import DraftConfig
from dream.serving.draft_io import SharedEmbedding, TargetSharedIO
from dream.serving.export import ExportedConfig, read_exported_config


def captured_layers(aux_layers: tuple[int, ...]) -> tuple[int, ...]:
    """The aux layers vLLM's target returns, in the order it returns them (EagleModelMixin's rule)."""
    return tuple(sorted(set(aux_layers)))


class Eagle3DreamDraft(TargetSharedIO, Eagle3LlamaForCausalLM, SupportsMultiModalEmbeddings):
    """vLLM draft model for an eagle3 checkpoint exported by `dream export` (dream.serving.export)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        # nn.Module's only: vLLM's __init__ would also build a head and d2t table this draft does not use.
        nn.Module.__init__(self)
        exported = _read_eagle3_config(vllm_config)
        cfg = exported.draft
        self.config = vllm_config.speculative_config.draft_model_config.hf_config
        target_layers = vllm_config.model_config.get_total_num_hidden_layers()
        self.config.target_layer_count = target_layers   # as vLLM's class sets it (draft-relative layer_types)
        self.model = Eagle3LlamaModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"),
                                      start_layer_id=target_layers)
        # Shared after loading (has_own_embed_tokens = False): drop the [V, H] table vLLM's model allocated.
        self.model.embed_tokens = SharedEmbedding()
        self.model.register_buffer("vocab_map", torch.arange(cfg.draft_vocab_size or cfg.vocab_size), persistent=True)
        captured = captured_layers(cfg.aux_layers)
        self.num_captured = len(captured)
        # [3]: for each of fc's three input slots, the captured state that fills it.
        self.register_buffer("aux_order", torch.tensor([captured.index(layer) for layer in cfg.aux_layers]),
                             persistent=False)
        self.use_parallel_drafting = False
        self.init_target_io(vllm_config, exported)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [T]: token embeddings (or ids) and fused features [T, H] -> (post-norm features for the head,
        pre-norm state fed back as the next step's feature)."""
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.embed_input_ids(input_ids)      # scaled as the target's (Gemma)
        return self.model(input_ids, self.draft_positions(positions), hidden_states, inputs_embeds)

    def combine_hidden_states(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[T, k * H]: the k distinct aux states vLLM captured, ascending -> fc([low ; mid ; high]) [T, H]."""
        captured = hidden_states.unflatten(-1, (self.num_captured, -1))            # [T, k, H]
        return self.model.fc(captured.index_select(-2, self.aux_order).flatten(-2))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the eagle3 checkpoint (names as dream.draft.eagle3_model saves them); every parameter must come."""
        loaded = {f"model.{name}" for name in self.model.load_weights(self._layer_weights(weights))}
        missing = sorted({name for name, _ in self.named_parameters()} - loaded)
        if missing:
            raise ValueError(f"the eagle3 draft checkpoint lacks tensors for {missing}")
        return loaded

    def _layer_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors for vLLM's model (its mapper renames and fuses them); vocab_map is ours."""
        for name, tensor in weights:
            if name == "vocab_map":
                self.model.vocab_map.copy_(tensor.to(self.model.vocab_map.device))
            else:
                yield name, tensor


def _read_eagle3_config(vllm_config: VllmConfig) -> ExportedConfig:
    """The exported eagle3 config, refused for any other method or architecture."""
    speculative_config = vllm_config.speculative_config
    assert speculative_config is not None and speculative_config.draft_model_config is not None
    exported = read_exported_config(speculative_config.draft_model_config.hf_config)
    cfg: DraftConfig = exported.draft
    if cfg.architecture != "eagle3":
        raise ValueError(f"{exported.source}: Eagle3DreamDraft builds eagle3 drafts, not {cfg.architecture}")
    if speculative_config.method != "eagle3":
        raise ValueError(f"{exported.source}: an eagle3 draft runs with vLLM's speculative method 'eagle3', "
                         f"not {speculative_config.method!r} (it reads the target's aux layers)")
    if speculative_config.parallel_drafting:
        raise ValueError(f"{exported.source}: parallel drafting needs a trained mask_hidden; this draft has none")
    return exported
