"""Batch-invariant attention: a query gets the same bits whatever other queries and padded keys share the call.

Why (docs/exactness.md, "Where a verify's time goes"): the exact verify must give every tree node the bits a
one-token decoding step gives it. With sdpa that takes one CPU flash-attention call per depth, and that kernel
works through each (batch row, head) on its own: about 60 us per node and layer at 110 keys on a 2-core
AVX-512-BF16 EPYC, so a 16-node verify spent 1.8 ms a layer on attention where a decoding step spends 0.08.

So under the batch-invariant mode a decoding step attends through ops whose result for one row does not depend
on the rows beside it, and a tree verify runs all its nodes through the same ops in ONE call:
  - scores q.k in fp32 (bf16 inputs upcast: exact products, fp32 sums, as the flash kernel keeps them), one
    bmm over (kv head, node) with the query heads of a kv head as its rows (GQA without copying keys);
  - softmax in fp32 over the node's keys, in decode order; keys that pad a row get -inf (exp(-inf) = 0);
  - the fp32 probabilities times the values (upcast), in bmms over fixed chunks of 256 keys added in order
    (one bmm over all keys rounds by its length), the output rounded to the model's dtype once, at the end
    (the probe compares it before that rounding, which hides order differences).
Every call's key count is padded to a multiple of a block (zeros in a step, repeats in a tree; masked): the
fp32 bmm gives a score the same bits in every call whose key count is such a multiple, but rounds the keys
of a partial block differently for each count (seen at 16 on the EPYC), and the scores' low bits reach the
output only now and then, through bf16 rounding, so only a block makes it exact rather than mostly so.
A tree node's keys are gathered into the order a plain decode would have cached them: prefix, ancestors by
depth, itself (`tree_keys`, once per verify). The whole model then sees the same numerics in generate()
(the mode switches the model's attention, dream.target.invariance), in a one-node verify and in a tree.

Which block makes those ops batch-invariant (bmm kernels choose by shape, softmax vectorises over the row) is
a property of the machine: `probe_attention` finds it on random data at the model's head shapes, comparing
scores and outputs bit for bit, and the mode uses this attention only where a block passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from .probe_cache import cached_probe, probe_key

VERSION = 6  # of the ops and the probe below: a change must not reuse a cached probe of the old ones
BLOCKS = (1, 2, 4, 8, 16, 32, 64)  # candidates for the key-count multiple every call is padded to
VALUE_CHUNK = 256  # keys per bmm of the probabilities times the values (_weighted_sum)
# Probed prefix lengths: block edges of 16 / 64 / 512 / 4096-wide kernels and lengths between, to 8k contexts.
PROBE_PREFIXES = (1, 2, 7, 15, 16, 17, 31, 33, 63, 64, 65, 100, 111, 127, 128, 129, 200, 255, 256, 257, 300,
                  511, 512, 513, 777, 1023, 1024, 1025, 1500, 2047, 3000, 4095, 4097, 8191)
PROBE_NODES = (2, 3, 5, 8, 13, 16, 32)  # tree sizes, cycled over the prefixes
PROBE_DEPTH = 15  # nodes' lengths spread over prefix + 1 .. prefix + PROBE_DEPTH + 1
PROBE_OUTPUTS = 1 << 13  # at least this many outputs compared per prefix (more calls for small heads)

# (query [H_kv, B, G, D], key [H_kv, B, W, D], value [H_kv, B, W or fewer, D], bias [1, B, 1, W] fp32: 0 on a
#  key, -inf where hidden)
Inputs = tuple[Tensor, Tensor, Tensor, Tensor]


def padded(length: int, block: int) -> int:
    """The key count a call over `length` keys runs with: the next multiple of `block`."""
    return -(-length // block) * block


def _attend(query: Tensor, key: Tensor, value: Tensor, bias: Tensor, scaling: float,
            softcap: float | None) -> tuple[Tensor, Tensor]:
    """(output [H_kv, B, G, D], scores [H_kv, B, G, W]), both fp32: the caller rounds the output to the model's
    dtype, the probe compares it before that rounding (which hides most accumulation-order differences).
    The scores are one baddbmm (q.k times scaling, plus the bias that hides keys) in every call, with or
    without hidden keys. Every tensor is brought to one layout first: bmm's kernels depend on strides too."""
    kv_heads, rows, groups, dim = query.shape
    width = key.shape[2]
    q = _float32(query).view(kv_heads * rows, groups, dim)
    k = _float32(key).view(kv_heads * rows, width, dim).transpose(1, 2)
    bias = bias.expand(kv_heads, rows, 1, width).reshape(kv_heads * rows, 1, width)
    if softcap is None:
        scores = torch.baddbmm(bias, q, k, alpha=scaling)
    else:  # soft-capping comes before the hidden keys' -inf
        scores = torch.tanh(torch.bmm(q, k).mul_(scaling / softcap)).mul_(softcap).add_(bias)
    probs = torch.softmax(scores, dim=-1)
    kept = value.shape[2]  # a step's values are not padded: the padding's probabilities are 0 anyway
    values = _float32(value).view(kv_heads * rows, kept, dim)
    out = _weighted_sum(probs if kept == width else probs[:, :, :kept], values)
    return out.view(kv_heads, rows, groups, dim), scores.view(kv_heads, rows, groups, width)


