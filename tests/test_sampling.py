"""target_probs must equal HF's Temperature -> TopK -> TopP warpers followed by a softmax."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from transformers import GenerationConfig, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from dream.sampling import SamplingConfig, check_generation_config, sample, target_probs


def hf_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """What HF generate does with these settings (it adds a warper only when it changes something)."""
    scores = logits.float()
    input_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    if cfg.temperature != 1.0:
        scores = TemperatureLogitsWarper(cfg.temperature)(input_ids, scores)
    if cfg.top_k != 0:
        scores = TopKLogitsWarper(cfg.top_k)(input_ids, scores)
    if cfg.top_p < 1.0:
        scores = TopPLogitsWarper(cfg.top_p)(input_ids, scores)
    return torch.softmax(scores, -1)


CONFIGS = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.7),
    SamplingConfig(temperature=1.3, top_k=5),
    SamplingConfig(temperature=1.0, top_p=0.9),
    SamplingConfig(temperature=0.6, top_k=20, top_p=0.8),
    SamplingConfig(temperature=2.0, top_k=1),
    SamplingConfig(temperature=1.0, top_p=0.01),
    SamplingConfig(temperature=1.0, top_k=1000),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_hf_warpers(cfg):
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 50, generator=gen)
    assert torch.equal(target_probs(logits, cfg), hf_probs(logits, cfg))


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_hf_warpers_with_ties(cfg):
    # Integer logits tie often: the k-th value and the nucleus boundary must be resolved identically.
    logits = torch.randint(-3, 3, (8, 40), generator=torch.Generator().manual_seed(1)).float()
    assert torch.equal(target_probs(logits, cfg), hf_probs(logits, cfg))


def test_one_dimensional_logits_and_normalisation():
    logits = torch.randn(30, generator=torch.Generator().manual_seed(2))
    cfg = SamplingConfig(temperature=0.9, top_k=10, top_p=0.7)
    probs = target_probs(logits, cfg)
    assert probs.shape == (30,)
    assert torch.equal(probs, hf_probs(logits[None], cfg)[0])
    assert probs.sum().item() == pytest.approx(1.0)
    assert int((probs > 0).sum()) <= 10


def test_greedy_has_no_distribution():
    assert SamplingConfig().greedy
    with pytest.raises(ValueError, match="temperature"):
        target_probs(torch.zeros(4), SamplingConfig())


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
])
def test_bad_settings_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs)


def test_sample_follows_the_weights():
    weights = torch.tensor([3.0, 0.0, 1.0, 0.5, 0.0, 2.5])        # unnormalised, with zero weights
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample(weights, generator) for _ in range(20000)])
    counts = torch.bincount(draws, minlength=6)
    assert counts[1] == 0 and counts[4] == 0
    keep = weights > 0
    expected = weights[keep].double() / weights.sum().double() * 20000
    assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-3
    again = torch.Generator().manual_seed(0)
    assert [sample(weights, again) for _ in range(50)] == draws[:50].tolist()


def test_sample_never_returns_a_trailing_zero_weight():
    # u * total may round up to the total; the draw must still land on a token with weight.
    weights = torch.tensor([1e-30, 1.0, 0.0, 0.0])
    generator = torch.Generator().manual_seed(1)
    assert {sample(weights, generator) for _ in range(2000)} <= {0, 1}


def test_temperature_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        SamplingConfig(temperature=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        SamplingConfig(temperature=float("nan"))


def test_generation_config_processors_are_refused_by_name():
    config = GenerationConfig()
    check_generation_config(config)                                  # the defaults apply nothing extra
    config.repetition_penalty, config.suppress_tokens = 1.3, [5]
    with pytest.raises(ValueError, match=r"repetition_penalty=1\.3, suppress_tokens=\[5\]"):
        check_generation_config(config)
