"""Building blocks of the drafts: stock Llama pieces plus a gated cross-attention block.

The self-attention blocks are transformers' own `LlamaDecoderLayer`s (built from `llama_config`), so the
draft inherits their rotary, GQA and cache handling. The cross-attention block follows Mllama
(Llama-3.2-Vision) exactly, parameter names included, so its state dict loads into
`MllamaCrossAttentionDecoderLayer`; it differs only in taking pre-computed keys/values (cached incrementally
by the caller) and a boolean memory mask, and in leaving rows that see no memory untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from dream.draft.config import DraftConfig


def llama_config(cfg: DraftConfig) -> LlamaConfig:
    """The LlamaConfig the stock layers are built from (sizes only; no embedding table is created)."""
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_self_blocks,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = cfg.attn_implementation
    return config


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """bool [..., N, K] (True = may attend) -> float [..., 1, N, K] of 0 / finfo.min.

    Float because eager attention ADDS the mask (a bool mask would be silently wrong there), and finfo.min
    rather than -inf so a row with nothing visible gives a finite (ignored) result instead of NaN.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(-3)


class CrossAttention(nn.Module):
    """Queries from the draft, keys/values from (target or draft) features; no rotary positions."""

    def __init__(self, cfg: DraftConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = LlamaRMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = LlamaRMSNorm(self.head_dim, eps=cfg.rms_norm_eps)

    def encode(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """features [B, T, H] -> keys, values [B, H_kv, T, D]; computed once per memory entry and cached."""
        b, t, _ = memory.shape
        keys = self.k_proj(memory).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        values = self.v_proj(memory).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return self.k_norm(keys), values

    def forward(self, hidden: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """hidden [B, N, H] (already normed), keys/values [B, H_kv, T, D], mask float [B, 1, N, T]."""
        b, n, _ = hidden.shape
        query = self.q_norm(self.q_proj(hidden).view(b, n, self.num_heads, self.head_dim).transpose(1, 2))
        groups = self.num_heads // self.num_kv_heads
        # Repeating K/V heads is faster than sdpa's enable_gqa on CPU (measured, see notes/offline.md).
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttentionBlock(nn.Module):
    """h + tanh(g_attn) * CrossAttn(norm(h)), then h + tanh(g_mlp) * MLP(norm(h)); gates start at 0 (identity)."""

    def __init__(self, cfg: DraftConfig) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(cfg)
        self.input_layernorm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp = LlamaMLP(llama_config(cfg))
        self.post_attention_layernorm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: Tensor, keys: Tensor, values: Tensor, allowed: Tensor) -> Tensor:
        """hidden [B, N, H]; keys/values [B, H_kv, T, D]; allowed bool [B, N, T] (True = may attend)."""
        if keys.shape[-2] == 0:
            return hidden
        # Rows that see no memory (the first position of a sequence) keep their input, as Mllama's
        # full_text_row_masked_out_mask does, instead of averaging over masked keys.
        sees_any = allowed.any(-1, keepdim=True).to(hidden.dtype)                     # [B, N, 1]
        attn = self.cross_attn(self.input_layernorm(hidden), keys, values, additive_mask(allowed, hidden.dtype))
        hidden = hidden + self.cross_attn_attn_gate.tanh() * (attn * sees_any)
        mlp = self.mlp(self.post_attention_layernorm(hidden))
        return hidden + self.cross_attn_mlp_gate.tanh() * (mlp * sees_any)
