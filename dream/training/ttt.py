"""Training-time test (EAGLE-3's TTT): the draft also learns on its own earlier predictions.

At inference only a tree's root reads the target's entries for everything before it; a node at depth
d >= 1 reads, for its d nearest predecessors, what the DRAFT computed there (`DraftModel.feedback`).
Teacher forcing trains only the first case. Training-time test unrolls the draft over K steps so that
step k trains the depth-(k - 1) case, with the masks alone, no shifted copies of the batch:

  step 1   teacher forcing: index i attends indices <= i and reads target entries at indices < i.
  step k   index i is the depth-d node (d = k - 1) of the chain rooted at r = i - d, as a tree node is:
           self-attention: step-1 keys at indices <= r (the committed prefix and the root), then its
           ancestors' keys of steps 2 .. k - 1 (step s at index r + s - 1), then its own;
           memory: target entries at indices < r, then the feedback of steps 1 .. k - 1 at the chain's
           earlier indices (step s at index r + s - 1), the parent (step k - 1 at i - 1) last.
The tokens stay the true ones (the chain follows the data), and so does each index's target: the target's
distribution (and features) at i. Step k trains index i only where the chain exists: i >= d, the loss mask
holds at i, and the positions r .. i are consecutive (no pruned visual token inside the chain).

Keys of every step stay in one cache, so step k costs one forward of S queries over k * S keys. Gradients
flow through the fed-back features, as in EAGLE-3 (the draft learns what to pass on, not only what to
predict). The caller averages the loss over the rows of all steps (dream.training.loop.forward_loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from dream.draft.base import DraftModel, DraftOutput, teacher_forcing_masks


@dataclass(frozen=True)
class TTTStep:
    output: DraftOutput      # [B, S, H] the draft's outputs of this step at every index (no logits)
    loss_mask: Tensor        # [B, S] bool, the indices this step trains on


def unroll(
    draft: DraftModel,
    input_embeds: Tensor,                  # [B, S, H]
    target_memory: Tensor,                 # [B, S, W] the target's entries (DraftModel.target_entries)
    positions: Tensor,                     # [B, S] long, target positions (gaps after compression)
    attention_mask: Tensor | None,         # [B, S] 1 = real token, 0 = padding (right-padded)
    loss_mask: Tensor,                     # [B, S] bool, step 1's training indices
    steps: int,                            # K >= 1; 1 = teacher forcing only
) -> list[TTTStep]:
    """The draft's outputs of steps 1 .. K (see the module docstring), each with its training indices."""
    if steps < 1:
        raise ValueError(f"training-time test needs steps >= 1, got {steps}")
    memory = draft.encode_memory(target_memory.to(draft.dtype))
    allowed_self, allowed_memory = teacher_forcing_masks(positions, attention_mask)
    cache = DynamicCache() if steps > 1 else None
    out = draft.forward_masked(input_embeds, positions, allowed_self, memory, allowed_memory, cache)
    unrolled = [TTTStep(out, loss_mask.bool())]
    valid = torch.ones_like(loss_mask, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    for step in range(2, steps + 1):
        memory = [torch.cat([old, new], dim=-2) for old, new in zip(memory, draft.encode_memory(draft.feedback(out)))]
        allowed_self, allowed_memory = step_masks(valid, step)
        out = draft.forward_masked(input_embeds, positions, allowed_self, memory, allowed_memory, cache)
        unrolled.append(TTTStep(out, loss_mask.bool() & chain_exists(positions, valid, step)))
    return unrolled


def step_masks(valid: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """valid [B, S] bool -> (allowed_self [B, S, step * S] over the cached keys of steps 1 .. step,
    allowed_memory [B, S, step * S] over target entries then the feedback of steps 1 .. step - 1)."""
    b, s = valid.shape
    depth = step - 1
    index = torch.arange(s, device=valid.device)
    offset = index[None, :] - index[:, None]                         # [S, S]: key index j - query index i
    # Step-1 keys up to the root r = i - depth (the committed prefix and the root), target entries before it.
    prefix_keys = (offset <= -depth) & valid[:, None, :]             # [B, S, S]
    prefix_entries = (offset < -depth) & valid[:, None, :]
    # Step t's key and feedback along the chain sit at j = r + t - 1 = i - step + t (t = step: i itself).
    chain = [(offset == t - step).expand(b, s, s) for t in range(1, step + 1)]
    return torch.cat([prefix_keys, *chain[1:]], dim=-1), torch.cat([prefix_entries, *chain[:-1]], dim=-1)


def chain_exists(positions: Tensor, valid: Tensor, step: int) -> Tensor:
    """[B, S] bool: index i has a chain of depth step - 1 behind it (real tokens at consecutive positions)."""
    depth = step - 1
    index = torch.arange(positions.shape[1], device=positions.device)
    root = (index - depth).clamp(min=0)
    return (index >= depth) & (positions - positions[:, root] == depth) & valid
