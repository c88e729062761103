"""The EAGLE-2-style baseline draft: fc([embedding_i ; feature_{i-1}]) -> one decoder block -> norm -> head.

It shares DREAM's interfaces and proposer. Its memory is the raw features; a query reads exactly one entry,
the latest one it may see: for a committed token the target feature of the token before it, for a tree node
its parent's draft feature (the visible entry with the highest index is that one, because memory is
appended in position order and a node's ancestors in depth order). A query that sees no memory (the first
token of a sequence) gets a zero feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from dream.draft.base import DraftModel
from dream.draft.blocks import llama_config
from dream.draft.config import DraftConfig


class Eagle2Draft(DraftModel):
    def __init__(self, cfg: DraftConfig) -> None:
        if cfg.architecture != "eagle2":
            raise ValueError(f"Eagle2Draft needs architecture='eagle2', got {cfg.architecture!r}")
        super().__init__(cfg)
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=True)
        self.block = LlamaDecoderLayer(llama_config(cfg), layer_idx=0)
        self.reset_parameters()

    def encode_memory(self, features: Tensor) -> list[Tensor]:
        return [features]

    def _blocks(
        self,
        embeds: Tensor,
        rotary: tuple[Tensor, Tensor],
        self_mask: Tensor,
        memory: list[Tensor],
        allowed_memory: Tensor,
        cache: DynamicCache | None,
    ) -> tuple[Tensor, Tensor]:
        previous = latest_visible(memory[0], allowed_memory)
        hidden = self.fc(torch.cat([embeds, previous], dim=-1))
        hidden = self.block(hidden, attention_mask=self_mask, position_embeddings=rotary, past_key_values=cache)
        return hidden, hidden


def latest_visible(memory: Tensor, allowed: Tensor) -> Tensor:
    """memory [B, T, H], allowed [B, N, T] -> [B, N, H]: the highest-index allowed entry per query, else 0."""
    b, n, t = allowed.shape
    if t == 0:
        return memory.new_zeros(b, n, memory.shape[-1])
    rank = torch.arange(1, t + 1, device=allowed.device) * allowed       # 0 where not allowed
    index = rank.argmax(-1)                                                # [B, N]
    picked = torch.gather(memory, 1, index.unsqueeze(-1).expand(b, n, memory.shape[-1]))
    return picked * allowed.any(-1, keepdim=True).to(memory.dtype)
