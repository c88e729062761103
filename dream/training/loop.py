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
    memory: Tensor            # [B, S, H] target features the draft reads (noised at training)
    features: Tensor          # [B, S, H] clean target features: regression and distribution targets
    mid: Tensor               # [B, S, H] output of the entropy-selected layer
    positions: Tensor         # [B, S] long, original target positions (gaps where visual tokens were pruned)
    attention_mask: Tensor    # [B, S] 1 = real token
    loss_mask: Tensor         # [B, S] bool


@torch.no_grad()
def make_batch(dataset: ShardDataset, indices: Sequence[int], target: Any, keep_ratio: float,
               noise: float, generators: Sequence[torch.Generator] | None, device: torch.device) -> Batch:
    """Samples -> a padded batch. Visual tokens are pruned exactly as DraftProposer.begin prunes them at
    inference (dream.draft.compression, stored last-layer scores); every per-position tensor goes with them.
    With `generators` (one per sample), uniform noise U(-noise/2, noise/2) is added to the memory only
    (EAGLE's augmentation; its extra 512 / seq_len factor is left out, so the noise does not depend on
    padding)."""
    rows: list[dict[str, Tensor]] = []
    for j, index in enumerate(indices):
        sample = dataset[index]
        embeds = target.embed(sample.input_ids.to(device)).float()                      # [S, H]
        embeds[sample.visual_positions.to(device)] = sample.visual_embeds.to(device, torch.float32)
        kept = _kept(sample, keep_ratio)
        embeds, features, mid, loss_mask = prune(kept, embeds, sample.features.float(), sample.mid_features.float(),
                                                 sample.loss_mask)
        memory = features
        if generators is not None and noise > 0:
            memory = features + (torch.rand(features.shape, generator=generators[j]) - 0.5) * noise
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


def forward_loss(draft: DraftModel, batch: Batch, weights: LossWeights,
                 with_logits: bool = False) -> tuple[LossTerms, Tensor | None]:
    """The DREAM loss (dream.training.losses.draft_loss) on one batch, and the draft's logits at the loss tokens when
    asked. Not dream.training.losses.teacher_forced_loss: that one feeds the same features as memory input and as
    target, while training reads noised features and regresses onto clean ones."""
    sel = batch.loss_mask
    want_logits = bool(weights.kl) or with_logits
    out = draft.forward_train(batch.input_embeds, batch.memory, batch.positions, batch.attention_mask,
                              logits_at=sel if want_logits else None, with_logits=False)
    target_logits = None
    if weights.kl:
        with torch.no_grad():
            # The draft's head is the target's (restricted to the draft vocabulary when reduced).
            target_logits = draft.head(batch.features[sel].to(draft.dtype))
    terms = draft_loss(
        loss_mask=torch.ones(int(sel.sum()), dtype=torch.bool, device=sel.device),
        draft_features=out.features[sel], target_features=batch.features[sel],
        draft_first=out.first_hidden[sel], target_mid=batch.mid[sel],
        draft_logits=out.logits, target_logits=target_logits, weights=weights,
    )
    return terms, out.logits if with_logits else None


class LossModule(torch.nn.Module):
    """The draft behind a forward() that returns the loss: what DistributedDataParallel wraps (it syncs
    gradients of whatever its forward computes)."""

    def __init__(self, draft: DraftModel, weights: LossWeights) -> None:
        super().__init__()
        self.draft = draft
        self.weights = weights

    def forward(self, batch: Batch) -> LossTerms:
        return forward_loss(self.draft, batch, self.weights)[0]


@torch.no_grad()
def evaluate(draft: DraftModel, dataset: ShardDataset, val_indices: Sequence[int], target: Any, keep_ratio: float,
             weights: LossWeights, batch_size: int, ctx: Distributed, autocast: Any) -> dict[str, float]:
    """Validation loss terms (token-weighted means) and top-1 agreement: the draft's argmax (mapped to target
    ids) equals the target's argmax over its full vocabulary, at loss tokens, without noise. Ranks split
    the samples and sum."""
    sums = torch.zeros(6, dtype=torch.float64, device=ctx.device)    # loss, feature, mid, kl, tokens, agree
    mine = list(val_indices)[ctx.rank::ctx.world_size]
    for start in range(0, len(mine), batch_size):
        batch = make_batch(dataset, mine[start: start + batch_size], target, keep_ratio, 0.0, None, ctx.device)
        with autocast():
            terms, logits = forward_loss(draft, batch, weights, with_logits=True)
        draft_top = logits.argmax(-1)
        if draft.vocab_map is not None:
            draft_top = draft.vocab_map[draft_top]
        target_top = target.head(batch.features[batch.loss_mask].to(target.model.dtype)).argmax(-1)
        n = terms.num_tokens
        sums += torch.tensor([terms.total.item() * n, terms.feature.item() * n, terms.mid.item() * n,
                              terms.kl.item() * n, n, int((draft_top == target_top).sum())],
                             dtype=torch.float64, device=ctx.device)
    ctx.all_reduce_sum(sums)
    n = max(sums[4].item(), 1.0)
    return {"val_loss": sums[0].item() / n, "val_feature": sums[1].item() / n, "val_mid": sums[2].item() / n,
            "val_kl": sums[3].item() / n, "val_tokens": int(sums[4].item()), "val_top1": sums[5].item() / n}