def _weighted_sum(probs: Tensor, values: Tensor) -> Tensor:
    """probs [R, G, K] times values [R, K, D] as bmms over VALUE_CHUNK keys each, added in key order. One bmm over
    all K keys would not do: an sgemm blocks a long reduction by its length and, with few rows, splits it over
    the threads (seen on an AMX Xeon past 256 keys), so a row's sum would depend on its padding and on the rows
    beside it. Every chunk's bmm has one shape (the last chunk padded with zeros), and the chunks past a row's
    own keys, all zero probability, add exact zeros."""
    keys = probs.shape[-1]
    out = None
    for start in range(0, keys, VALUE_CHUNK):
        p, v = probs[..., start: start + VALUE_CHUNK], values[:, start: start + VALUE_CHUNK]
        if p.shape[-1] < VALUE_CHUNK:
            missing = VALUE_CHUNK - p.shape[-1]
            p, v = nn.functional.pad(p, (0, missing)), nn.functional.pad(v, (0, 0, 0, missing))
        part = torch.bmm(p, v)
        out = part if out is None else out.add_(part)
    return out


def _float32(tensor: Tensor) -> Tensor:
    """A contiguous fp32 copy in one pass (`to` keeps an fp32 tensor's strides, and a bf16 one's by default)."""
    if tensor.dtype == torch.float32:
        return tensor.contiguous()
    return tensor.to(torch.float32, memory_format=torch.contiguous_format)


@lru_cache(maxsize=256)
def _step_bias(length: int, width: int, device: torch.device) -> Tensor:
    """[1, 1, 1, W] fp32: 0 on a step's `length` keys, -inf on the padding (a step's length recurs per layer)."""
    bias = torch.zeros(1, 1, 1, width, device=device)
    bias[..., length:] = float("-inf")
    return bias


