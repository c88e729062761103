"""The DREAM and EAGLE-2-style drafts as a vLLM model, run by vLLM's own EAGLE proposer (method "eagle").

How the harness's two streams map onto vLLM's EAGLE interface (vllm/v1/spec_decode/llm_base_proposer.py):
vLLM feeds the draft one row per KV slot, shifted by one: the row in slot p carries the token of position
p + 1 (`input_ids`, or `inputs_embeds` with the target's image embeddings at visual positions) and the
feature of position p (`hidden_states`: the target's post-norm final features for verified tokens, and
our own returned features for the draft's speculative steps). The harness's draft at position i reads
memory strictly before i, i.e. features 0..i-1; for the row in slot p that is features 0..p, exactly the
rows in slots <= p. So the cross-attention is an ordinary causal vLLM `Attention` layer whose keys and
values are computed from `hidden_states`: each row writes its feature's K/V into its own slot, and reads
every slot up to its own. No rotary there (as in the harness); per-head q/k RMSNorm and tanh gates kept.

Self-attention blocks are vLLM's LlamaDecoderLayer (paged KV cache, rotary). Rotary positions are vLLM's
(slot p, one less than the harness's position p + 1 for the same token); attention depends only on
position differences, so this changes nothing but rounding.

One difference remains: the first prompt token (position 0) never gets a row, so the draft's
self-attention does not see it; the harness's draft does (as an attention sink). docs/vllm.md measures
what that costs in acceptance. Visual-token compression is not applied here (every visual token is kept):
vLLM's target does not expose the last-layer attention the selection needs.

The target's embedding and LM head are shared by vLLM's proposer (dream.serving.draft_io); the reduced
draft vocabulary is those rows of the target head, scattered back to target ids for sampling. The EAGLE-3
draft goes through vLLM's EAGLE-3 path instead (dream.serving.eagle3_draft).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import LlamaConfig
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMultiModalEmbeddings
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaMLP
from vllm.model_executor.models.utils import get_draft_quant_config, maybe_prefix

from dream.draft.blocks import llama_config
from dream.draft.config import DraftConfig
from dream.serving.draft_io import SharedEmbedding, TargetSharedIO
from dream.serving.export import read_exported_config

# Checkpoint tensor name fragment -> (vLLM parameter fragment, shard id) for vLLM's fused projections.
_STACKED = {
    ".self_attn.q_proj.": (".self_attn.qkv_proj.", "q"),
    ".self_attn.k_proj.": (".self_attn.qkv_proj.", "k"),
    ".self_attn.v_proj.": (".self_attn.qkv_proj.", "v"),
    ".mlp.gate_proj.": (".mlp.gate_up_proj.", 0),
    ".mlp.up_proj.": (".mlp.gate_up_proj.", 1),
    ".cross_attn.k_proj.": (".cross_attn.kv_proj.", 0),
    ".cross_attn.v_proj.": (".cross_attn.kv_proj.", 1),
}


def layer_config(cfg: DraftConfig) -> LlamaConfig:
    """The LlamaConfig vLLM's decoder layers are built from: the harness's (dream.draft.blocks), with every
    block counted (vLLM numbers its layers over all blocks, cross-attention included)."""
    config = llama_config(cfg)
    config.num_hidden_layers = len(cfg.blocks)
    return config


class _DraftDecoderLayer(LlamaDecoderLayer):
    """vLLM's Llama block with the draft's own quantization config; returns the block output (h + residual)."""

    def get_quant_config(self, vllm_config: VllmConfig):
        return get_draft_quant_config(vllm_config)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        out, residual = super().forward(positions, hidden, None)
        return out + residual


class CrossAttention(nn.Module):
    """Queries from the draft's hidden rows, keys/values from the memory rows; no rotary (dream.draft.blocks).

    The keys/values of each row go into this layer's own paged KV cache at the row's slot; the causal
    attention over slots is the harness's "memory strictly before the position" rule (module docstring).
    """

    def __init__(self, cfg: DraftConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        if cfg.num_attention_heads % tp or cfg.num_key_value_heads % tp:
            raise ValueError(
                f"the draft's cross-attention needs heads ({cfg.num_attention_heads}) and KV heads "
                f"({cfg.num_key_value_heads}) divisible by the tensor-parallel size {tp}"
            )
        quant = get_draft_quant_config(vllm_config)
        self.head_dim = cfg.head_dim
        kv_width = cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = ColumnParallelLinear(cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, bias=False,
                                           quant_config=quant, prefix=f"{prefix}.q_proj")
        self.kv_proj = MergedColumnParallelLinear(cfg.hidden_size, [kv_width, kv_width], bias=False,
                                                  quant_config=quant, prefix=f"{prefix}.kv_proj")
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=False,
                                        quant_config=quant, prefix=f"{prefix}.o_proj")
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.rms_norm_eps)
        self.attn = Attention(cfg.num_attention_heads // tp, cfg.head_dim, cfg.head_dim**-0.5,
                              num_kv_heads=cfg.num_key_value_heads // tp, cache_config=vllm_config.cache_config,
                              quant_config=quant, prefix=f"{prefix}.attn")

    def _per_head_norm(self, x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """[T, heads * D] -> RMSNorm over each head's D values -> [T, heads * D]."""
        t = x.shape[0]
        return norm(x.view(t, -1, self.head_dim)).view(t, -1)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """hidden (already normed), memory [T, H] -> [T, H]."""
        query, _ = self.q_proj(hidden)
        kv, _ = self.kv_proj(memory)
        keys, values = kv.chunk(2, dim=-1)
        out = self.attn(self._per_head_norm(query, self.q_norm), self._per_head_norm(keys, self.k_norm), values)
        out, _ = self.o_proj(out)
        return out


