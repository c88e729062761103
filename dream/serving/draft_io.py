"""What the plugin's draft classes share with the target inside vLLM: the input stream, the head, the target check.

vLLM's EAGLE proposer (vllm/v1/spec_decode/llm_base_proposer.py, `load_model`) gives a draft that has no
embedding or head of its own (`has_own_embed_tokens / has_own_lm_head = False`) the target's: it sets
`model.embed_tokens` and `lm_head` on the draft after loading. With those, every draft of this project reads
and writes as the harness's (dream.draft.base):
- inputs: the target's token embeddings, with the target's image embeddings merged at visual positions
  (the proposer passes them to drafts that declare `SupportsMultiModalEmbeddings`); Gemma's text models
  scale token embeddings by sqrt(hidden_size), and the shared table does not carry the scale, so it is
  applied here as the target applies it;
- positions: each token's index in its sequence, as in training. For an M-RoPE target (Qwen2-VL / 2.5-VL)
  vLLM hands a Llama-style draft the first (temporal) row of the target's 3-row positions, which stands still
  over an image and is shifted after it; the index is recomputed from the attention metadata instead, and
  written back where the proposer derives the next steps' positions and KV-cache slots (`draft_positions`);
- head: the `vocab_map` rows of the target's head (the reduced draft vocabulary), scattered back to target
  ids, -inf elsewhere and at the image token (never proposed, as in the harness); Gemma's final logit
  softcap as the target's head applies it.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.models.utils import _merge_multimodal_embeddings

from dream.serving.export import ExportedConfig
from dream.target.head import final_softcap, soft_cap
from dream.target.identity import check_same_target

# Text model types whose token embeddings are scaled by sqrt(hidden_size) (vLLM's Gemma models multiply the
# shared embedding's output by a `normalizer`; the harness's input stream has it too): the draft must do the same.
SCALED_EMBEDDING_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")


class SharedEmbedding(nn.Module):
    """Stands in for the target's embedding until vLLM's proposer shares it (`load_model`)."""

    weight: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the target's embedding has not been shared with the draft yet")


class TargetSharedIO:
    """Mixin for the plugin's draft classes: embed_input_ids and compute_logits over the target's own embedding
    and head. The class keeps the embedding at `self.model.embed_tokens` and the [V_draft] draft -> target id
    map at `self.model.vocab_map`; it calls `init_target_io` in its __init__."""

    has_own_embed_tokens = False     # vLLM's proposer shares the target's embedding ...
    has_own_lm_head = False          # ... and LM head with us after loading

    model: nn.Module
    lm_head: nn.Module               # set by the proposer

    def init_target_io(self, vllm_config: VllmConfig, exported: ExportedConfig) -> None:
        check_target(exported, vllm_config)
        self.vocab_size = exported.draft.vocab_size
        self.logits_processor = LogitsProcessor(self.vocab_size)
        # Read from the target's config here: vLLM's V1 proposer also copies the image token onto the draft's
        # config as image_token_index, its V2 runner does not.
        target_config = vllm_config.model_config.hf_config
        self.image_token_id: int | None = getattr(target_config, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(target_config, "image_token_index", None)
        self._reduced_head: torch.Tensor | None = None   # [V_draft, H] rows of the shared head, made on first use
        text_config = vllm_config.model_config.hf_text_config
        self.embed_scale: float | None = (text_config.hidden_size**0.5
                                          if text_config.model_type in SCALED_EMBEDDING_TYPES else None)
        self.logit_softcap: float | None = final_softcap(text_config)   # vLLM's language models read it there
        self.sequence_positions: bool = vllm_config.model_config.uses_mrope

    def draft_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """[T] the positions vLLM passes -> each token's index in its sequence, where the target uses M-RoPE.

        Read from the draft layers' attention metadata, which every backend's has: token j of request r's
        query sits at seq_lens[r] - query_len[r] + j. Written IN PLACE: `positions` is the proposer's buffer,
        from which it derives the next speculative step's positions and the KV-cache slot each step writes;
        left at the temporal row, step k would write its keys at slot temporal + k, over an earlier token's
        (3 rows back in the tiny Qwen2.5-VL test). Padding rows keep theirs;
        without metadata (profiling and dummy runs) positions pass through. No host sync (graph-safe)."""
        if not self.sequence_positions or not is_forward_context_available():
            return positions
        metadata = get_forward_context().attn_metadata
        if not isinstance(metadata, dict) or not metadata:
            return positions
        layer = next(iter(metadata.values()))
        starts = layer.query_start_loc.to(positions.device, torch.long)
        num_requests = starts.shape[0] - 1
        context_lens = layer.seq_lens.to(positions.device, torch.long)[:num_requests] - (starts[1:] - starts[:-1])
        rows = torch.arange(positions.shape[0], device=positions.device)
        request = torch.searchsorted(starts[1:].contiguous(), rows, right=True).clamp(max=num_requests - 1)
        index = rows - starts[request] + context_lens[request]
        positions.copy_(torch.where(rows < starts[-1], index, positions))
        return positions

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings=None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the target's image embeddings at visual positions (the harness's input stream)."""
        embeds = self.model.embed_tokens(input_ids)
        if self.embed_scale is not None:
            # In the embedding's dtype, as the target does (vLLM's Gemma normalizer buffer, HF's embed_scale).
            embeds = embeds * torch.tensor(self.embed_scale, dtype=embeds.dtype, device=embeds.device)
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return embeds
        assert is_multimodal is not None
        return _merge_multimodal_embeddings(embeds, multimodal_embeddings, is_multimodal)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """features [T, H] -> [T, V_target] logits: the reduced vocabulary's, -inf at every other id."""
        vocab_map = self.model.vocab_map
        reduced = self._reduced_logits(hidden_states)
        logits = reduced.new_full((reduced.shape[0], self.vocab_size), float("-inf"))
        logits[:, vocab_map] = reduced
        return logits

    def get_top_tokens(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """features [T, H] -> [T] target ids: compute_logits' argmax without the [T, V_target] scatter.

        vLLM's proposer calls it for greedy drafts (speculative config `use_local_argmax_reduction`). vocab_map
        is ascending, so a tie goes to the same id as the argmax over the scattered logits."""
        return self.model.vocab_map[self._reduced_logits(hidden_states).argmax(dim=-1)]

    def _reduced_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """features [T, H] -> [T, V_draft] logits over the reduced vocabulary, the image token at -inf."""
        vocab_map = self.model.vocab_map
        if get_tensor_model_parallel_world_size() > 1:
            # The shared head is split by vocabulary across ranks: score all rows, keep ours.
            full = self.logits_processor(self.lm_head, hidden_states)
            reduced = full.index_select(-1, vocab_map)
        else:
            if self._reduced_head is None or self._reduced_head.dtype != hidden_states.dtype:
                weight = self.lm_head.weight
                self._reduced_head = weight.index_select(0, vocab_map.to(weight.device)).to(hidden_states.dtype)
            reduced = torch.nn.functional.linear(hidden_states, self._reduced_head)
        reduced = soft_cap(reduced, self.logit_softcap)    # as the target's head
        if self.image_token_id is not None:
            reduced = reduced.masked_fill(vocab_map == self.image_token_id, float("-inf"))
        return reduced


def check_target(exported: ExportedConfig, vllm_config: VllmConfig) -> None:
    """Refuse a draft trained against another target (the structural fields of its fingerprint).

    The head hash needs the target's weights; `dream serve` / `dream bench` check it before starting vLLM.
    """
    model_config = vllm_config.model_config
    text = model_config.hf_text_config
    current = {
        "model_type": model_config.hf_config.model_type,
        "hidden_size": text.hidden_size,
        "num_layers": text.num_hidden_layers,
        "vocab_size": model_config.get_vocab_size(),
    }
    check_same_target(exported.target, current, "draft", exported.source)
