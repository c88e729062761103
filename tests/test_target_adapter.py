"""Tree verification and commit on every family: each node's logits equal a fresh plain forward over the
prompt (image included) + committed tokens + that node's root-to-node path."""

from __future__ import annotations

import pytest
import torch
from fixtures import (
    FAMILIES,
    GEMMA3_WINDOW,
    VLM_FAMILIES,
    ancestors_from_parents,
    depths_from_parents,
    extend_model_kwargs,
    reference_logits,
    stock_model,
    tiny_image,
)
from transformers.masking_utils import causal_mask_function

from dream.target import VERIFY_MODES, exact, masks
from dream.target import attention as attention_module

ATOL = 1e-5
CHAIN = [-1, 0, 1, 2]
BRANCHING = [-1, 0, 0, 1, 1, 2, 3, 3, 5]  # leaves 4, 6, 7, 8 at depths 2, 3, 3, 3
ACCEPTED_LEAVES = [8, 4, 7]  # paths 0-2-5-8, 0-1-4, 0-1-3-7: non-contiguous node indices


@pytest.fixture(scope="module")
def stock(tiny_target_path):
    """stock(family) -> the same checkpoint loaded plainly, with default attention."""
    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = stock_model(tiny_target_path(family))
        return loaded[family]

    return get


def build_prompt(adapter, family: str, text: str = "Describe it."):
    images = [tiny_image(0, (48, 32))] if family in VLM_FAMILIES else []
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
    return adapter.build_inputs([{"role": "user", "content": content}], images)


def random_text_tokens(adapter, n: int, gen: torch.Generator) -> torch.Tensor:
    # The fixture tokenizers put the 256 byte tokens last: no special or image token gets drawn.
    return torch.randint(adapter.vocab_size - 256, adapter.vocab_size, (n,), generator=gen)


def path_to(ancestors: torch.Tensor, node: int) -> torch.Tensor:
    return ancestors[node].nonzero().flatten()  # root first: ancestors have smaller indices


def max_node_error(out, tokens, ancestors, model, inputs, committed) -> float:
    """Largest logit error over all nodes; one reference forward per leaf covers every node on its path."""
    is_parent = ancestors.clone().fill_diagonal_(False).any(0)
    worst = 0.0
    for leaf in (~is_parent).nonzero().flatten().tolist():
        path = path_to(ancestors, leaf)
        ref = reference_logits(model, inputs, torch.cat([committed, tokens[path]]))[-path.numel() :]
        worst = max(worst, (out.logits[0, path] - ref).abs().max().item())
    return worst


@pytest.fixture(params=VERIFY_MODES)
def verify_path(request, monkeypatch):
    """verify_path(adapter) -> the adapter switched to the exact or the masked verify path for this test."""

    def switch(adapter):
        monkeypatch.setattr(adapter, "verify_mode", request.param)
        return adapter

    return switch


