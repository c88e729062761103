"""What both drafts share: rotary positions, the final norm, the shared head, inference state, training forward.

A draft reads two streams. The INPUT stream is the target's merged input embeddings (text embeddings, and
projected visual features at image positions). The MEMORY stream is features of earlier positions: the
target's post-norm final-layer features for committed tokens, and the draft's own final features for tree
ancestors while a tree grows. Every query position i may read memory only from positions strictly before
i (EAGLE's "feature i-1 + token i -> feature i"); the caller states exactly which entries through a boolean
mask, so one code path serves teacher-forced training, incremental decoding and tree expansion.
Subclasses decide how memory is encoded and read (`encode_memory`, `_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from dream.draft.blocks import additive_mask, llama_config
from dream.draft.config import DraftConfig
from dream.draft.head import SharedHead, apply_head


@dataclass
class DraftState:
    """A draft's caches during decoding (batch 1)."""

    cache: DynamicCache        # self-attention K/V of each self-attention block, one entry per forwarded token
    memory: list[Tensor]       # encoded memory, every tensor [1, ..., T, X] with the T entries on dim -2

    @property
    def self_length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def memory_length(self) -> int:
        return self.memory[0].shape[-2]


@dataclass(frozen=True)
class DraftTrainOutput:
    first_hidden: Tensor       # [B, S, H] output of the first block (supervised by the target's layer-l* output)
    features: Tensor           # [B, S, H] final feature after the final norm: what the head reads
    logits: Tensor | None      # [B, S, V_draft]; [n, V_draft] at the `logits_at` tokens; None if not asked


