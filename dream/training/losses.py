"""The DREAM training loss, with a plain reference beside the fast path.

  L = w_feat * SmoothL1(draft final feature, target final feature)
    + w_mid  * SmoothL1(draft first-block output, target layer-l* output)     (dream.training.entropy picks l*)
    + w_kl   * KL(target token distribution || draft token distribution)

Defaults 0.2 / 0.2 / 1.0 (the paper's). A weight of 0 removes its term and skips its computation (its
inputs may then be None). Terms are averaged over loss-masked tokens only: position i counts when the
token it predicts (i + 1) is a response token. SmoothL1 (beta 1) is averaged over the hidden dimension;
the KL is SUMMED over the vocabulary and averaged over tokens (the reference averaged over the vocabulary
too, shrinking the term by 1/|V|).

Reduced draft vocabulary: the target distribution is RESTRICTED to the draft's vocabulary and renormalised
there (softmax over the target's logits at the vocab_map ids), so both sides are distributions on the same
support. Pass `target_logits` already restricted (the draft's head applied to target features does that).
All terms are computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LossWeights:
    feature: float = 0.2     # final-feature regression
    mid: float = 0.2         # first-block output vs target layer-l* output
    kl: float = 1.0          # token distribution distillation

    def __post_init__(self) -> None:
        if min(self.feature, self.mid, self.kl) < 0:
            raise ValueError(f"loss weights must be >= 0, got {self}")


@dataclass(frozen=True)
class LossTerms:
    total: Tensor            # scalar, differentiable
    feature: Tensor          # scalar (unweighted; 0 when its weight is 0)
    mid: Tensor
    kl: Tensor
    num_tokens: int          # loss-masked tokens averaged over


def draft_loss(
    *,
    loss_mask: Tensor,                   # [...] bool, tokens to average over
    draft_features: Tensor | None,       # [..., H]
    target_features: Tensor | None,      # [..., H]
    draft_first: Tensor | None,          # [..., H]
    target_mid: Tensor | None,           # [..., H]
    draft_logits: Tensor | None,         # [..., V_draft]
    target_logits: Tensor | None,        # [..., V_draft]
    weights: LossWeights = LossWeights(),
) -> LossTerms:
    """Fast path: select the masked tokens first, then compute each enabled term on [n, ...] only."""
    mask = loss_mask.bool()
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the loss mask selects no token")

    def pick(x: Tensor | None, name: str) -> Tensor:
        if x is None:
            raise ValueError(f"{name} is needed by a term with a nonzero weight")
        return x[mask].float()                                                  # [n, X]

    zero = loss_mask.new_zeros((), dtype=torch.float32)
    terms = {"feature": zero, "mid": zero, "kl": zero}
    if weights.feature:
        terms["feature"] = _smooth_l1(pick(draft_features, "draft_features"), pick(target_features, "target_features"))
    if weights.mid:
        terms["mid"] = _smooth_l1(pick(draft_first, "draft_first"), pick(target_mid, "target_mid"))
    if weights.kl:
        target_logp = F.log_softmax(pick(target_logits, "target_logits"), -1)
        draft_logp = F.log_softmax(pick(draft_logits, "draft_logits"), -1)
        # sum_v p_t (log p_t - log p_d). The target's logits are finite (its own head), so no 0 * inf arises.
        kl = torch.sum(target_logp.exp() * (target_logp - draft_logp), -1)
        terms["kl"] = kl.mean()
    total = weights.feature * terms["feature"] + weights.mid * terms["mid"] + weights.kl * terms["kl"]
    return LossTerms(total=total, num_tokens=n, **terms)


def _smooth_l1(draft: Tensor, target: Tensor) -> Tensor:
    """[n, H] -> scalar: SmoothL1 averaged over H, then over tokens (same as over all elements)."""
    return F.smooth_l1_loss(draft, target, reduction="mean")


def draft_loss_reference(
    *,
    loss_mask: Tensor,
    draft_features: Tensor,
    target_features: Tensor,
    draft_first: Tensor,
    target_mid: Tensor,
    draft_logits: Tensor,
    target_logits: Tensor,
    weights: LossWeights = LossWeights(),
) -> LossTerms:
    """Plain reference: every term over every token, written out elementwise, then mask-weighted."""
    mask = loss_mask.float()
    n = mask.sum()

    def smooth_l1(a: Tensor, b: Tensor) -> Tensor:
        diff = (a.float() - b.float()).abs()
        per_element = torch.where(diff < 1.0, 0.5 * diff**2, diff - 0.5)
        return (per_element.mean(-1) * mask).sum() / n

    target_probs = torch.softmax(target_logits.float(), -1)
    draft_probs = torch.softmax(draft_logits.float(), -1)
    kl_per_token = (target_probs * (target_probs.log() - draft_probs.log())).sum(-1)
    feature, mid = smooth_l1(draft_features, target_features), smooth_l1(draft_first, target_mid)
    kl = (kl_per_token * mask).sum() / n
    total = weights.feature * feature + weights.mid * mid + weights.kl * kl
    return LossTerms(total=total, feature=feature, mid=mid, kl=kl, num_tokens=int(n))


def teacher_forced_loss(
    draft: Any,                           # a dream.draft DraftModel with the target head bound
    *,
    input_embeds: Tensor,                 # [B, S, H]
    target_features: Tensor,             # [B, S, H] post-norm final features
    target_mid: Tensor | None,            # [B, S, H] layer-l* outputs (dream.training.entropy.gather_supervision)
    positions: Tensor,                    # [B, S] long
    attention_mask: Tensor | None,        # [B, S] 1 = real token
    loss_mask: Tensor,                    # [B, S] bool
    weights: LossWeights = LossWeights(),
    target_memory: Tensor | None = None,  # [B, S, W] the entries the draft reads (DraftModel.target_entries);
                                          #   None: target_features (DREAM, EAGLE-2)
) -> LossTerms:
    """One training forward + loss; the draft's logits and the target's are computed at masked tokens only."""
    sel = loss_mask.bool()
    out = draft.forward_train(
        input_embeds, target_features if target_memory is None else target_memory, positions, attention_mask,
        logits_at=sel if weights.kl else None, with_logits=False,
    )
    target_logits = None
    if weights.kl:
        with torch.no_grad():
            # The draft's head is the target's, restricted to the draft vocabulary when reduced.
            target_logits = draft.head(target_features[sel].to(draft.dtype))
    return draft_loss(
        loss_mask=torch.ones(int(sel.sum()), dtype=torch.bool, device=sel.device),
        draft_features=out.features[sel],
        target_features=target_features[sel],
        draft_first=out.first_hidden[sel],
        target_mid=None if target_mid is None else target_mid[sel],
        draft_logits=out.logits,
        target_logits=target_logits,
        weights=weights,
    )
