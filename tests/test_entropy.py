"""Attention entropy on hand-built attention with known entropy, argmin selection inside a window, the
supervising hidden state (a layer's OUTPUT), agreement with the adapter's prefill statistics, the report
and its plot."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dream.draft.config import LayerWindow
from dream.training.entropy import (
    attention_entropy,
    entropy_report,
    gather_supervision,
    plot_entropy_report,
    select_layers,
)


def test_uniform_attention_has_entropy_log_n_and_one_hot_zero():
    s = 5
    # Causal uniform: query i attends i + 1 keys uniformly -> entropy log(i + 1).
    uniform = torch.ones(s, s).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    one_hot = torch.eye(s)
    attention = torch.stack([torch.stack([uniform, uniform]), torch.stack([one_hot, one_hot])])  # [L=2, 2, S, S]
    entropy = attention_entropy(attention)
    torch.testing.assert_close(entropy[0], torch.log(torch.arange(1, s + 1).float()))
    assert torch.equal(entropy[1], torch.zeros(s))
    # Head mean: one uniform head and one one-hot head average their entropies.
    mixed = attention_entropy(torch.stack([uniform, one_hot]))
    torch.testing.assert_close(mixed, torch.log(torch.arange(1, s + 1).float()) / 2)


def test_argmin_selection_inside_window_and_static_layer():
    entropy = torch.tensor([
        [0.1, 5.0, 3.0],
        [1.0, 0.2, 3.0],
        [2.0, 4.0, 0.3],
        [0.5, 0.1, 0.3],   # ties with layer 2 at token 2: the earlier layer wins
    ])
    assert select_layers(entropy).tolist() == [0, 3, 2]
    assert select_layers(entropy, LayerWindow(start=1, stop=3)).tolist() == [1, 1, 2]
    assert select_layers(entropy, LayerWindow(start=1)).tolist() == [3, 3, 2]
    assert select_layers(entropy, LayerWindow(static_layer=2)).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="exceeds"):
        select_layers(entropy, LayerWindow(start=0, stop=5))
    with pytest.raises(ValueError):
        LayerWindow(start=2, stop=2)


def test_supervision_is_the_output_of_the_selected_layer(tiny_target_path):
    """gather_supervision picks layer_outputs[l] == transformers' hidden_states[l + 1] (not hidden_states[l])."""
    model = AutoModelForCausalLM.from_pretrained(tiny_target_path("llama"), attn_implementation="eager")
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    hidden = model(ids, output_hidden_states=True).hidden_states          # L + 1 entries, [0] = embeddings
    outputs = {layer: hidden[layer + 1] for layer in range(model.config.num_hidden_layers)}
    layers = torch.tensor([1, 0, 1, 1, 0, 0])
    picked = gather_supervision(outputs, layers)
    for i, layer in enumerate(layers.tolist()):
        assert torch.equal(picked[i], hidden[layer + 1][0, i])
    stacked = torch.stack([hidden[layer + 1][0] for layer in range(model.config.num_hidden_layers)])
    assert torch.equal(gather_supervision(stacked, layers), picked)
    with pytest.raises(ValueError, match="not captured"):
        gather_supervision({0: outputs[0]}, layers)


def test_reference_matches_adapter_prefill_entropy(tiny_target, tiny_target_path):
    target = tiny_target("llama")
    inputs = target.build_inputs([{"role": "user", "content": "entropy please"}])
    stats = target.prefill(inputs, target.new_cache(), entropy=True).stats
    eager = AutoModelForCausalLM.from_pretrained(tiny_target_path("llama"), attn_implementation="eager")
    attentions = eager(inputs.input_ids, output_attentions=True).attentions     # L x [1, heads, S, S]
    reference = attention_entropy(torch.cat(attentions))
    torch.testing.assert_close(stats.entropy, reference, rtol=1e-4, atol=1e-5)


def test_report_statistics_and_plot(tmp_path):
    samples = [torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[0.0], [4.0]])]   # L=2, S=2 then S=1
    masks = [torch.tensor([True, True]), torch.tensor([True])]
    report = entropy_report(samples, masks)
    assert report.num_tokens == 3
    torch.testing.assert_close(torch.tensor(report.mean), torch.tensor([4.0 / 3, 2.0]))
    torch.testing.assert_close(torch.tensor(report.std), torch.tensor([math.sqrt(14 / 9), math.sqrt(8 / 3)]))
    assert report.argmin_counts == [2, 1]
    masked = entropy_report(samples, [torch.tensor([False, True]), torch.tensor([True])])
    assert masked.num_tokens == 2 and masked.argmin_counts == [1, 1]
    assert report.to_dict()["window"] == {"start": 0, "stop": None, "static_layer": None}
    path = plot_entropy_report(report, tmp_path / "entropy.png")
    assert path.stat().st_size > 1000
