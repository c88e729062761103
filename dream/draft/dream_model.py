"""The DREAM draft: self-attention and gated cross-attention blocks over the target's input embeddings.

Default layout (the paper's): self-attention block, cross-attention block, self-attention block, final
RMSNorm, the target's head. Target features enter ONLY through cross-attention (no EAGLE fusion layer);
each cross-attention block keeps its own keys/values of every memory entry, computed once when the entry
is remembered.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from dream.draft.base import DraftModel
from dream.draft.blocks import CrossAttentionBlock, llama_config
from dream.draft.config import DraftConfig


class DreamDraft(DraftModel):
    def __init__(self, cfg: DraftConfig) -> None:
        if cfg.architecture != "dream":
            raise ValueError(f"DreamDraft needs architecture='dream', got {cfg.architecture!r}")
        super().__init__(cfg)
        layer_config = llama_config(cfg)
        blocks: list[nn.Module] = []
        self_index = 0
        for kind in cfg.blocks:
            if kind == "self":
                # layer_idx numbers the self-attention blocks: their slots in the DynamicCache.
                blocks.append(LlamaDecoderLayer(layer_config, layer_idx=self_index))
                self_index += 1
            else:
                blocks.append(CrossAttentionBlock(cfg))
        self.blocks = nn.ModuleList(blocks)
        self.reset_parameters()

    def encode_memory(self, features: Tensor) -> list[Tensor]:
        """-> [keys_0, values_0, keys_1, values_1, ...] per cross-attention block, each [B, H_kv, T, D]."""
        out: list[Tensor] = []
        for block in self.blocks:
            if isinstance(block, CrossAttentionBlock):
                out.extend(block.cross_attn.encode(features))
        return out

    def _blocks(
        self,
        embeds: Tensor,
        rotary: tuple[Tensor, Tensor],
        self_mask: Tensor,
        memory: list[Tensor],
        allowed_memory: Tensor,
        cache: DynamicCache | None,
    ) -> tuple[Tensor, Tensor]:
        hidden = embeds
        first: Tensor | None = None
        kv = iter(memory)
        for block in self.blocks:
            if isinstance(block, CrossAttentionBlock):
                hidden = block(hidden, next(kv), next(kv), allowed_memory)
            else:
                hidden = block(hidden, attention_mask=self_mask, position_embeddings=rotary, past_key_values=cache)
            if first is None:
                first = hidden
        assert first is not None
        return first, hidden
