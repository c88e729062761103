"""Unit tests of the tree mask builder and of the cache commit, against brute-force references."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import causal_mask_function, sdpa_mask, sliding_window_causal_mask_function

from dream.target.attention import dream_mask, register_dream_attention, tree_verify
from dream.target.cache import TargetCache, keep_tree_entries
from dream.target.masks import TreeLayout, tree_mask
from fixtures import ancestors_from_parents, depths_from_parents

PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 5]


def brute_force_mask(prefix: int, parents: list[int], window: int | None) -> torch.Tensor:
    """[N, prefix + N]: node i sees prefix key p, or tree node j, iff it is visible by the ancestor rule
    and (with a window) its position lies within the window of node i's position."""
    anc, depths = ancestors_from_parents(parents), depths_from_parents(parents)
    n = len(parents)
    mask = torch.zeros(n, prefix + n, dtype=torch.bool)
    for i in range(n):
        q_pos = prefix + int(depths[i])
        for k in range(prefix + n):
            k_pos = k if k < prefix else prefix + int(depths[k - prefix])
            visible = k < prefix or bool(anc[i, k - prefix])
            in_window = window is None or k_pos > q_pos - window
            mask[i, k] = visible and in_window
    return mask


@pytest.mark.parametrize("window", [None, 3, 6])
@pytest.mark.parametrize("prefix", [0, 5])
def test_tree_mask_matches_brute_force(prefix, window):
    layout = TreeLayout(prefix, depths_from_parents(PARENTS), ancestors_from_parents(PARENTS))
    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    mask = tree_mask(layout, kv_length=prefix + len(PARENTS), mask_function=fn)
    assert mask.shape == (1, 1, len(PARENTS), prefix + len(PARENTS))
    assert torch.equal(mask[0, 0], brute_force_mask(prefix, PARENTS, window))


def test_dream_mask_is_sdpa_mask_outside_a_tree_forward():
    register_dream_attention()
    kwargs = dict(batch_size=1, q_length=4, kv_length=9, q_offset=5, kv_offset=0, allow_is_causal_skip=False)
    assert torch.equal(dream_mask(**kwargs), sdpa_mask(**kwargs))
    layout = TreeLayout(5, depths_from_parents([-1, 0, 0, 1]), ancestors_from_parents([-1, 0, 0, 1]))
    with tree_verify(layout, "masked"):
        inside = dream_mask(**kwargs)
    assert torch.equal(inside[0, 0], brute_force_mask(5, [-1, 0, 0, 1], None))
    assert torch.equal(dream_mask(**kwargs), sdpa_mask(**kwargs))  # the context restored the plain builder


def filled_cache(total: int, layers: int = 2) -> TargetCache:
    cache = TargetCache()
    for layer in range(layers):
        keys = torch.arange(total, dtype=torch.float32).view(1, 1, total, 1).expand(1, 2, total, 3) + 100 * layer
        cache.update(keys.clone(), -keys.clone(), layer)
    return cache


@pytest.mark.parametrize("keep", [[0, 2, 5, 8], [0, 1, 2], [0], [3, 1]])
def test_commit_keeps_prefix_and_listed_entries_in_order(keep):
    prefix, num_tree = 6, 9
    cache = filled_cache(prefix + num_tree)
    keep_tree_entries(cache, num_tree, torch.tensor(keep))
    expected = torch.tensor(list(range(prefix)) + [prefix + k for k in keep], dtype=torch.float32)
    assert cache.get_seq_length() == prefix + len(keep)
    for layer_idx, layer in enumerate(cache.layers):
        assert torch.equal(layer.keys[0, 1, :, 0], expected + 100 * layer_idx)
        assert torch.equal(layer.values[0, 0, :, 2], -(expected + 100 * layer_idx))


def test_commit_rejects_bad_arguments():
    cache = filled_cache(5)
    with pytest.raises(ValueError, match="num_tree"):
        keep_tree_entries(cache, 6, torch.tensor([0]))
    with pytest.raises(ValueError, match="keep indices"):
        keep_tree_entries(cache, 3, torch.tensor([0, 3]))
