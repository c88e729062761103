"""What every draft shares: rotary positions, the final norm, the shared head, inference state, training forward.

A draft reads two streams. The INPUT stream is the target's merged input embeddings (text embeddings, and
projected visual features at image positions). The MEMORY stream is features of earlier positions: for
committed tokens what the target computed (`target_entries`: its post-norm final-layer features, or for
EAGLE-3 three of its layer states), and for drafted positions (tree ancestors while a tree grows, earlier
steps of training-time test) what the draft itself computed there (`feedback`). Every query position i may
read memory only from positions strictly before i (EAGLE's "feature i-1 + token i -> feature i"); the
caller states exactly which entries through a boolean mask, so one code path (`forward_masked`) serves
teacher-forced training, training-time test, incremental decoding and tree expansion.
Subclasses decide how memory is encoded and read (`encode_memory`, `_blocks`).
"""

from __future__ import annotations

import dataclasses
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
class DraftOutput:
    first_hidden: Tensor       # [B, S, H] output of the first block (supervised by the target's layer-l* output)
    hidden: Tensor             # [B, S, H] output of the last block, before the final norm
    features: Tensor           # [B, S, H] final feature after the final norm: what the head reads
    logits: Tensor | None      # [B, S, V_draft]; [n, V_draft] at the `logits_at` tokens; None if not asked


def teacher_forcing_masks(positions: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """positions [B, S] long, attention_mask [B, S] (1 = real token) -> (allowed_self [B, S, S],
    allowed_memory [B, S, S]) bool: causal self-attention, and memory strictly before each position."""
    b, s = positions.shape
    device = positions.device
    valid = torch.ones(b, s, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    index = torch.arange(s, device=device)
    causal = index[:, None] >= index[None, :]
    # A padded row sees at least itself, so no row is all-masked (its output is ignored anyway).
    allowed_self = (causal & valid[:, None, :]) | torch.eye(s, dtype=torch.bool, device=device)
    allowed_memory = (positions[:, None, :] < positions[:, :, None]) & valid[:, None, :]
    return allowed_self, allowed_memory


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

    # ---- memory -------------------------------------------------------------------------------------------
    @property
    def target_layers(self) -> tuple[int, ...]:
        """Target layer OUTPUTS (0-based) `target_entries` reads besides the features; none by default."""
        return ()

    def target_entries(self, features: Tensor, layer_outputs: Tensor | None) -> Tensor:
        """The memory entries of committed tokens from what the target computed there: features [..., H]
        post-norm; layer_outputs [..., len(target_layers), H]. -> [..., W]; by default the features."""
        return features

    def feedback(self, output: DraftOutput) -> Tensor:
        """What drafted positions leave in memory for the positions after them: by default their final
        features (the target's entries are post-norm features too). -> [B, N, H]"""
        return output.features

    # ---- inference ---------------------------------------------------------------------------------------
    def new_state(self) -> DraftState:
        empty = torch.zeros(1, 0, self.config.hidden_size, dtype=self.dtype, device=self.norm.weight.device)
        return DraftState(cache=DynamicCache(), memory=self.encode_memory(empty))

    def remember(self, state: DraftState, entries: Tensor) -> None:
        """Append memory entries [1, n, W]: target entries of committed tokens, or feedback of tree nodes."""
        new = self.encode_memory(entries.to(self.dtype))
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
    ) -> DraftOutput:
        """One incremental forward; the self-attention cache grows by n. Outputs are [1, n, H], no logits."""
        n = embeds.shape[1]
        assert allowed_self.shape == (n, state.self_length + n), (allowed_self.shape, state.self_length)
        assert allowed_memory.shape == (n, state.memory_length)
        device = self.norm.weight.device
        return self.forward_masked(embeds, positions.to(device).view(1, n), allowed_self.to(device).unsqueeze(0),
                                   state.memory, allowed_memory.to(device).unsqueeze(0), state.cache)

    def forward_masked(
        self,
        embeds: Tensor,            # [B, n, H] input embeddings of the new tokens
        positions: Tensor,         # [B, n] long, target positions (rotary)
        allowed_self: Tensor,      # [B, n, K] bool over the cache's entries then the n new tokens
        memory: list[Tensor],      # encoded memory (encode_memory), T entries
        allowed_memory: Tensor,    # [B, n, T] bool
        cache: DynamicCache | None,
    ) -> DraftOutput:
        """The one forward under explicit masks; a given cache grows by n. No logits."""
        embeds = embeds.to(self.norm.weight.device, self.dtype)
        rotary = self.rotary(embeds, positions)
        mask = additive_mask(allowed_self, self.dtype)
        first, hidden = self._blocks(embeds, rotary, mask, memory, allowed_memory, cache)
        return DraftOutput(first_hidden=first, hidden=hidden, features=self.norm(hidden), logits=None)

    # ---- training ----------------------------------------------------------------------------------------
    def forward_train(
        self,
        input_embeds: Tensor,                  # [B, S, H]
        target_memory: Tensor,                 # [B, S, W] the target's entries at the same positions (target_entries)
        positions: Tensor,                     # [B, S] long, target positions (with gaps after compression)
        attention_mask: Tensor | None = None,  # [B, S] 1 = real token, 0 = padding
        *,
        logits_at: Tensor | None = None,       # [B, S] bool: compute logits only there ([n, V_draft])
        with_logits: bool = True,
    ) -> DraftOutput:
        """Teacher-forced forward over whole sequences: position i reads target entries at positions < i."""
        allowed_self, allowed_memory = teacher_forcing_masks(positions, attention_mask)
        memory = self.encode_memory(target_memory.to(self.dtype))
        out = self.forward_masked(input_embeds, positions, allowed_self, memory, allowed_memory, None)
        logits = None
        if logits_at is not None:
            logits = self.head(out.features[logits_at])
        elif with_logits:
            logits = self.head(out.features)
        return dataclasses.replace(out, logits=logits)

    # ---- subclass hooks ----------------------------------------------------------------------------------
    def encode_memory(self, entries: Tensor) -> list[Tensor]:
        """entries [B, T, W] (target entries or feedback) -> memory tensors, each [B, ..., T, X]."""
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
