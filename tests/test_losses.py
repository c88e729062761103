"""The DREAM loss: fast path vs plain reference (values and gradients), hand-computed KL (summed over the
vocabulary), weights of 0 switching terms off, and the teacher-forced helper vs the reference."""

from __future__ import annotations

import math

import pytest
import torch

from dream.draft import DraftConfig, SharedHead, build_draft
from dream.training.losses import LossWeights, draft_loss, draft_loss_reference, teacher_forced_loss

B, S, H, V = 2, 6, 8, 11


def make_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "draft_features": torch.randn(B, S, H, generator=g) * 2,   # large enough to hit both SmoothL1 branches
        "target_features": torch.randn(B, S, H, generator=g) * 2,
        "draft_first": torch.randn(B, S, H, generator=g),
        "target_mid": torch.randn(B, S, H, generator=g),
        "draft_logits": torch.randn(B, S, V, generator=g) * 3,
        "target_logits": torch.randn(B, S, V, generator=g) * 3,
    }
    for name in ("draft_features", "draft_first", "draft_logits"):
        tensors[name].requires_grad_(True)
    mask = torch.rand(B, S, generator=g) > 0.4
    mask[0, 0] = True
    return {**tensors, "loss_mask": mask}


@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(0.5, 0.1, 2.0), LossWeights(1.0, 0.0, 0.3)])
def test_fast_path_equals_reference_in_value_and_gradient(weights):
    inputs = make_inputs()
    fast = draft_loss(**inputs, weights=weights)
    reference = draft_loss_reference(**inputs, weights=weights)
    torch.testing.assert_close(fast.total, reference.total)
    for term in ("feature", "kl") + (("mid",) if weights.mid else ()):
        torch.testing.assert_close(getattr(fast, term), getattr(reference, term))
    assert fast.num_tokens == reference.num_tokens == int(inputs["loss_mask"].sum())
    leaves = [inputs[n] for n in ("draft_features", "draft_first", "draft_logits")]
    fast_grads = torch.autograd.grad(fast.total, leaves, allow_unused=True)
    reference_grads = torch.autograd.grad(reference.total, leaves)
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        torch.testing.assert_close(torch.zeros_like(reference_grad) if fast_grad is None else fast_grad,
                                   reference_grad)


def test_kl_is_summed_over_vocabulary_and_averaged_over_tokens():
    target_logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    draft_logits = torch.log(torch.tensor([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    terms = draft_loss(loss_mask=torch.tensor([True, True]), draft_features=None, target_features=None,
                       draft_first=None, target_mid=None, draft_logits=draft_logits, target_logits=target_logits,
                       weights=LossWeights(feature=0.0, mid=0.0, kl=1.0))
    kl_first = 0.5 * math.log(2) + 0.25 * math.log(0.5)           # = 0.25 log 2; the second row is 0
    torch.testing.assert_close(terms.kl, torch.tensor(kl_first / 2))
    torch.testing.assert_close(terms.total, terms.kl)


def test_masked_tokens_do_not_count():
    inputs = make_inputs()
    base = draft_loss(**inputs)
    changed = dict(inputs)
    changed["draft_logits"] = inputs["draft_logits"].detach().clone()
    changed["draft_logits"][~inputs["loss_mask"]] += 50.0
    changed["draft_features"] = inputs["draft_features"].detach().clone()
    changed["draft_features"][~inputs["loss_mask"]] -= 50.0
    torch.testing.assert_close(draft_loss(**changed).total, base.total)


def test_zero_weights_turn_terms_off_and_skip_their_inputs():
    inputs = make_inputs()
    only_kl = draft_loss(loss_mask=inputs["loss_mask"], draft_features=None, target_features=None,
                         draft_first=None, target_mid=None, draft_logits=inputs["draft_logits"],
                         target_logits=inputs["target_logits"], weights=LossWeights(feature=0.0, mid=0.0))
    assert only_kl.feature.item() == 0.0 and only_kl.mid.item() == 0.0
    torch.testing.assert_close(only_kl.total, draft_loss(**inputs).kl)
    no_kl = draft_loss(**{**inputs, "draft_logits": None, "target_logits": None}, weights=LossWeights(kl=0.0))
    assert no_kl.kl.item() == 0.0
    torch.testing.assert_close(no_kl.total, 0.2 * no_kl.feature + 0.2 * no_kl.mid)
    with pytest.raises(ValueError, match="target_mid"):
        draft_loss(**{**inputs, "target_mid": None})
    with pytest.raises(ValueError, match="no token"):
        draft_loss(**{**inputs, "loss_mask": torch.zeros(B, S, dtype=torch.bool)})
    with pytest.raises(ValueError):
        LossWeights(kl=-1.0)


@pytest.mark.parametrize("draft_vocab_size", [None, 5])
def test_teacher_forced_loss_matches_reference(draft_vocab_size):
    torch.manual_seed(0)
    cfg = DraftConfig(architecture="dream", hidden_size=H, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                      intermediate_size=16, vocab_size=V, draft_vocab_size=draft_vocab_size)
    draft = build_draft(cfg)
    if draft_vocab_size:
        draft.set_vocab_map(torch.tensor([0, 3, 4, 7, 10]))
    head_weight = torch.randn(V, H)
    draft.bind_head(SharedHead(head_weight, None, None))
    embeds, features, mid = torch.randn(B, S, H), torch.randn(B, S, H), torch.randn(B, S, H)
    positions = torch.arange(S).expand(B, S)
    attention_mask = torch.ones(B, S, dtype=torch.long)
    attention_mask[1, -2:] = 0
    loss_mask = torch.rand(B, S) > 0.3
    loss_mask[0, 1] = True
    loss_mask &= attention_mask.bool()
    terms = teacher_forced_loss(draft, input_embeds=embeds, target_features=features, target_mid=mid,
                                positions=positions, attention_mask=attention_mask, loss_mask=loss_mask)
    out = draft.forward_train(embeds, features, positions, attention_mask)
    # Reduced vocabulary: the target distribution restricted to the draft's ids and renormalised.
    rows = torch.arange(V) if draft_vocab_size is None else draft.vocab_map
    reference = draft_loss_reference(loss_mask=loss_mask, draft_features=out.features, target_features=features,
                                     draft_first=out.first_hidden, target_mid=mid, draft_logits=out.logits,
                                     target_logits=features @ head_weight[rows].T)
    torch.testing.assert_close(terms.total, reference.total)
    params = [p for p in draft.parameters() if p.requires_grad]
    fast_grads = torch.autograd.grad(terms.total, params, allow_unused=True)
    reference_grads = torch.autograd.grad(reference.total, params, allow_unused=True)
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        if reference_grad is None:
            assert fast_grad is None
        else:
            torch.testing.assert_close(fast_grad, reference_grad)