class DraftModel(nn.Module):
    def __init__(self, cfg: DraftConfig) -> None:
        super().__init__()
        self.config = cfg
        self.rotary = LlamaRotaryEmbedding(llama_config(cfg))
        self.norm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.vocab_map: Tensor | None
        if cfg.draft_vocab_size is None:
            self.vocab_map = None
        else:
            # Persistent: the reduced vocabulary is part of what was trained, so it travels in the checkpoint.
            self.register_buffer("vocab_map", torch.arange(cfg.draft_vocab_size), persistent=True)
        self._head: SharedHead | None = None

    def reset_parameters(self, std: float = 0.02) -> None:
        """HF-style init (normal linears, unit norms); cross-attention gates stay at 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    # ---- shared head -------------------------------------------------------------------------------------
    def set_vocab_map(self, vocab_map: Tensor) -> None:
        """vocab_map [V_draft] distinct target ids; call before training (it is saved with the weights)."""
        if self.vocab_map is None or vocab_map.shape != self.vocab_map.shape:
            raise ValueError(f"vocab_map must have shape [{self.config.draft_vocab_size}] (config.draft_vocab_size)")
        if vocab_map.unique().numel() != vocab_map.numel():
            raise ValueError("vocab_map ids must be distinct")
        if int(vocab_map.min()) < 0 or int(vocab_map.max()) >= self.config.vocab_size:
            raise ValueError(f"vocab_map ids must be target ids in [0, {self.config.vocab_size})")
        self.vocab_map.copy_(vocab_map)
        self._head = None

    def bind_head(self, head: SharedHead) -> None:
        """Attach the target's head (never a parameter, never saved); rebind after changing vocab_map."""
        self._head = self.restricted_head(head)

    def restricted_head(self, head: SharedHead) -> SharedHead:
        """The target's head as this draft scores with it: the vocab_map rows, in the draft's dtype."""
        if head.weight.shape != (self.config.vocab_size, self.config.hidden_size):
            raise ValueError(
                f"target head is {tuple(head.weight.shape)}, the draft expects "
                f"({self.config.vocab_size}, {self.config.hidden_size})"
            )
        weight, bias = head.weight, head.bias
        if self.vocab_map is not None:
            weight = weight.index_select(0, self.vocab_map.to(weight.device))
            bias = None if bias is None else bias.index_select(0, self.vocab_map.to(bias.device))
        return SharedHead(weight.to(self.dtype), None if bias is None else bias.to(self.dtype), head.softcap)

    @property
    def head_bound(self) -> bool:
        return self._head is not None

    def head(self, features: Tensor) -> Tensor:
        """features [..., H] -> draft logits [..., V_draft] (target ids via vocab_map when reduced)."""
        head = self._head
        if head is None:
            raise RuntimeError("no target head bound: call draft.bind_head(target_head(target)) first")
        if head.weight.dtype != features.dtype:
            # Cast once and keep it: a per-call cast of a 49k-row head would cost more than the matmul.
            bias = None if head.bias is None else head.bias.to(features.dtype)
            head = self._head = SharedHead(head.weight.to(features.dtype), bias, head.softcap)
        return apply_head(features, head.weight, head.bias, head.softcap)

    # ---- inference ---------------------------------------------------------------------------------------
    def new_state(self) -> DraftState:
        empty = torch.zeros(1, 0, self.config.hidden_size, dtype=self.dtype, device=self.norm.weight.device)
        return DraftState(cache=DynamicCache(), memory=self.encode_memory(empty))

    def remember(self, state: DraftState, features: Tensor) -> None:
        """Append memory entries: features [1, n, H] (target features, or draft features of tree nodes)."""
        new = self.encode_memory(features.to(self.dtype))
        state.memory = [torch.cat([old, add], dim=-2) for old, add in zip(state.memory, new)]

    def truncate(self, state: DraftState, self_length: int, memory_length: int) -> None:
        """Drop the newest entries (temporary tree nodes) so the caches hold only what came before."""
        extra = state.self_length - self_length
        assert extra >= 0 and memory_length <= state.memory_length
        if extra:
            state.cache.crop(-extra)
        state.memory = [m[..., :memory_length, :] for m in state.memory]

    def forward_step(
        self,
        state: DraftState,
        embeds: Tensor,            # [1, n, H] the target's input embeddings of the new tokens
        positions: Tensor,         # [n] long, target positions (rotary)
        allowed_self: Tensor,      # [n, self_length + n] bool: which cached/new tokens each new token attends
        allowed_memory: Tensor,    # [n, memory_length] bool: which memory entries each new token reads
    ) -> Tensor:
        """One incremental forward; the self-attention cache grows by n. Returns final features [1, n, H]."""
        n = embeds.shape[1]
        assert allowed_self.shape == (n, state.self_length + n), (allowed_self.shape, state.self_length)
        assert allowed_memory.shape == (n, state.memory_length)
        device = self.norm.weight.device
        embeds = embeds.to(device, self.dtype)
        rotary = self.rotary(embeds, positions.to(device).view(1, n))
        mask = additive_mask(allowed_self.to(device).unsqueeze(0), self.dtype)
        allowed_memory = allowed_memory.to(device).unsqueeze(0)
        _, hidden = self._blocks(embeds, rotary, mask, state.memory, allowed_memory, state.cache)
        return self.norm(hidden)

    # ---- training ----------------------------------------------------------------------------------------
    def forward_train(
        self,
        input_embeds: Tensor,                  # [B, S, H]
        target_features: Tensor,               # [B, S, H] the target's post-norm features at the same positions
        positions: Tensor,                     # [B, S] long, target positions (with gaps after compression)
        attention_mask: Tensor | None = None,  # [B, S] 1 = real token, 0 = padding
        *,
        logits_at: Tensor | None = None,       # [B, S] bool: compute logits only there ([n, V_draft])
        with_logits: bool = True,
    ) -> DraftTrainOutput:
        """Teacher-forced forward over whole sequences: position i reads target features at positions < i."""
        b, s, _ = input_embeds.shape
        valid = torch.ones(b, s, dtype=torch.bool, device=input_embeds.device)
        if attention_mask is not None:
            valid = attention_mask.bool()
        index = torch.arange(s, device=input_embeds.device)
        # A padded row sees at least itself, so no row is all-masked (its output is ignored anyway).
        allowed_self = ((index[:, None] >= index[None, :]) & valid[:, None, :]) | torch.eye(
            s, dtype=torch.bool, device=valid.device
        )
        allowed_memory = (positions[:, None, :] < positions[:, :, None]) & valid[:, None, :]
        embeds = input_embeds.to(self.dtype)
        memory = self.encode_memory(target_features.to(self.dtype))
        rotary = self.rotary(embeds, positions)
        mask = additive_mask(allowed_self, self.dtype)
        first, hidden = self._blocks(embeds, rotary, mask, memory, allowed_memory, None)
        features = self.norm(hidden)
        logits = None
        if logits_at is not None:
            logits = self.head(features[logits_at])
        elif with_logits:
            logits = self.head(features)
        return DraftTrainOutput(first_hidden=first, features=features, logits=logits)

    # ---- subclass hooks ----------------------------------------------------------------------------------
    def encode_memory(self, features: Tensor) -> list[Tensor]:
        """features [B, T, H] -> memory tensors, each [B, ..., T, X]."""
        raise NotImplementedError

    def _blocks(
        self,
        embeds: Tensor,                        # [B, N, H]
        rotary: tuple[Tensor, Tensor],         # cos, sin [B, N, D]
        self_mask: Tensor,                     # [B, 1, N, K] additive
        memory: list[Tensor],                  # encoded memory, T entries
        allowed_memory: Tensor,                # [B, N, T] bool
        cache: DynamicCache | None,
    ) -> tuple[Tensor, Tensor]:
        """-> (first block output, last block output), both [B, N, H], before the final norm."""
        raise NotImplementedError


def num_parameters(model: nn.Module) -> int:
    """Parameters of the draft itself (the shared embedding and head are not among them)."""
    return sum(p.numel() for p in model.parameters())
