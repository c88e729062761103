"""Drafts for lossless tests that are worth running: trained on the target's own answer, so they get accepted."""

from __future__ import annotations

import torch
from torch import Tensor

from dream.draft import DraftConfig, build_draft, target_head
from dream.draft.compression import select_kept_positions
from dream.target import TargetInputs
from dream.target.inputs import PER_TOKEN_KWARGS
from dream.training.loop import Batch, forward_loss
from dream.training.losses import LossWeights, teacher_forced_loss

# As `dream train` defaults (dream.training.train): EAGLE-3 trains its drafted steps on its own feedback
# (training-time test, 3 steps) and drops the feature regression. Without TTT an EAGLE-3 draft only gets its
# first drafted token right: later ones read its pre-norm feedback, which teacher forcing never shows it.
TTT_STEPS = {"eagle3": 3}


def overfit_draft(target, inputs: TargetInputs, continuation: list[int], architecture: str,
                  vocab_map: Tensor | None = None, steps: int = 150):
    """A draft trained on the target's own greedy continuation of `inputs`, on the visual tokens compression
    keeps (as dream train does; EAGLE-3 with training-time test): it drafts that continuation, so its trees get
    accepted and a lossless test then exercises acceptance, commits and the accepted-feature updates."""
    torch.manual_seed(0)
    extra = len(continuation)
    ids = torch.cat([inputs.input_ids, torch.tensor([continuation])], dim=1)
    kwargs = {k: torch.cat([v, v.new_zeros(1, extra)], dim=1) if k in PER_TOKEN_KWARGS else v
              for k, v in inputs.model_kwargs.items()}
    visual = torch.cat([inputs.visual_mask, torch.zeros(1, extra, dtype=torch.bool)], dim=1)
    over = {} if vocab_map is None else {"draft_vocab_size": vocab_map.shape[0]}
    draft = build_draft(DraftConfig.from_target(target, architecture, **over))
    layers = draft.target_layers
    out = target.prefill(TargetInputs(ids, visual, kwargs), target.new_cache(), visual_scores=True, layers=layers)
    layer_outputs = torch.stack([out.layer_outputs[layer] for layer in layers], dim=2) if layers else None
    memory = draft.target_entries(out.features, layer_outputs)                    # [1, S, W]
    if vocab_map is not None:
        draft.set_vocab_map(vocab_map)
    draft.bind_head(target_head(target))
    kept = torch.arange(ids.shape[1])
    if bool(visual.any()):
        kept = select_kept_positions(visual[0], out.stats.visual_scores, draft.config.keep_ratio)
    loss_mask = torch.zeros(1, ids.shape[1], dtype=torch.bool)
    loss_mask[0, inputs.input_ids.shape[1] - 1 : -1] = True        # positions whose next token is generated
    ttt_steps = TTT_STEPS.get(architecture, 1)
    batch = Batch(input_embeds=out.input_embeds[:, kept], memory=memory[:, kept], features=out.features[:, kept],
                  mid=out.features[:, kept], positions=kept[None], attention_mask=torch.ones_like(kept)[None],
                  loss_mask=loss_mask[:, kept])
    optimizer = torch.optim.AdamW(draft.parameters(), lr=3e-3)
    for _ in range(steps):
        if ttt_steps > 1:
            loss = forward_loss(draft, batch, LossWeights(feature=0.0, mid=0.0, kl=1.0), ttt_steps).terms.total
        else:
            loss = teacher_forced_loss(draft, input_embeds=batch.input_embeds, target_features=batch.features,
                                       target_mid=None, positions=batch.positions, attention_mask=None,
                                       loss_mask=batch.loss_mask, weights=LossWeights(feature=0.2, mid=0.0, kl=1.0),
                                       target_memory=batch.memory).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return draft
