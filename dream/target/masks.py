"""Tree attention masks, built inside each model's own mask pipeline.

The adapter registers `dream_mask` as the mask builder of the "dream" attention implementation. Outside a
tree forward it is exactly transformers' `sdpa_mask`. Inside one (`tree_attention`), it evaluates the
model's own mask function (causal, sliding window, ...) on token POSITIONS rather than cache indices, and
ANDs in the ancestor matrix. Because every model asks for its masks through this builder, per-layer-type
masks (Gemma3's full + sliding layers) come out right without any per-family code. Inside an exact tree
forward (exact.py) it builds nothing: the attention function picks each node's keys itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor
from transformers.masking_utils import causal_mask_function, sdpa_mask

from .exact import active_groups


@dataclass(frozen=True)
class TreeLayout:
    """Where the N tree nodes of a verification forward sit, relative to the committed prefix."""

    prefix_len: int  # committed tokens in the cache before the tree
    depths: Tensor  # [N] long; node i has position prefix_len + depths[i]
    ancestors: Tensor  # [N, N] bool; ancestors[i, j] iff j == i or j is an ancestor of i

    @property
    def positions(self) -> Tensor:  # [N]
        return self.prefix_len + self.depths


_ACTIVE_TREE: ContextVar[TreeLayout | None] = ContextVar("dream_active_tree", default=None)


@contextmanager
def tree_attention(layout: TreeLayout) -> Iterator[None]:
    """Within this block, masks requested through `dream_mask` are tree masks for `layout`."""
    token = _ACTIVE_TREE.set(layout)
    try:
        yield
    finally:
        _ACTIVE_TREE.reset(token)


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


def dream_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: Tensor | None = None,
    **kwargs,
) -> Tensor | None:
    """Mask builder registered in `AttentionMaskInterface` under the "dream" name."""
    if active_groups() is not None:
        return None  # exact tree attention picks each node's keys itself
    layout = _ACTIVE_TREE.get()
    if layout is None:
        return sdpa_mask(
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            mask_function=mask_function,
            attention_mask=attention_mask,
            **kwargs,
        )
    assert attention_mask is None, "tree forwards take no padding mask"
    assert q_length == layout.depths.shape[0] and int(q_offset) == layout.prefix_len, "tree layout out of sync"
    return tree_mask(layout, kv_length, kv_offset, mask_function, batch_size)
