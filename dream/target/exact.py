"""Exact tree attention under sdpa: every tree node attends the way a one-token decoding step would for it.

Why (docs/exactness.md): in bf16 on a CPU, sdpa's result for one query depends on what else the call holds.
The same query over L keys differs (up to ~1e-3) from that query over L + 11 keys with the 11 masked, and a
one-token step with an explicit mask (transformers then packs the GQA heads into query rows) differs from
one without (enable_gqa). A tree verify that masks its extra keys therefore drifts from plain decoding and
greedy outputs can part at near ties. Everything else in the forward (linear layers, norms, rotary) gives a
row the same result whatever rows come with it, so fixing attention makes the whole verify exact.

Here the nodes of equal depth, which see equally many keys, form one batch: batch row b is node b's single
query over its visible keys, in the order a plain decode would have cached them (prefix, ancestors by depth,
itself), through transformers' own sdpa forward with the mask a one-token step gets from the stock mask
builder: None, except an all-True mask over a full sliding window (Gemma3's sliding layers). That costs one
flash-attention unit per node and head (the kernel's own loop), so where the batch-invariant mode's
attention runs decoding steps instead, its tree form takes over (invariant_attention.py): all nodes in one
call per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.integrations.sdpa_attention import sdpa_attention_forward


@dataclass(frozen=True)
class DepthGroup:
    """The tree nodes of one depth; each attends over `length` keys."""

    nodes: Tensor  # [n] long, tree node indices (ascending)
    keys: Tensor | None  # [n, length] long, cache indices each node attends over, in cache order of a
    #   plain decode (prefix, ancestors by depth, itself); None: the contiguous range 0 .. length - 1
    length: int  # prefix_len + depth + 1


def depth_groups(prefix_len: int, depths: Tensor, ancestors: Tensor) -> tuple[DepthGroup, ...]:
    """Group the N tree nodes by depth. depths [N] long; ancestors [N, N] bool with parents before children
    (node indices along a path ascend), so a row's ancestors in index order are in depth order."""
    device = depths.device
    prefix = torch.arange(prefix_len, device=device)
    check_depths(depths, ancestors)
    groups = []
    for depth in range(int(depths.max()) + 1):
        nodes = (depths == depth).nonzero().flatten()
        visible = ancestors[nodes]  # [n, N]
        path = visible.nonzero()[:, 1].view(nodes.numel(), depth + 1)  # [n, depth + 1]
        if nodes.numel() == 1 and torch.equal(path[0], torch.arange(depth + 1, device=device)):
            keys = None  # a chain prefix: the keys are a slice of the cache, no gather
        else:
            keys = torch.cat([prefix.expand(nodes.numel(), -1), prefix_len + path], dim=1)
        groups.append(DepthGroup(nodes, keys, prefix_len + depth + 1))
    return tuple(groups)


def check_depths(depths: Tensor, ancestors: Tensor) -> None:
    """ValueError unless every node at depth d sees d + 1 nodes (itself and d ancestors): both exact paths
    read a node's path off its ancestor row."""
    seen = ancestors.sum(1)
    if not torch.equal(seen, depths + 1):
        node = int((seen != depths + 1).nonzero()[0])
        raise ValueError(f"ancestors and depths disagree: node {node} at depth {int(depths[node])} must see "
                         f"{int(depths[node]) + 1} nodes, sees {int(seen[node])}")


def one_step_window(length: int, window: int | None) -> int | None:
    """The sliding-window rule of a one-token decoding step over `length` cached keys, as generate() runs it:
    its cache keeps window - 1 entries per sliding layer, and the stock mask builder skips the mask while
    fewer than `window` keys exist. None: every key, no mask (no window, or fewer than `window` keys);
    else `window`: the last `window` keys, with an all-True explicit mask."""
    return window if window is not None and length >= window else None


def exact_tree_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    groups: tuple[DepthGroup, ...],
    **kwargs,
) -> tuple[Tensor, None]:
    """query [1, H, N, D]; key / value [1, H_kv, P + N, D] (the cache after this step's update).
    Returns [1, N, H, D], like transformers' attention functions."""
    window = kwargs.get("sliding_window")
    out = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])
    for group in groups:
        q = query[0, :, group.nodes].transpose(0, 1).unsqueeze(2)  # [n, H, 1, D]
        k, v = _visible(key, group), _visible(value, group)  # [n, H_kv, L, D]
        mask = None
        kept = one_step_window(group.length, window)
        if kept is not None:
            k, v = k[:, :, -kept:], v[:, :, -kept:]
            mask = torch.ones(1, 1, 1, kept, dtype=torch.bool, device=query.device)
        attn, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)  # [n, 1, H, D]
        out[0, group.nodes] = attn[:, 0]
    return out, None


def _visible(states: Tensor, group: DepthGroup) -> Tensor:
    """[1, H_kv, S, D] -> [n, H_kv, L, D]: each node's visible entries, in cache order."""
    if group.keys is None:
        return states[:, :, : group.length]
    n, length = group.keys.shape
    gathered = states[0].index_select(1, group.keys.flatten())  # [H_kv, n * L, D]
    return gathered.view(states.shape[1], n, length, states.shape[3]).transpose(0, 1)