def _decode_inputs(query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                   block: int) -> Inputs:
    """A step's query [B, H, 1, D] over the cache's key / value [B, H_kv, L, D], the keys padded (zeros,
    hidden) to a multiple of `block`: the kernels give a score and a softmax row the same bits in every call
    whose key count is such a multiple, whatever it is (the probe checks), while a partial block rounds
    differently. The values stay L: `_weighted_sum` reduces them in fixed chunks, where a tree's
    zero-probability padding adds exact zeros (the probe checks that too)."""
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    width = padded(length, block)
    q = query[:, :, 0].reshape(batch, kv_heads, heads // kv_heads, dim).transpose(0, 1)  # [H_kv, B, G, D]
    k, v = key.transpose(0, 1), value.transpose(0, 1)  # [H_kv, B, L, D]: views for B = 1
    if width > length:  # only the keys: the scores need the block, the padding's probabilities are 0
        k = nn.functional.pad(k, (0, 0, 0, width - length))
    if attention_mask is None:
        return q, k, v, _step_bias(length, width, key.device)
    mask = attention_mask[:, :, -1:].transpose(0, 1)  # [1, B, 1, L]: True = attend (bool), or additive (float)
    bias = torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask.float()
    return q, k, v, nn.functional.pad(bias, (0, width - length), value=float("-inf"))


def decode_attention(query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, scaling: float,
                     softcap: float | None = None, block: int = 1) -> Tensor:
    """A one-token decoding step: query [B, H, 1, D]; key / value [B, H_kv, L, D] (the cache); attention_mask
    None or [B, 1, 1, L] from the stock mask builder. Returns [B, 1, H, D], like transformers' attention."""
    batch, heads, _, dim = query.shape
    out, _ = _attend(*_decode_inputs(query, key, value, attention_mask, block), scaling, softcap)
    return out.transpose(0, 1).to(query.dtype, memory_format=torch.contiguous_format).reshape(batch, 1, heads, dim)


@dataclass(frozen=True)
class TreeKeys:
    """Where each tree node's keys sit in the cache, in the order a plain decode would have cached them."""

    index: Tensor  # [N * W] long, row-major [N, W]: cache entries of node i, then repeats of its last (padding)
    bias: Tensor  # [1, N, 1, W] fp32: 0 on a node's own keys, -inf on its row's padding
    width: int  # W: the longest node's key count, padded to a multiple of the block


def tree_keys(prefix_len: int, depths: Tensor, ancestors: Tensor, window: int | None = None,
              block: int = 1) -> TreeKeys:
    """depths [N] long; ancestors [N, N] bool, parents before children (so a node's ancestors in index order
    are in depth order). A node at depth d sees what its decoding step would: the prefix, its d ancestors and
    itself, of which only the last `window` once that many exist (one_step_window, a sliding layer)."""
    n, device = depths.numel(), depths.device
    lengths = prefix_len + depths + 1  # [N] keys of each node's decoding step
    starts = (lengths - window).clamp(min=0) if window is not None else torch.zeros_like(lengths)
    kept = lengths - starts  # [N]
    width = padded(int(kept.max()), block)
    step = starts[:, None] + torch.arange(width, device=device)[None]  # [N, W] position in decode order
    step = torch.minimum(step, lengths[:, None] - 1)  # padding repeats the node's last key (hidden below)
    nodes = torch.arange(n, device=device)
    path = torch.where(ancestors, nodes, n).sort(dim=1).values  # [N, N]: ancestors ascending, then n
    along = (step - prefix_len).clamp(0, n - 1)  # depth along the node's path
    index = torch.where(step < prefix_len, step, prefix_len + path.gather(1, along))
    bias = torch.zeros(n, width, device=device).masked_fill_(torch.arange(width, device=device) >= kept[:, None],
                                                              float("-inf"))
    return TreeKeys(index.flatten(), bias.view(1, n, 1, width), width)


def _tree_inputs(query: Tensor, key: Tensor, value: Tensor, keys: TreeKeys) -> Inputs:
    _, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    q = query[0].reshape(kv_heads, heads // kv_heads, n, dim).transpose(1, 2)  # [H_kv, N, G, D]
    # fp32 before the gather: one conversion of the cache's P + N entries, not of N * W gathered ones.
    k = _float32(key[0]).index_select(1, keys.index).view(kv_heads, n, keys.width, dim)
    v = _float32(value[0]).index_select(1, keys.index).view(kv_heads, n, keys.width, dim)
    return q, k, v, keys.bias


def tree_attention(query: Tensor, key: Tensor, value: Tensor, keys: TreeKeys, scaling: float,
                   softcap: float | None = None) -> Tensor:
    """All N tree nodes in one call. query [1, H, N, D]; key / value [1, H_kv, P + N, D] (the cache after this
    step's update). Returns [1, N, H, D]."""
    _, heads, n, dim = query.shape
    out, _ = _attend(*_tree_inputs(query, key, value, keys), scaling, softcap)  # [H_kv, N, G, D]
    # reshape: in fp32 `to` returns the transposed view itself, whatever memory_format says
    return out.transpose(0, 1).to(query.dtype, memory_format=torch.contiguous_format).reshape(1, n, heads, dim)


# ---- the probe --------------------------------------------------------------------------------------------------
def attention_block(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                    device: torch.device | str = "cpu") -> int | None:
    """probe_attention, once per machine and head shape ($DREAM_CACHE/invariance.json)."""
    device = torch.device(device)
    key = probe_key(f"attention block v{VERSION}", device.type, dtype, heads, kv_heads, head_dim)
    return cached_probe(key, lambda: probe_attention(heads, kv_heads, head_dim, dtype, device))


@torch.no_grad()
def probe_attention(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                    blocks: tuple[int, ...] = BLOCKS) -> int | None:
    """The smallest block (key counts padded to a multiple of it) for which every node of a batched call (keys
    gathered from a cache, rows padded to the longest node and masked) gets the scores and the output, bit for
    bit, of the node's own decoding step over its keys alone, for every probed prefix length and tree size;
    None: no candidate. Random keys and values; a node's keys are random cache entries. Scores and outputs
    are compared in fp32, before the output's rounding to the model's dtype, which would hide most
    accumulation-order differences (they reach about 2 bf16 outputs in 10^4)."""
    return next((block for block in blocks if _block_is_invariant(heads, kv_heads, head_dim, dtype, device, block)),
                None)


def _block_is_invariant(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str,
                        block: int) -> bool:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)

    scaling = head_dim ** -0.5
    for i, prefix in enumerate(PROBE_PREFIXES):
        n = PROBE_NODES[i % len(PROBE_NODES)]
        for _ in range(-(-PROBE_OUTPUTS // (n * heads * head_dim))):
            size = prefix + n
            key, value = randn(1, kv_heads, size, head_dim, scale=2.0), randn(1, kv_heads, size, head_dim)
            query = randn(1, heads, n, head_dim, scale=2.0)
            lengths = prefix + 1 + torch.randint(0, PROBE_DEPTH + 1, (n,), generator=generator)
            width = padded(int(lengths.max()), block)
            index = torch.randint(0, size, (n, width), generator=generator).to(device)
            bias = torch.zeros(n, width).masked_fill_(torch.arange(width) >= lengths[:, None], float("-inf"))
            keys = TreeKeys(index.flatten(), bias.to(device).view(1, n, 1, width), width)
            out, scores = _attend(*_tree_inputs(query, key, value, keys), scaling, None)
            for node in range(n):
                length = int(lengths[node])
                own = index[node, :length]
                alone = _decode_inputs(query[:, :, node : node + 1], key[:, :, own], value[:, :, own], None, block)
                out_alone, scores_alone = _attend(*alone, scaling, None)
                if not (torch.equal(scores[:, node, :, :length], scores_alone[:, 0, :, :length])
                        and torch.equal(out[:, node], out_alone[:, 0])):
                    return False
    return True
