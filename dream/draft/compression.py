"""Visual-token compression for the draft: keep the visual tokens the target's last layer attends to most.

Score: the attention each visual token receives in the target's LAST layer, summed over queries and
averaged over heads (`AttentionStats.visual_scores`). The top `keep_ratio` fraction of visual tokens is
kept (ceil, at least one); every text token is kept. Only the DRAFT's streams are pruned; the target
always sees every token, so the output is unchanged (lossless) and only the draft gets cheaper.

Decisions (applied identically at training and at inference):
- Positions: kept tokens keep their ORIGINAL target positions, so the draft's rotary positions have gaps
  where tokens were dropped, and every later token (prompt text, generated tokens, tree nodes) has exactly
  the target's position. Renumbering would shift every generated token's position relative to the target
  and to what training saw with a different image size.
- One index set for both streams: the draft's input embeddings AND the cross-attention keys/values (the
  target features) are taken at the same kept positions; "strictly before" is judged on the original
  positions. (The reference pruned the inputs but left the keys/values at full length.)
- Everything per-position that travels with a training sample (input embeddings, target features,
  intermediate-supervision targets, labels, the loss mask, positions) is pruned with the same indices:
  `prune` does it in one call. (The reference forgot the loss mask, misaligning it.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def num_kept(num_visual: int, keep_ratio: float) -> int:
    """How many of `num_visual` visual tokens survive: ceil(keep_ratio * n), at least 1 (0 if none)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if num_visual == 0:
        return 0
    # The epsilon keeps float error (0.7 * 10 = 7.000000000000001) from adding a token.
    return max(1, min(num_visual, math.ceil(keep_ratio * num_visual - 1e-9)))


def select_kept_positions(visual_mask: Tensor, visual_scores: Tensor, keep_ratio: float = 0.75) -> Tensor:
    """visual_mask [S] bool, visual_scores [S_vis] (in position order) -> kept positions [S_kept] long, sorted.

    Ties in score go to the earlier token, so the selection is deterministic.
    """
    visual_mask = visual_mask.bool()
    if visual_mask.dim() != 1:
        raise ValueError(f"visual_mask must be [S], got shape {tuple(visual_mask.shape)}")
    visual_positions = visual_mask.nonzero().flatten()                        # [S_vis]
    if visual_scores.shape != visual_positions.shape:
        raise ValueError(
            f"visual_scores has shape {tuple(visual_scores.shape)}, expected [{visual_positions.shape[0]}] "
            "(one score per visual token)"
        )
    keep = num_kept(visual_positions.shape[0], keep_ratio)
    best = torch.argsort(visual_scores.float(), descending=True, stable=True)[:keep]
    kept = ~visual_mask
    kept[visual_positions[best]] = True
    return kept.nonzero().flatten()


def prune(kept: Tensor, *tensors: Tensor | None, dim: int = 0) -> tuple[Tensor | None, ...]:
    """Index every per-position tensor along `dim` with the same kept positions (None passes through)."""
    return tuple(None if t is None else t.index_select(dim, kept.to(t.device)) for t in tensors)
