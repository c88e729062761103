"""Prefill extras: attention statistics against an eager output_attentions reference, layer outputs and
merged input embeddings against output_hidden_states."""

from __future__ import annotations

import pytest
import torch

from fixtures import FAMILIES, VLM_FAMILIES, stock_model, tiny_image

ATOL = 1e-5


def build_prompt(adapter, family: str, n_images: int = 1):
    images = [tiny_image(i, (48, 32)) for i in range(n_images)] if family in VLM_FAMILIES else []
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "What is shown here?"}]
    return adapter.build_inputs([{"role": "user", "content": content}], images)


def eager_reference(path, inputs):
    model = stock_model(path, attn_implementation="eager")
    with torch.no_grad():
        return model(
            input_ids=inputs.input_ids, output_attentions=True, output_hidden_states=True, **inputs.model_kwargs
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_stats_match_eager_attentions(tiny_target, tiny_target_path, family):
    adapter = tiny_target(family)
    inputs = build_prompt(adapter, family)
    ref = eager_reference(tiny_target_path(family), inputs)
    assert len(ref.attentions) == adapter.num_layers

    out = adapter.prefill(inputs, adapter.new_cache(), entropy=True, visual_scores=True, all_logits=True)

    ref_entropy = torch.stack([-torch.special.xlogy(a, a).sum(-1).mean(1)[0] for a in ref.attentions])
    assert out.stats.entropy.shape == (adapter.num_layers, inputs.input_ids.shape[1])
    torch.testing.assert_close(out.stats.entropy, ref_entropy, atol=ATOL, rtol=0)
    visual = inputs.visual_mask[0]
    ref_scores = ref.attentions[-1][0][:, :, visual].sum(1).mean(0)
    assert out.stats.visual_scores.shape == (int(visual.sum()),)
    torch.testing.assert_close(out.stats.visual_scores, ref_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_visual_scores_alone_and_stats_leave_outputs_unchanged(tiny_target, family):
    adapter = tiny_target(family)
    inputs = build_prompt(adapter, family, n_images=2)
    plain = adapter.prefill(inputs, adapter.new_cache(), all_logits=True)
    scored = adapter.prefill(inputs, adapter.new_cache(), visual_scores=True, all_logits=True)
    both = adapter.prefill(inputs, adapter.new_cache(), entropy=True, visual_scores=True, all_logits=True)
    assert plain.stats is None and scored.stats.entropy is None
    torch.testing.assert_close(scored.stats.visual_scores, both.stats.visual_scores, atol=ATOL, rtol=0)
    # Statistics come from a side computation: the forward itself is bit for bit the plain one.
    assert torch.equal(scored.logits, plain.logits) and torch.equal(both.features, plain.features)
    # Each query's attention sums to 1, so the scores of all keys would sum to S; visual ones are a share.
    assert 0 < scored.stats.visual_scores.sum() < inputs.input_ids.shape[1]


def test_text_prompt_has_empty_visual_scores(tiny_target):
    adapter = tiny_target("llama")
    inputs = adapter.build_inputs("plain text prompt")
    out = adapter.prefill(inputs, adapter.new_cache(), visual_scores=True)
    assert out.stats.visual_scores.shape == (0,) and out.stats.entropy is None


@pytest.mark.parametrize("family", ["llama", "llava", "gemma3", "qwen2_vl", "smolvlm"])
def test_layer_outputs_and_input_embeds_match_hidden_states(tiny_target, tiny_target_path, family):
    adapter = tiny_target(family)
    inputs = build_prompt(adapter, family)
    ref = eager_reference(tiny_target_path(family), inputs)
    last = adapter.num_layers - 1

    out = adapter.prefill(inputs, adapter.new_cache(), layers=range(adapter.num_layers))

    # hidden_states: (embeddings, layer 0 .. layer L-2 outputs, final post-norm state)
    torch.testing.assert_close(out.input_embeds, ref.hidden_states[0], atol=ATOL, rtol=0)
    for layer in range(last):
        torch.testing.assert_close(out.layer_outputs[layer], ref.hidden_states[layer + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.features, ref.hidden_states[-1], atol=ATOL, rtol=0)
    final_norm = adapter.model.model.get_decoder().norm
    torch.testing.assert_close(final_norm(out.layer_outputs[last]), out.features, atol=ATOL, rtol=0)
    # The merged embeddings hold the target's own text embeddings wherever there is no image.
    text = ~inputs.visual_mask[0]
    torch.testing.assert_close(out.input_embeds[0, text], adapter.embed(inputs.input_ids[0, text]), atol=0, rtol=0)
    assert list(out.layer_outputs) == list(range(adapter.num_layers))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_prefill_gives_each_prompt_its_own_prefill(tiny_target, family):
    """Right-padded prompts of different lengths in one forward: each row's features, embeddings, layer
    outputs and statistics equal the prompt's own prefill (fp32, up to batched-kernel rounding)."""
    adapter = tiny_target(family)
    images = [tiny_image(i, (48, 32)) for i in range(3)] if family in VLM_FAMILIES else []
    questions = ["What is shown here?", "Name every color you see in this picture, and where.", "Why?"]
    batch = []
    for i, question in enumerate(questions):
        content = ([{"type": "image"}] if images else []) + [{"type": "text", "text": question}]
        batch.append(adapter.build_inputs([{"role": "user", "content": content}], images[i: i + 1]))
    lengths = [inputs.input_ids.shape[1] for inputs in batch]
    assert len(set(lengths)) == 3  # every row but the longest is padded
    layers = [0, adapter.num_layers - 1]
    outs = adapter.prefill_batch(batch, layers=layers, entropy=True, visual_scores=True)
    for inputs, out in zip(batch, outs):
        own = adapter.prefill(inputs, adapter.new_cache(), layers=layers, entropy=True, visual_scores=True)
        for got, want in [(out.features, own.features), (out.input_embeds, own.input_embeds),
                          (out.logits, own.logits), (out.stats.entropy, own.stats.entropy),
                          *[(out.layer_outputs[k], own.layer_outputs[k]) for k in layers]]:
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
        if images:
            # Padding rows attend to the visual tokens too; they must not add to the scores.
            torch.testing.assert_close(out.stats.visual_scores, own.stats.visual_scores, atol=ATOL, rtol=1e-5)
