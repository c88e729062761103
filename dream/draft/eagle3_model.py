"""The EAGLE-3-style baseline draft: fused low / middle / high target layers, then one 2H-input decoder layer.

For a committed token the memory entry is three target layer states concatenated, [low ; mid ; high] (3H,
`config.aux_layers`: the residual streams entering those layers), fused by `fc` (3H -> H, no bias). For a
drafted position (a tree node, a later step of training-time test) the entry is the draft's own last-layer
output BEFORE the final norm, H wide, used as it is: that is what EAGLE-3 feeds back, and it lives in the
same residual stream as the fused target states. As in EAGLE-2 a query reads exactly one entry, the latest
it may see (the previous position's), a zero vector when it sees none.

The decoder layer is EAGLE-3's first layer, as vLLM's `llama_eagle3` builds it: attention reads
[input_layernorm(embedding) ; hidden_norm(fused feature)] (2H) and writes H; the residual stream starts
from the fused feature; then the usual post-attention norm and MLP. Then the final norm and the target's
head (restricted to `draft_vocab_size` rows when reduced). Weight names follow EAGLE-3's checkpoints
(`fc`, `midlayer.*`, `norm`), so a vLLM port can map them one to one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from dream.draft.base import DraftModel, DraftOutput
from dream.draft.blocks import llama_config
from dream.draft.config import DraftConfig
from dream.draft.eagle_model import latest_visible


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer: attention over [normed embedding ; normed feature], residual = the feature."""

    def __init__(self, cfg: DraftConfig) -> None:
        super().__init__()
        config = llama_config(cfg)
        width = cfg.hidden_size
        self.input_layernorm = LlamaRMSNorm(width, eps=cfg.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(width, eps=cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx=0)
        # Stock attention with its query/key/value projections widened to read the 2H concatenation; the
        # rest (rotary, GQA, cache, sdpa) is transformers' own.
        for name in ("q_proj", "k_proj", "v_proj"):
            stock = getattr(self.self_attn, name)
            setattr(self.self_attn, name, nn.Linear(2 * width, stock.out_features, bias=stock.bias is not None))
        self.post_attention_layernorm = LlamaRMSNorm(width, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, embeds: Tensor, feature: Tensor, rotary: tuple[Tensor, Tensor], self_mask: Tensor,
                cache: DynamicCache | None) -> Tensor:
        """embeds, feature [B, N, H]; self_mask [B, 1, N, K] additive -> [B, N, H] (before the final norm)."""
        both = torch.cat([self.input_layernorm(embeds), self.hidden_norm(feature)], dim=-1)
        attn, _ = self.self_attn(both, position_embeddings=rotary, attention_mask=self_mask, past_key_values=cache)
        hidden = feature + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Draft(DraftModel):
    def __init__(self, cfg: DraftConfig) -> None:
        if cfg.architecture != "eagle3":
            raise ValueError(f"Eagle3Draft needs architecture='eagle3', got {cfg.architecture!r}")
        super().__init__(cfg)
        self.fc = nn.Linear(len(cfg.aux_layers) * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.reset_parameters()

    @property
    def target_layers(self) -> tuple[int, ...]:
        # The state entering layer i is the output of layer i - 1 (aux layers are >= 1).
        return tuple(layer - 1 for layer in self.config.aux_layers)

    def target_entries(self, features: Tensor, layer_outputs: Tensor | None) -> Tensor:
        if layer_outputs is None or layer_outputs.shape[-2] != len(self.config.aux_layers):
            raise ValueError(f"an eagle3 draft reads the target's layer outputs {self.target_layers}: "
                             f"[..., {len(self.config.aux_layers)}, H], got "
                             f"{None if layer_outputs is None else tuple(layer_outputs.shape)}")
        return layer_outputs.flatten(-2)                                        # [..., 3H]: low, mid, high

    def feedback(self, output: DraftOutput) -> Tensor:
        return output.hidden

    def encode_memory(self, entries: Tensor) -> list[Tensor]:
        # Target entries are 3H wide and get fused; the draft's own feedback is already H wide.
        if entries.shape[-1] == self.fc.in_features:
            return [self.fc(entries)]
        assert entries.shape[-1] == self.config.hidden_size, entries.shape
        return [entries]

    def _blocks(
        self,
        embeds: Tensor,
        rotary: tuple[Tensor, Tensor],
        self_mask: Tensor,
        memory: list[Tensor],
        allowed_memory: Tensor,
        cache: DynamicCache | None,
    ) -> tuple[Tensor, Tensor]:
        hidden = self.midlayer(embeds, latest_visible(memory[0], allowed_memory), rotary, self_mask, cache)
        return hidden, hidden