@pytest.mark.parametrize("parents", [CHAIN, BRANCHING], ids=["chain", "tree"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tree_logits_match_per_path_forward(tiny_target, stock, verify_path, family, parents):
    adapter, model = verify_path(tiny_target(family)), stock(family)
    inputs = build_prompt(adapter, family)
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    prompt_len = inputs.input_ids.shape[1]
    tokens = random_text_tokens(adapter, len(parents), torch.Generator().manual_seed(1))
    ancestors, depths = ancestors_from_parents(parents), depths_from_parents(parents)

    out = adapter.verify(tokens, ancestors, depths, cache)

    assert out.logits.shape == (1, len(parents), adapter.vocab_size)
    assert out.features.shape == (1, len(parents), adapter.hidden_size)
    assert cache.get_seq_length() == prompt_len + len(parents)
    torch.testing.assert_close(adapter.head(out.features), out.logits)
    empty = torch.zeros(0, dtype=torch.long)
    assert max_node_error(out, tokens, ancestors, model, inputs, empty) < ATOL


@torch.no_grad()
@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_verify_captures_layer_outputs_and_changes_nothing(tiny_target, stock, family):
    """What an EAGLE-3 draft reads at committed tokens: verify(layers=...) gives every node the output of those
    layers along its own path (a plain forward's hidden_states[l + 1]), and the logits and features are bit for
    bit those of a verify without capture. (The last layer's is left out: HF reports it after the norm.)"""
    adapter, model = tiny_target(family), stock(family)
    inputs = build_prompt(adapter, family)
    tokens = random_text_tokens(adapter, len(BRANCHING), torch.Generator().manual_seed(3))
    ancestors, depths = ancestors_from_parents(BRANCHING), depths_from_parents(BRANCHING)
    layers = tuple(range(adapter.num_layers - 1))
    outs = []
    for capture in ((), layers):
        cache = adapter.new_cache()
        adapter.prefill(inputs, cache)
        outs.append(adapter.verify(tokens, ancestors, depths, cache, layers=capture))
    plain, captured = outs
    assert plain.layer_outputs == {} and tuple(captured.layer_outputs) == layers
    assert torch.equal(plain.logits, captured.logits) and torch.equal(plain.features, captured.features)
    for leaf in (4, 6, 7, 8):
        path = path_to(ancestors, leaf)
        ids = torch.cat([inputs.input_ids, tokens[path][None]], dim=1)
        kwargs = extend_model_kwargs(inputs.model_kwargs, path.numel())
        hidden = model(input_ids=ids, use_cache=False, output_hidden_states=True, **kwargs).hidden_states
        for layer in layers:
            torch.testing.assert_close(captured.layer_outputs[layer][0, path], hidden[layer + 1][0, -path.numel():],
                                       atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_commit_rounds_match_fresh_forward(tiny_target, stock, verify_path, family):
    adapter, model = verify_path(tiny_target(family)), stock(family)
    gen = torch.Generator().manual_seed(2)
    inputs = build_prompt(adapter, family)
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    ancestors, depths = ancestors_from_parents(BRANCHING), depths_from_parents(BRANCHING)
    committed = torch.zeros(0, dtype=torch.long)
    for leaf in ACCEPTED_LEAVES:
        tokens = random_text_tokens(adapter, len(BRANCHING), gen)
        out = adapter.verify(tokens, ancestors, depths, cache)
        assert max_node_error(out, tokens, ancestors, model, inputs, committed) < ATOL
        keep = path_to(ancestors, leaf)
        adapter.commit(cache, len(BRANCHING), keep)
        committed = torch.cat([committed, tokens[keep]])
        assert cache.get_seq_length() == inputs.input_ids.shape[1] + committed.numel()
    # A plain decode step (a one-node tree) after the last commit.
    root = random_text_tokens(adapter, 1, gen)
    out = adapter.verify(root, torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long), cache)
    ref = reference_logits(model, inputs, torch.cat([committed, root]))[-1]
    assert (out.logits[0, 0] - ref).abs().max().item() < ATOL


def test_contiguous_commit_keeps_the_prefix_of_the_tree(tiny_target, stock):
    adapter, model = tiny_target("llava"), stock("llava")
    inputs = build_prompt(adapter, "llava")
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    tokens = random_text_tokens(adapter, len(CHAIN), torch.Generator().manual_seed(3))
    adapter.verify(tokens, ancestors_from_parents(CHAIN), depths_from_parents(CHAIN), cache)
    adapter.commit(cache, len(CHAIN), torch.arange(3))
    root = random_text_tokens(adapter, 1, torch.Generator().manual_seed(4))
    out = adapter.verify(root, torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long), cache)
    ref = reference_logits(model, inputs, torch.cat([tokens[:3], root]))[-1]
    assert (out.logits[0, 0] - ref).abs().max().item() < ATOL


@pytest.mark.parametrize("family", ["gemma3", "gemma3_text"])
def test_gemma3_context_far_past_the_sliding_window(tiny_target, stock, verify_path, family):
    adapter, model = verify_path(tiny_target(family)), stock(family)
    inputs = build_prompt(adapter, family, text="A longer question that runs well past the window. " * 2)
    assert inputs.input_ids.shape[1] > 4 * GEMMA3_WINDOW
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    ancestors, depths = ancestors_from_parents(BRANCHING), depths_from_parents(BRANCHING)
    gen = torch.Generator().manual_seed(5)
    committed = torch.zeros(0, dtype=torch.long)
    for leaf in ACCEPTED_LEAVES * 3:  # 9 rounds: the committed tail alone outgrows the window
        tokens = random_text_tokens(adapter, len(BRANCHING), gen)
        out = adapter.verify(tokens, ancestors, depths, cache)
        assert max_node_error(out, tokens, ancestors, model, inputs, committed) < ATOL
        keep = path_to(ancestors, leaf)
        adapter.commit(cache, len(BRANCHING), keep)
        committed = torch.cat([committed, tokens[keep]])
    assert committed.numel() > GEMMA3_WINDOW


# Negative controls: the equality checks above do fail when the masking or the commit is wrong.


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_vl"])
def test_negative_control_flattened_causal_mask(tiny_target, stock, monkeypatch, family):
    adapter, model = tiny_target(family), stock(family)
    monkeypatch.setattr(adapter, "verify_mode", "masked")  # the exact path refuses such a matrix (test below)
    inputs = build_prompt(adapter, family)
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    tokens = random_text_tokens(adapter, len(BRANCHING), torch.Generator().manual_seed(6))
    causal = torch.ones(len(BRANCHING), len(BRANCHING), dtype=torch.bool).tril()  # nodes see their siblings
    out = adapter.verify(tokens, causal, depths_from_parents(BRANCHING), cache)
    ancestors = ancestors_from_parents(BRANCHING)
    assert max_node_error(out, tokens, ancestors, model, inputs, torch.zeros(0, dtype=torch.long)) > 1e-3


def test_negative_control_window_ignored(tiny_target, stock, monkeypatch):
    adapter, model = tiny_target("gemma3"), stock("gemma3")
    monkeypatch.setattr(adapter, "verify_mode", "masked")
    plain_tree_mask = masks.tree_mask

    def no_window(layout, kv_length, kv_offset=0, mask_function=None, batch_size=1):
        return plain_tree_mask(layout, kv_length, kv_offset, causal_mask_function, batch_size)

    monkeypatch.setattr(attention_module, "tree_mask", no_window)
    inputs = build_prompt(adapter, "gemma3")
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    tokens = random_text_tokens(adapter, len(BRANCHING), torch.Generator().manual_seed(7))
    ancestors, depths = ancestors_from_parents(BRANCHING), depths_from_parents(BRANCHING)
    out = adapter.verify(tokens, ancestors, depths, cache)
    assert max_node_error(out, tokens, ancestors, model, inputs, torch.zeros(0, dtype=torch.long)) > 1e-3


def test_negative_control_wrong_commit(tiny_target, stock):
    adapter, model = tiny_target("llava"), stock("llava")
    inputs = build_prompt(adapter, "llava")
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    tokens = random_text_tokens(adapter, len(BRANCHING), torch.Generator().manual_seed(8))
    ancestors, depths = ancestors_from_parents(BRANCHING), depths_from_parents(BRANCHING)
    adapter.verify(tokens, ancestors, depths, cache)
    keep = path_to(ancestors, 8)
    adapter.commit(cache, len(BRANCHING), torch.arange(keep.numel()))  # a contiguous crop, not the path
    root = random_text_tokens(adapter, 1, torch.Generator().manual_seed(9))
    out = adapter.verify(root, torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long), cache)
    ref = reference_logits(model, inputs, torch.cat([tokens[keep], root]))[-1]
    assert (out.logits[0, 0] - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_mrope_offset_is_per_prompt(tiny_target, stock, family):
    adapter, model = tiny_target(family), stock(family)
    with_image = build_prompt(adapter, family)
    image_cache = adapter.new_cache()
    adapter.prefill(with_image, image_cache)
    assert image_cache.rope_delta != 0  # the image grid compresses positions
    text_only = adapter.build_inputs("a prompt without any image")
    cache = adapter.new_cache()
    adapter.prefill(text_only, cache)
    assert cache.rope_delta == 0
    tokens = random_text_tokens(adapter, len(CHAIN), torch.Generator().manual_seed(10))
    ancestors = ancestors_from_parents(CHAIN)
    out = adapter.verify(tokens, ancestors, depths_from_parents(CHAIN), cache)
    assert max_node_error(out, tokens, ancestors, model, text_only, torch.zeros(0, dtype=torch.long)) < ATOL
    # The earlier sequence keeps its own offset.
    out = adapter.verify(tokens, ancestors, depths_from_parents(CHAIN), image_cache)
    assert max_node_error(out, tokens, ancestors, model, with_image, torch.zeros(0, dtype=torch.long)) < ATOL


def test_exact_path_refuses_ancestors_that_disagree_with_depths(tiny_target):
    adapter = tiny_target("llava")
    cache = adapter.new_cache()
    adapter.prefill(build_prompt(adapter, "llava"), cache)
    causal = torch.ones(len(BRANCHING), len(BRANCHING), dtype=torch.bool).tril()
    tokens = random_text_tokens(adapter, len(BRANCHING), torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="ancestors and depths disagree"):
        adapter.verify(tokens, causal, depths_from_parents(BRANCHING), cache)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_negative_control_exact_path_without_ancestor_keys(tiny_target, stock, monkeypatch, family):
    """Exact attention whose nodes see the prefix and themselves only: the per-path check catches it."""
    adapter, model = tiny_target(family), stock(family)
    real_groups = exact.depth_groups

    def no_ancestors(prefix_len, depths, ancestors):
        return real_groups(prefix_len, torch.zeros_like(depths), torch.eye(len(depths), dtype=torch.bool))

    monkeypatch.setattr(attention_module, "depth_groups", no_ancestors)
    # The per-depth sdpa path is the one whose groups are patched, whatever the batch-invariant mode chose here.
    monkeypatch.setattr(adapter.model.config.get_text_config(), "_attn_implementation_internal",
                        attention_module.ATTENTION_NAME)
    inputs = build_prompt(adapter, family)
    cache = adapter.new_cache()
    adapter.prefill(inputs, cache)
    tokens = random_text_tokens(adapter, len(BRANCHING), torch.Generator().manual_seed(11))
    ancestors, depths = ancestors_from_parents(BRANCHING), depths_from_parents(BRANCHING)
    out = adapter.verify(tokens, ancestors, depths, cache)
    assert max_node_error(out, tokens, ancestors, model, inputs, torch.zeros(0, dtype=torch.long)) > 1e-3
