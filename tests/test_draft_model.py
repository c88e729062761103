"""Draft models: the cross-attention block (identity at init, equal to Mllama's), memory masking
(a sibling's feature is invisible, an ancestor's is not), incremental decoding equal to the teacher-forced
forward, the reduced-vocabulary head, EAGLE-3's fused target entries, config strictness, and parameter
counts at SmolLM2's size."""

from __future__ import annotations

import pytest
import torch
from fixtures import open_draft
from transformers import LlamaConfig, MllamaTextConfig
from transformers.models.mllama.modeling_mllama import MllamaCrossAttentionDecoderLayer

from dream.draft import (
    CrossAttentionBlock,
    DraftConfig,
    DreamDraft,
    Eagle2Draft,
    Eagle3Draft,
    SharedHead,
    build_draft,
    frequent_vocab_map,
    num_parameters,
)
from dream.draft.blocks import additive_mask

H, V = 32, 50
ARCHITECTURES = ("dream", "eagle2", "eagle3")


def tiny_config(architecture: str = "dream", **over) -> DraftConfig:
    base = dict(hidden_size=H, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                vocab_size=V)
    if architecture != "dream":
        base["blocks"] = ("self",)
    if architecture == "eagle3":
        base["aux_layers"] = (1, 2, 3)
    base.update(over)
    return DraftConfig(architecture=architecture, **base)


def tiny_draft(architecture: str = "dream", seed: int = 0, **over):
    """A draft with weights large enough (and gates open) that every input visibly matters."""
    torch.manual_seed(seed)
    draft = open_draft(build_draft(tiny_config(architecture, **over)), std=0.2)
    draft.bind_head(SharedHead(torch.randn(V, H), None, None))
    return draft.eval()


def entry_width(draft) -> int:
    """Width of a committed token's memory entry: H, or EAGLE-3's three fused layer states."""
    return H * max(len(draft.target_layers), 1)


def test_cross_attention_block_is_identity_at_init():
    torch.manual_seed(0)
    block = CrossAttentionBlock(tiny_config())
    hidden, memory = torch.randn(1, 5, H), torch.randn(1, 7, H)
    keys, values = block.cross_attn.encode(memory)
    allowed = torch.ones(1, 5, 7, dtype=torch.bool)
    assert torch.equal(block(hidden, keys, values, allowed), hidden)
    assert DreamDraft(tiny_config()).blocks[1].cross_attn_attn_gate.item() == 0.0


