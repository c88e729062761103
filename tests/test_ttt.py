"""Training-time test (dream.training.ttt): step k of the unrolled draft equals a depth-(k - 1) tree chain run
the proposer's way (incremental forwards that remember the draft's own feedback), so step 2 really reads the
draft's outputs and not the target's; which indices each step trains; padding changes no real row."""

from __future__ import annotations

import pytest
import torch
from fixtures import open_draft

from dream.draft import DraftConfig, SharedHead, build_draft
from dream.training.ttt import chain_exists, unroll

H, V = 32, 50
ARCHITECTURES = ("dream", "eagle2", "eagle3")
POSITIONS = torch.tensor([[0, 1, 2, 6, 7, 8, 9, 10]])     # a gap, as after visual-token pruning


def tiny_draft(architecture: str):
    single = {"blocks": ("self",)} if architecture != "dream" else {}
    aux = {"aux_layers": (1, 2, 3)} if architecture == "eagle3" else {}
    torch.manual_seed(0)
    cfg = DraftConfig(architecture=architecture, hidden_size=H, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, intermediate_size=64, vocab_size=V, **single, **aux)
    draft = open_draft(build_draft(cfg), std=0.2)
    draft.bind_head(SharedHead(torch.randn(V, H), None, None))
    return draft.eval()


def inputs(draft, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """embeds [1, S, H] and target entries [1, S, W] (W = 3H for eagle3: its three layer states)."""
    generator = torch.Generator().manual_seed(seed)
    s = POSITIONS.shape[1]
    layers = torch.randn(1, s, len(draft.target_layers) or 1, H, generator=generator)
    entries = draft.target_entries(layers[:, :, 0], layers if draft.target_layers else None)
    return torch.randn(1, s, H, generator=generator), entries


def chain_reference(draft, embeds: torch.Tensor, entries: torch.Tensor, index: int, depth: int) -> torch.Tensor:
    """The proposer's way: the prefix and the root r = index - depth forwarded with target entries before r,
    then one node per depth, each after remembering its parent's feedback. -> features [H] at `index`."""
    root = index - depth
    state = draft.new_state()
    draft.remember(state, entries[:, :root])
    n = root + 1
    earlier = torch.arange(root)[None, :] < torch.arange(n)[:, None]
    out = draft.forward_step(state, embeds[:, :n], POSITIONS[0, :n], torch.ones(n, n, dtype=torch.bool).tril(),
                             earlier)
    for node in range(root + 1, index + 1):
        draft.remember(state, draft.feedback(out)[:, -1:])
        everything = (torch.ones(1, state.self_length + 1, dtype=torch.bool),
                      torch.ones(1, state.memory_length, dtype=torch.bool))
        out = draft.forward_step(state, embeds[:, node:node + 1], POSITIONS[0, node:node + 1], *everything)
    return out.features[0, -1]


@torch.no_grad()
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unrolled_steps_are_tree_chains_on_the_drafts_own_feedback(architecture):
    draft = tiny_draft(architecture)
    embeds, entries = inputs(draft)
    loss_mask = torch.ones(POSITIONS.shape, dtype=torch.bool)
    steps = unroll(draft, embeds, entries, POSITIONS, None, loss_mask, 3)
    # The chains that exist: depth 1 needs consecutive positions i - 1, i; depth 2 three of them.
    assert steps[0].loss_mask.tolist() == [[True] * 8]
    assert steps[1].loss_mask.tolist() == [[False, True, True, False, True, True, True, True]]
    assert steps[2].loss_mask.tolist() == [[False, False, True, False, False, True, True, True]]
    for k, step in enumerate(steps):
        for index in step.loss_mask[0].nonzero().flatten().tolist():
            reference = chain_reference(draft, embeds, entries, index, depth=k)
            torch.testing.assert_close(step.output.features[0, index], reference, rtol=0, atol=2e-5)
    # Step 2 reads the draft's own output where teacher forcing read the target's entry: it differs.
    trained = steps[1].loss_mask[0]
    assert not torch.allclose(steps[1].output.features[0, trained], steps[0].output.features[0, trained], atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_padding_changes_no_real_row(architecture):
    draft = tiny_draft(architecture)
    embeds, entries = inputs(draft)
    loss_mask = torch.ones(POSITIONS.shape, dtype=torch.bool)
    alone = unroll(draft, embeds[:, :6], entries[:, :6], POSITIONS[:, :6], None, loss_mask[:, :6], 3)
    other_embeds, other_entries = inputs(draft, seed=2)
    attention_mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8])
    padded = unroll(draft, torch.cat([embeds, other_embeds]), torch.cat([entries, other_entries]),
                    torch.cat([POSITIONS, POSITIONS]), attention_mask, attention_mask.bool(), 3)
    for a, b in zip(alone, padded):
        assert torch.equal(b.loss_mask[0, :6], a.loss_mask[0]) and not b.loss_mask[0, 6:].any()
        torch.testing.assert_close(b.output.features[0, :6], a.output.features[0], rtol=0, atol=2e-5)


def test_chains_need_real_consecutive_tokens():
    positions = torch.tensor([[0, 1, 4, 5, 6, 0]])
    valid = torch.tensor([[True] * 5 + [False]])
    assert chain_exists(positions, valid, 1).tolist() == [[True] * 5 + [False]]
    assert chain_exists(positions, valid, 3).tolist() == [[False, False, False, False, True, False]]
    with pytest.raises(ValueError, match="steps >= 1"):
        draft = tiny_draft("eagle2")
        unroll(draft, *inputs(draft), POSITIONS, None, torch.ones(POSITIONS.shape, dtype=torch.bool), 0)