class GatedCrossAttentionBlock(nn.Module):
    """h + tanh(g_attn) * CrossAttn(norm(h), memory), then h + tanh(g_mlp) * MLP(norm(h)) (dream.draft.blocks).

    Every row sees at least its own slot's memory, so the harness's "no memory: leave the row unchanged"
    case (the first prompt token, which gets no row here) never arises.
    """

    def __init__(self, cfg: DraftConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(cfg, vllm_config, f"{prefix}.cross_attn")
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act,
                            quant_config=get_draft_quant_config(vllm_config), prefix=f"{prefix}.mlp")
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """hidden, memory [T, H] (memory row t: the feature of slot t, see the module docstring) -> [T, H]."""
        attn = self.cross_attn(self.input_layernorm(hidden), memory.to(hidden.dtype))
        hidden = hidden + self.cross_attn_attn_gate.tanh() * attn
        return hidden + self.cross_attn_mlp_gate.tanh() * self.mlp(self.post_attention_layernorm(hidden))


@support_torch_compile(dynamic_arg_dims={"embeds": 0, "positions": -1, "memory": 0})
class DreamDraftModel(nn.Module):
    """The draft's layers, named as in the dream checkpoint (blocks.i.*, block.*, fc.*, norm, vocab_map).

    Compiled by vLLM like its own EAGLE heads (skipped with enforce_eager), with the token count dynamic.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", cfg: DraftConfig, first_layer: int) -> None:
        super().__init__()
        self.embed_tokens: nn.Module = SharedEmbedding()
        config = layer_config(cfg)
        self.fc: ReplicatedLinear | None = None

        def self_block(i: int) -> _DraftDecoderLayer:
            # Attention layers are found by their prefix; each needs one number, distinct from the target's.
            return _DraftDecoderLayer(vllm_config, prefix=maybe_prefix(prefix, f"layers.{first_layer + i}"),
                                      config=config)

        if cfg.architecture == "eagle2":
            self.fc = ReplicatedLinear(2 * cfg.hidden_size, cfg.hidden_size, bias=True,
                                       quant_config=get_draft_quant_config(vllm_config),
                                       prefix=maybe_prefix(prefix, "fc"))
            self.block = self_block(0)
            self._blocks: list[nn.Module] = [self.block]
        else:
            assert cfg.architecture == "dream", cfg.architecture       # EagleDreamDraft refuses the others
            self.blocks = nn.ModuleList(
                GatedCrossAttentionBlock(cfg, vllm_config, maybe_prefix(prefix, f"layers.{first_layer + i}"))
                if kind == "cross" else self_block(i)
                for i, kind in enumerate(cfg.blocks)
            )
            self._blocks = list(self.blocks)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        draft_vocab = cfg.draft_vocab_size or cfg.vocab_size
        self.register_buffer("vocab_map", torch.arange(draft_vocab), persistent=True)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """embeds, memory [T, H]; positions [T] -> final features [T, H] (post-norm: what the head reads)."""
        hidden = embeds
        if self.fc is not None:
            hidden, _ = self.fc(torch.cat([embeds, memory.to(embeds.dtype)], dim=-1))
        for block in self._blocks:
            hidden = block(positions, hidden, memory)
        return self.norm(hidden)


class EagleDreamDraft(TargetSharedIO, nn.Module, SupportsMultiModalEmbeddings):
    """vLLM draft model for a dream or eagle2 checkpoint exported by `dream export` (dream.serving.export);
    inputs and head are the target's (dream.serving.draft_io)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        speculative_config = vllm_config.speculative_config
        assert speculative_config is not None and speculative_config.draft_model_config is not None
        self.config = speculative_config.draft_model_config.hf_config
        exported = read_exported_config(self.config)
        if exported.draft.architecture not in ("dream", "eagle2"):
            # An eagle3 export names Eagle3DreamDraft; reaching here means its config.json was edited.
            raise ValueError(f"{exported.source}: EagleDreamDraft builds dream and eagle2 drafts, "
                             f"not {exported.draft.architecture}")
        self.draft_config: DraftConfig = exported.draft
        first_layer = vllm_config.model_config.get_total_num_hidden_layers()
        self.model = DreamDraftModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"),
                                     cfg=exported.draft, first_layer=first_layer)
        self.init_target_io(vllm_config, exported)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features for the head, features fed back as the next step's memory): the same tensor."""
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.embed_input_ids(input_ids)
        features = self.model(inputs_embeds, self.draft_positions(positions), hidden_states)
        return features, features

    # ---- weights -----------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the dream checkpoint's tensors (names as saved by dream.draft.checkpoint)."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "vocab_map":
                self.model.vocab_map.copy_(tensor.to(self.model.vocab_map.device))
                continue
            full = f"model.{name}"
            for old, (new, shard) in _STACKED.items():
                if old in full:
                    full = full.replace(old, new)
                    param = params[full]
                    param.weight_loader(param, tensor, shard)
                    break
            else:
                if full not in params:
                    raise ValueError(f"unexpected tensor {name!r} in the draft checkpoint")
                param = params[full]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(full)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"the draft checkpoint lacks tensors for {missing}")
        return loaded

