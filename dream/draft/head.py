"""The target's LM head as the draft uses it: shared, frozen, optionally restricted to a reduced vocabulary.

A reduced draft vocabulary (EAGLE-3's d2t idea) is a `vocab_map` [V_draft] of target ids; the draft head is
those rows of the target head, so no new parameters are learned and a draft id maps back to a target id by
`vocab_map[draft_id]`. On small targets the 49k-row head dominates a draft step's cost (notes/offline.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dream.target.head import final_softcap, soft_cap


@dataclass(frozen=True)
class SharedHead:
    weight: Tensor              # [V, H] the target's output embedding (not copied)
    bias: Tensor | None         # [V]
    softcap: float | None       # final-logit soft-capping (Gemma-style): cap * tanh(logits / cap)


def target_head(target: Any) -> SharedHead:
    """The LM head of a TargetAdapter (or of a bare transformers model)."""
    model = getattr(target, "model", target)
    linear = model.get_output_embeddings()
    bias = None if linear.bias is None else linear.bias.detach()
    return SharedHead(linear.weight.detach(), bias, final_softcap(model.config))


def apply_head(features: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None) -> Tensor:
    """features [..., H] -> logits [..., V] exactly as the target computes them (soft-capping included)."""
    return soft_cap(torch.nn.functional.linear(features, weight, bias), softcap)


def frequent_vocab_map(token_counts: Tensor, size: int, required: Iterable[int] = ()) -> Tensor:
    """The `size` most frequent target ids (plus `required` ones, e.g. EOS), sorted ascending -> [size] long.

    token_counts: [V] how often each target id occurs as a response token in the training data. Ties go to
    the lower id so the map is deterministic.
    """
    vocab = token_counts.numel()
    required = sorted(set(int(t) for t in required))
    if not 0 < size <= vocab or len(required) > size:
        raise ValueError(f"size must be in [{max(len(required), 1)}, {vocab}], got {size}")
    if any(not 0 <= t < vocab for t in required):
        raise ValueError(f"required ids must be in [0, {vocab})")
    score = token_counts.double().clone()
    score[required] = float("inf")
    order = torch.argsort(-score, stable=True)
    return torch.sort(order[:size]).values
