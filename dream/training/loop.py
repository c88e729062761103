"""The pieces of a training step: which samples, how a sample becomes draft inputs, the loss, evaluation.

Determinism: every random choice is a function of (seed, step, slot in the global batch): the split, the
epoch permutations, the feature noise. So the global batch of step s is the same whatever the number of
ranks (rank r takes a contiguous slice of it), and a resumed run draws exactly what an uninterrupted run
would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from dream.draft.compression import prune, select_kept_positions
from dream.training.distributed import Distributed
from dream.draft import DraftModel
from dream.training.losses import LossTerms, LossWeights, draft_loss
from dream.training.shards import ShardDataset, ShardSample
from dream.training.ttt import unroll


def split_indices(num_samples: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) sample indices, both sorted: a seeded random val_fraction (at least one sample when the
    fraction is positive) is held out."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_val = 0 if val_fraction == 0 else max(1, round(val_fraction * num_samples))
    if num_samples - num_val < 1:
        raise ValueError(f"{num_samples} sample(s) leave nothing to train on after a {val_fraction} validation split")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[num_val:]), sorted(order[:num_val])


class BatchSchedule:
    """Global batch of each step: consecutive slices of a stream of seeded per-epoch permutations."""

    def __init__(self, train_indices: Sequence[int], batch_size: int, seed: int) -> None:
        self.train = list(train_indices)
        self.batch_size = batch_size
        self.seed = seed
        self._epoch: tuple[int, list[int]] = (-1, [])

    def global_batch(self, step: int) -> list[int]:
        """Sample indices of 1-based `step`."""
        return [self._at((step - 1) * self.batch_size + j) for j in range(self.batch_size)]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.train))
        if self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._epoch = (epoch, torch.randperm(len(self.train), generator=generator).tolist())
        return self.train[self._epoch[1][offset]]


def local_slice(global_batch_size: int, ctx: Distributed) -> slice:
    """The contiguous part of a global batch this rank processes."""
    assert global_batch_size % ctx.world_size == 0
    per_rank = global_batch_size // ctx.world_size
    return slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


def noise_generator(seed: int, step: int, slot: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 10_007 + slot)


@dataclass
class Batch:
    input_embeds: Tensor      # [B, S, H] merged input embeddings (pruned, right-padded)
    memory: Tensor            # [B, S, W] target entries the draft reads (DraftModel.target_entries; noised at
                              #   training): the features, or EAGLE-3's three layer states (W = 3H)
    features: Tensor          # [B, S, H] clean target features: regression and distribution targets
    mid: Tensor               # [B, S, H] output of the entropy-selected layer
    positions: Tensor         # [B, S] long, original target positions (gaps where visual tokens were pruned)
    attention_mask: Tensor    # [B, S] 1 = real token
    loss_mask: Tensor         # [B, S] bool


@torch.no_grad()
def make_batch(dataset: ShardDataset, indices: Sequence[int], target: Any, draft: DraftModel,
               noise: float, generators: Sequence[torch.Generator] | None, device: torch.device) -> Batch:
    """Samples -> a padded batch for `draft`. Visual tokens are pruned at its keep ratio exactly as
    DraftProposer.begin prunes them at inference (dream.draft.compression, stored last-layer scores); every
    per-position tensor goes with them.
    With `generators` (one per sample), uniform noise U(-noise/2, noise/2) is added to the memory only
    (EAGLE's augmentation; its extra 512 / seq_len factor is left out, so the noise does not depend on
    padding)."""
    rows: list[dict[str, Tensor]] = []
    for j, index in enumerate(indices):
        sample = dataset[index]
        embeds = target.embed(sample.input_ids.to(device)).float()                      # [S, H]
        embeds[sample.visual_positions.to(device)] = sample.visual_embeds.to(device, torch.float32)
        kept = _kept(sample, draft.config.keep_ratio)
        entries = draft.target_entries(sample.features.float(), sample.aux_features.float())
        embeds, memory, features, mid, loss_mask = prune(kept, embeds, entries, sample.features.float(),
                                                         sample.mid_features.float(), sample.loss_mask)
        if generators is not None and noise > 0:
            memory = memory + (torch.rand(memory.shape, generator=generators[j]) - 0.5) * noise
        rows.append({"input_embeds": embeds, "memory": memory, "features": features, "mid": mid,
                     "positions": kept, "loss_mask": loss_mask})
    lengths = torch.tensor([row["positions"].shape[0] for row in rows], device=device)
    length = int(lengths.max())

    def stack(name: str) -> Tensor:
        # Right-pad dim 0 of every row (F.pad lists the last dim first).
        return torch.stack([torch.nn.functional.pad(row[name].to(device), (0, 0) * (row[name].dim() - 1)
                                                    + (0, length - row[name].shape[0])) for row in rows])

    attention_mask = (torch.arange(length, device=device)[None] < lengths[:, None]).long()
    return Batch(**{name: stack(name) for name in rows[0]}, attention_mask=attention_mask)


def _kept(sample: ShardSample, keep_ratio: float) -> Tensor:
    if keep_ratio >= 1.0 or sample.visual_positions.numel() == 0:
        return torch.arange(sample.input_ids.shape[0])
    return select_kept_positions(sample.visual_mask, sample.visual_scores, keep_ratio)


@dataclass(frozen=True)
class BatchLoss:
    terms: LossTerms
    draft_logits: Tensor | None      # [n, V_draft] at the loss rows, step after step (when asked)
    target_features: Tensor          # [n, H] the target's clean features at those rows
    rows_per_step: list[int]         # the rows of each training-time-test step, in order (sum n)


def forward_loss(draft: DraftModel, batch: Batch, weights: LossWeights, ttt_steps: int = 1,
                 with_logits: bool = False) -> BatchLoss:
    """The DREAM loss (dream.training.losses.draft_loss) on one batch, averaged over the loss rows of every
    training-time-test step (dream.training.ttt; 1 step = teacher forcing). Not
    dream.training.losses.teacher_forced_loss: that one feeds the same features as memory input and as
    target, while training reads noised entries and regresses onto clean features."""
    steps = unroll(draft, batch.input_embeds, batch.memory, batch.positions, batch.attention_mask, batch.loss_mask,
                   ttt_steps)

    def draft_rows(name: str) -> Tensor:
        """[n, H]: a draft output at the loss rows of every step."""
        return torch.cat([getattr(step.output, name)[step.loss_mask] for step in steps])

    def batch_rows(tensor: Tensor) -> Tensor:
        """[n, H]: a batch tensor [B, S, H] at the loss rows of every step (each step's target is its index's)."""
        return torch.cat([tensor[step.loss_mask] for step in steps])

    features = draft_rows("features")
    draft_logits = draft.head(features) if weights.kl or with_logits else None
    target_features = batch_rows(batch.features)
    target_logits = None
    if weights.kl:
        with torch.no_grad():
            # The draft's head is the target's (restricted to the draft vocabulary when reduced).
            target_logits = draft.head(target_features.to(draft.dtype))
    terms = draft_loss(
        loss_mask=torch.ones(features.shape[0], dtype=torch.bool, device=features.device),
        draft_features=features, target_features=target_features,
        draft_first=draft_rows("first_hidden"), target_mid=batch_rows(batch.mid),
        draft_logits=draft_logits, target_logits=target_logits, weights=weights,
    )
    return BatchLoss(terms, draft_logits if with_logits else None, target_features,
                     [int(step.loss_mask.sum()) for step in steps])


class LossModule(torch.nn.Module):
    """The draft behind a forward() that returns the loss: what DistributedDataParallel wraps (it syncs
    gradients of whatever its forward computes)."""

    def __init__(self, draft: DraftModel, weights: LossWeights, ttt_steps: int) -> None:
        super().__init__()
        self.draft = draft
        self.weights = weights
        self.ttt_steps = ttt_steps

    def forward(self, batch: Batch) -> LossTerms:
        return forward_loss(self.draft, batch, self.weights, self.ttt_steps).terms


@torch.no_grad()
def evaluate(draft: DraftModel, dataset: ShardDataset, val_indices: Sequence[int], target: Any, weights: LossWeights,
             ttt_steps: int, batch_size: int, ctx: Distributed, autocast: Any) -> dict[str, Any]:
    """Validation loss terms (row-weighted means over every training-time-test step) and top-1 agreement: the
    draft's argmax (mapped to target ids) equals the target's argmax over its full vocabulary, at loss tokens,
    without noise; val_top1 at step 1 (teacher forcing), and with several steps val_top1_by_step. Ranks split
    the samples and sum."""
    # loss, feature, mid, kl, rows; then agreements and rows of each step
    sums = torch.zeros(5 + 2 * ttt_steps, dtype=torch.float64, device=ctx.device)
    mine = list(val_indices)[ctx.rank::ctx.world_size]
    for start in range(0, len(mine), batch_size):
        batch = make_batch(dataset, mine[start: start + batch_size], target, draft, 0.0, None, ctx.device)
        with autocast():
            loss = forward_loss(draft, batch, weights, ttt_steps, with_logits=True)
        draft_top = loss.draft_logits.argmax(-1)
        if draft.vocab_map is not None:
            draft_top = draft.vocab_map[draft_top]
        target_top = target.head(loss.target_features.to(target.model.dtype)).argmax(-1)
        agree = [int(part.sum()) for part in (draft_top == target_top).split(loss.rows_per_step)]
        terms, n = loss.terms, loss.terms.num_tokens
        sums += torch.tensor([terms.total.item() * n, terms.feature.item() * n, terms.mid.item() * n,
                              terms.kl.item() * n, n, *agree, *loss.rows_per_step],
                             dtype=torch.float64, device=ctx.device)
    ctx.all_reduce_sum(sums)
    n = max(sums[4].item(), 1.0)
    by_step = [sums[5 + k].item() / max(sums[5 + ttt_steps + k].item(), 1.0) for k in range(ttt_steps)]
    metrics: dict[str, Any] = {"val_loss": sums[0].item() / n, "val_feature": sums[1].item() / n,
                               "val_mid": sums[2].item() / n, "val_kl": sums[3].item() / n,
                               "val_tokens": int(sums[4].item()), "val_top1": by_step[0]}
    if ttt_steps > 1:
        metrics["val_top1_by_step"] = by_step
    return metrics
