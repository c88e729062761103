"""Tree attention masks for the masked verify, built inside each model's own mask pipeline.

The "dream" mask builder (attention.py) hands a masked tree verify's requests to `tree_mask`, which
evaluates the model's own mask function (causal, sliding window, ...) on token POSITIONS rather than cache
indices, and ANDs in the ancestor matrix. Because every model asks for its masks through that builder,
per-layer-type masks (Gemma3's full + sliding layers) come out right without any per-family code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from transformers.masking_utils import causal_mask_function


@dataclass(frozen=True)
class TreeLayout:
    """Where the N tree nodes of a verification forward sit, relative to the committed prefix."""

    prefix_len: int  # committed tokens in the cache before the tree
    depths: Tensor  # [N] long; node i has position prefix_len + depths[i]
    ancestors: Tensor  # [N, N] bool; ancestors[i, j] iff j == i or j is an ancestor of i

    @property
    def positions(self) -> Tensor:  # [N]
        return self.prefix_len + self.depths


def tree_mask(
    layout: TreeLayout,
    kv_length: int,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    batch_size: int = 1,
) -> Tensor:
    """[B, 1, N, kv_length] bool: True where node i may attend to cache entry kv_offset + k.

    Prefix entries are addressed by their position (= cache index); tree entries by their node's position,
    so a sliding window in `mask_function` applies by position, as in a plain forward over the path.
    """
    prefix, depths = layout.prefix_len, layout.depths
    n = depths.shape[0]
    device = depths.device
    kv_index = torch.arange(kv_offset, kv_offset + kv_length, device=device)
    node = (kv_index - prefix).clamp(0, n - 1)
    in_tree = kv_index >= prefix
    kv_pos = torch.where(in_tree, prefix + depths[node], kv_index)
    allowed = mask_function(
        torch.arange(batch_size, device=device)[:, None, None, None],
        torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None],
        layout.positions[None, None, :, None],
        kv_pos[None, None, None, :],
    )
    tree_ok = torch.where(in_tree[None, :], layout.ancestors.to(device)[:, node], True)  # [N, kv]
    return (allowed & tree_ok).expand(batch_size, 1, n, kv_length)
