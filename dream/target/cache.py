"""The target's KV cache and the commit of an accepted tree path."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache


class TargetCache(DynamicCache):
    """A DynamicCache built without a config, plus the sequence's rotary position offset.

    Without a config every layer keeps full length, sliding-window layers included: a window layer that
    trimmed itself would drop prefix entries a shorter accepted path still needs, making the commit
    impossible. The window then lives only in the masks (exact; costs memory on sliding layers).
    """

    def __init__(self) -> None:
        super().__init__()
        # Qwen2-VL family: M-RoPE position of a text token = its sequence index + rope_delta (set by prefill).
        self.rope_delta = 0


def keep_tree_entries(cache: DynamicCache, num_tree: int, keep: Tensor) -> None:
    """Keep the entries `keep` ([k] indices into the last `num_tree` entries), in order; drop the rest.

    Afterwards the cache is exactly what feeding only the kept tokens would have produced: keys and values
    were computed with the kept tokens' true positions and with masks that showed each of them only its
    ancestors, which are the kept tokens before it.
    """
    total = cache.get_seq_length()
    if not 0 < num_tree <= total:
        raise ValueError(f"num_tree={num_tree} must be in 1..{total} (the cache length)")
    keep = keep.to(torch.long).flatten()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= num_tree):
        raise ValueError(f"keep indices must lie in 0..{num_tree - 1}, got {keep.tolist()}")
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        raise ValueError("cannot commit into a sliding-window cache layer; use TargetAdapter.new_cache()")
    prefix, k = total - num_tree, keep.numel()
    contiguous = torch.equal(keep.cpu(), torch.arange(k))
    for layer in cache.layers:
        if not contiguous:
            # Only the tree region moves: gather the kept entries, write them right after the prefix.
            index = (prefix + keep).to(layer.keys.device)
            layer.keys[:, :, prefix : prefix + k] = layer.keys.index_select(2, index)
            layer.values[:, :, prefix : prefix + k] = layer.values.index_select(2, index)
        layer.keys = layer.keys[:, :, : prefix + k]
        layer.values = layer.values[:, :, : prefix + k]