def test_cross_attention_block_equals_mllama_layer():
    torch.manual_seed(0)
    block = CrossAttentionBlock(tiny_config())
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    config = MllamaTextConfig(hidden_size=H, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                              rms_norm_eps=1e-6, vocab_size=V)
    config._attn_implementation = "sdpa"
    mllama = MllamaCrossAttentionDecoderLayer(config, layer_idx=0)
    mllama.load_state_dict(block.state_dict(), strict=True)   # same parameter names and shapes
    hidden, memory = torch.randn(1, 5, H), torch.randn(1, 7, H)
    allowed = torch.rand(1, 5, 7) > 0.4
    allowed[..., 0] = True
    ours = block(hidden, *block.cross_attn.encode(memory), allowed)
    reference = mllama(hidden, cross_attention_states=memory,
                       cross_attention_mask=additive_mask(allowed, torch.float32),
                       attention_mask=None, full_text_row_masked_out_mask=None)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_row_without_memory_is_left_unchanged():
    torch.manual_seed(0)
    block = CrossAttentionBlock(tiny_config())
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    hidden, memory = torch.randn(1, 2, H), torch.randn(1, 3, H)
    allowed = torch.tensor([[[False, False, False], [True, False, False]]])
    out = block(hidden, *block.cross_attn.encode(memory), allowed)
    assert torch.equal(out[0, 0], hidden[0, 0])
    assert not torch.allclose(out[0, 1], hidden[0, 1])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_memory_mask_hides_siblings_and_shows_ancestors(architecture):
    """Memory = [committed feature, parent's feature, sibling's feature]; the node may read the first two."""
    draft = tiny_draft(architecture)
    embeds = torch.randn(1, 3, H)

    def node_output(memory: torch.Tensor) -> torch.Tensor:
        state = draft.new_state()
        draft.remember(state, memory)
        allowed_self = torch.ones(1, 1, dtype=torch.bool)
        allowed_memory = torch.tensor([[True, True, False]])
        return draft.forward_step(state, embeds[:, :1], torch.tensor([5]), allowed_self, allowed_memory).features

    memory = torch.randn(1, 3, entry_width(draft))
    base = node_output(memory)
    sibling = memory.clone()
    sibling[0, 2] += 3.0
    parent = memory.clone()
    parent[0, 1] += 3.0
    assert torch.equal(node_output(sibling), base)
    assert not torch.allclose(node_output(parent), base, atol=1e-3)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_incremental_decoding_equals_teacher_forced_forward(architecture):
    """Feeding tokens one, two, then four at a time with the cache equals one forward_train over them all,
    including rotary positions with gaps (a compressed prompt)."""
    draft = tiny_draft(architecture)
    s = 7
    embeds, features = torch.randn(1, s, H), torch.randn(1, s, entry_width(draft))
    positions = torch.tensor([[0, 1, 4, 5, 6, 7, 8]])
    full = draft.forward_train(embeds, features, positions)
    state = draft.new_state()
    outputs, start = [], 0
    for n in (1, 2, 4):
        stop = start + n
        # Memory: every feature some new token may read (those strictly before the chunk's last token).
        draft.remember(state, features[:, state.memory_length:stop - 1])
        pos = positions[0, start:stop]
        allowed_self = torch.ones(n, stop, dtype=torch.bool).tril(diagonal=start)
        allowed_memory = positions[0, :stop - 1][None, :] < pos[:, None]
        outputs.append(draft.forward_step(state, embeds[:, start:stop], pos, allowed_self, allowed_memory).features)
        start = stop
    torch.testing.assert_close(torch.cat(outputs, 1), full.features, rtol=0, atol=1e-5)
    torch.testing.assert_close(draft.head(full.features), full.logits)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_padding_does_not_change_real_tokens(architecture):
    draft = tiny_draft(architecture)
    width = entry_width(draft)
    embeds, features = torch.randn(1, 5, H), torch.randn(1, 5, width)
    positions = torch.arange(5)[None]
    alone = draft.forward_train(embeds, features, positions)
    padded = draft.forward_train(
        torch.cat([embeds, torch.randn(1, 3, H)], 1), torch.cat([features, torch.randn(1, 3, width)], 1),
        torch.arange(8)[None], torch.tensor([[1] * 5 + [0] * 3]),
    )
    torch.testing.assert_close(padded.features[:, :5], alone.features, rtol=0, atol=1e-5)
    torch.testing.assert_close(padded.first_hidden[:, :5], alone.first_hidden, rtol=0, atol=1e-5)


def test_position_reads_only_earlier_target_features():
    """forward_train's alignment: changing the feature at position i changes outputs after i, not at i."""
    draft = tiny_draft()
    embeds, features = torch.randn(1, 6, H), torch.randn(1, 6, H)
    positions = torch.arange(6)[None]
    base = draft.forward_train(embeds, features, positions).features
    changed = features.clone()
    changed[0, 3] += 2.0
    out = draft.forward_train(embeds, changed, positions).features
    torch.testing.assert_close(out[:, :4], base[:, :4], rtol=0, atol=0)
    assert not torch.allclose(out[:, 4:], base[:, 4:], atol=1e-3)


def test_reduced_vocabulary_head_is_rows_of_target_head():
    draft = tiny_draft(draft_vocab_size=10)
    counts = torch.arange(V, dtype=torch.float)            # higher ids are more frequent
    vocab_map = frequent_vocab_map(counts, 10, required=[0])
    assert vocab_map.tolist() == [0] + list(range(41, 50))
    draft.set_vocab_map(vocab_map)
    weight = torch.randn(V, H)
    draft.bind_head(SharedHead(weight, None, 30.0))
    features = torch.randn(3, H)
    full = torch.tanh(features @ weight.T / 30.0) * 30.0
    torch.testing.assert_close(draft.head(features), full[:, vocab_map])
    assert "vocab_map" in draft.state_dict()
    with pytest.raises(ValueError, match="distinct"):
        draft.set_vocab_map(torch.zeros(10, dtype=torch.long))


