"""Visual-token compression: exactly the top fraction (ceil, at least one) of visual tokens by score, every
text token, sorted original positions; one index set prunes every per-position tensor."""

from __future__ import annotations

import math

import pytest
import torch

from dream.draft.compression import num_kept, prune, select_kept_positions


def test_keeps_exactly_the_top_fraction_and_all_text():
    #              text text  v    v    v    v   text  v    v   text
    visual_mask = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    scores = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.2, 0.8])      # visual positions 2, 3, 4, 5, 7, 8
    kept = select_kept_positions(visual_mask, scores, keep_ratio=0.5)
    # ceil(0.5 * 6) = 3 best: 0.9 (pos 3), 0.8 (pos 8), 0.5 (pos 5)
    assert kept.tolist() == [0, 1, 3, 5, 6, 8, 9]
    kept = select_kept_positions(visual_mask, scores, keep_ratio=0.75)
    # ceil(4.5) = 5: everything but the lowest score 0.1 (pos 2)
    assert kept.tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert select_kept_positions(visual_mask, scores, keep_ratio=1.0).tolist() == list(range(10))


@pytest.mark.parametrize("ratio", [0.01, 0.25, 0.5, 0.7, 0.75, 0.9, 1.0])
def test_count_is_ceil_and_at_least_one(ratio):
    generator = torch.Generator().manual_seed(0)
    for n in (1, 3, 10, 64, 81):
        visual_mask = torch.zeros(n + 4, dtype=torch.bool)
        visual_mask[2 : 2 + n] = True
        scores = torch.rand(n, generator=generator)
        kept = select_kept_positions(visual_mask, scores, ratio)
        expected = max(1, math.ceil(round(ratio * n, 9)))
        assert num_kept(n, ratio) == expected
        assert int(visual_mask[kept].sum()) == expected
        assert int((~visual_mask[kept]).sum()) == 4
        assert torch.equal(kept, kept.sort().values)
        kept_visual = kept[visual_mask[kept]] - 2                      # indices into scores
        dropped = [i for i in range(n) if i not in kept_visual.tolist()]
        if dropped:
            assert scores[kept_visual].min() >= scores[dropped].max()


def test_ties_go_to_the_earlier_token_and_no_visual_tokens_is_fine():
    visual_mask = torch.tensor([1, 1, 1, 1], dtype=torch.bool)
    assert select_kept_positions(visual_mask, torch.ones(4), 0.5).tolist() == [0, 1]
    text_only = torch.zeros(3, dtype=torch.bool)
    assert select_kept_positions(text_only, torch.zeros(0), 0.5).tolist() == [0, 1, 2]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="keep_ratio"):
        select_kept_positions(torch.ones(3, dtype=torch.bool), torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="one score per visual token"):
        select_kept_positions(torch.ones(3, dtype=torch.bool), torch.ones(2), 0.5)


def test_prune_applies_one_index_set_to_every_stream():
    kept = torch.tensor([0, 2, 3])
    embeds = torch.arange(4 * 2).view(4, 2)
    features = embeds + 100
    loss_mask = torch.tensor([False, True, False, True])
    pruned_embeds, pruned_features, pruned_mask, none = prune(kept, embeds, features, loss_mask, None)
    assert pruned_embeds.tolist() == [[0, 1], [4, 5], [6, 7]]
    assert torch.equal(pruned_features, pruned_embeds + 100)
    assert pruned_mask.tolist() == [False, False, True]
    assert none is None
    assert torch.equal(prune(kept, embeds[None], dim=1)[0][0], pruned_embeds)