def test_shared_head_is_not_a_parameter_and_not_saved():
    draft = tiny_draft()
    assert all(p.shape != (V, H) for p in draft.parameters())
    assert not any("head" in name for name in draft.state_dict())


def test_eagle3_fuses_three_target_layers_and_feeds_back_its_hidden_state():
    draft = tiny_draft("eagle3")
    assert draft.target_layers == (0, 1, 2)            # the outputs of the layers before aux layers 1, 2, 3
    layers = torch.randn(5, 3, H)
    entries = draft.target_entries(torch.randn(5, H), layers)
    assert torch.equal(entries, torch.cat([layers[:, 0], layers[:, 1], layers[:, 2]], dim=-1))
    with pytest.raises(ValueError, match="layer outputs"):
        draft.target_entries(torch.randn(5, H), None)
    # A committed token's entry is fused by fc; a drafted position's (H wide) is read as it is.
    assert torch.equal(draft.encode_memory(entries[None])[0], draft.fc(entries[None]))
    feedback = torch.randn(1, 2, H)
    assert torch.equal(draft.encode_memory(feedback)[0], feedback)
    out = draft.forward_train(torch.randn(1, 4, H), torch.randn(1, 4, 3 * H), torch.arange(4)[None])
    assert torch.equal(draft.feedback(out), out.hidden) and torch.equal(out.features, draft.norm(out.hidden))
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=32)
    eagle = DraftConfig.from_text_config(text, "eagle3")
    assert (eagle.aux_layers, eagle.blocks, eagle.keep_ratio) == ((2, 16, 29), ("self",), 1.0)
    assert DraftConfig.from_dict(eagle.to_dict()) == eagle
    with pytest.raises(ValueError, match="3 target layers"):
        tiny_config("eagle3", aux_layers=(1, 2))
    with pytest.raises(ValueError, match="eagle3 only"):
        tiny_config("dream", aux_layers=(1, 2, 3))


def test_config_from_target_sizes_and_strictness():
    text = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                       vocab_size=49152, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    cfg = DraftConfig.from_text_config(text)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (576, 9, 3, 64)
    assert cfg.blocks == ("self", "cross", "self") and cfg.keep_ratio == 0.75 and cfg.rope_theta == 100000.0
    eagle = DraftConfig.from_text_config(text, "eagle2")
    assert eagle.blocks == ("self",) and eagle.keep_ratio == 1.0
    assert DraftConfig.from_text_config(text, blocks=("self", "cross")).blocks == ("self", "cross")
    with pytest.raises(ValueError, match="unknown"):
        DraftConfig.from_text_config(text, num_blocks=3)
    with pytest.raises(ValueError, match="unknown"):
        DraftConfig.from_dict({**cfg.to_dict(), "extra": 1})
    assert DraftConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="keep_ratio"):
        DraftConfig.from_text_config(text, keep_ratio=0.0)


def test_parameter_counts_at_smollm2_size():
    text = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                       vocab_size=49152)
    with torch.device("meta"):
        dream = DreamDraft(DraftConfig.from_text_config(text))
        eagle = Eagle2Draft(DraftConfig.from_text_config(text, "eagle2"))
        eagle3 = Eagle3Draft(DraftConfig.from_text_config(text, "eagle3"))
    self_block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576         # attention + MLP + 2 norms
    cross_block = self_block + 2 * 64 + 2                                            # + q/k head norms, gates
    assert num_parameters(dream) == 2 * self_block + cross_block + 576 == 10_620_994
    assert num_parameters(eagle) == (2 * 576 * 576 + 576) + self_block + 576 == 4_204_800
    # EAGLE-3: fc 3H -> H without bias; q/k/v read 2H; three norms in the layer (embedding, feature, MLP).
    eagle3_layer = 1152 * 576 + 2 * 1152 * 192 + 576 * 576 + 3 * 576 * 1536 + 3 * 576
    assert num_parameters(eagle3) == 3 * 576 * 576 + eagle3_layer + 576 == 5_089_536
