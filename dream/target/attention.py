"""The "dream" attention implementations: transformers' sdpa, the tree verify, and statistics.

Registered names, one dispatch:
- "dream": a decoding step is transformers' own sdpa (the CPU flash kernel);
- "dream_invariant_<block>": a decoding step is the batch-invariant attention (invariant_attention.py) with
  key counts padded to a multiple of <block>, which a tree verify can run for all its nodes at once. The
  batch-invariant mode switches a model to it (dream.target.invariance) with the block its probe found.
Prefills are sdpa under every name. A tree verify runs inside `tree_verify(layout, mode)`, which sets the one
`ActiveVerify` that both the attention function and the mask builder read (`VerifyMode`, docs/exactness.md):
- "exact": the mask builder builds nothing and every tree node attends over exactly its visible keys, as its
  one-token decoding step would: under "dream_invariant_<block>" all nodes in one call, under "dream" one
  sdpa call per depth group (exact.py); equal to generate() bit for bit, bf16 too;
- "masked": one sdpa call over prefix + tree with the tree mask (masks.py); equal to a plain forward only up
  to rounding. Kept as the documented negative control (tests) and for comparisons (scripts/bench_exact.py).

Attention statistics need the softmax weights, which sdpa never materialises, and holding every layer's
[H, S, S] map at once (output_attentions) costs L times the memory of one. During a recorded prefill, the
layers whose statistics are wanted also compute eager weights here and hand them straight to a
`StatsRecorder`, which keeps only the reductions ([S] per layer, [S_vis] for the last layer); the layer's
output is still sdpa's, so recording never changes the forward (a plain generate() prefill matches it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, get_args

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

from .exact import DepthGroup, check_depths, depth_groups, exact_tree_attention, one_step_window
from .invariant_attention import TreeKeys, decode_attention, tree_attention, tree_keys
from .masks import TreeLayout, tree_mask

ATTENTION_NAME = "dream"
INVARIANT_ATTENTION_NAME = "dream_invariant"  # + "_<block>": decoding steps through the batch-invariant attention

VerifyMode = Literal["exact", "masked"]
VERIFY_MODES: tuple[VerifyMode, ...] = get_args(VerifyMode)

# observe(module, query [1, H, N, D], key / value [1, H_kv, P + N, D], kwargs): a layer's attention inputs
AttentionObserver = Callable[[torch.nn.Module, Tensor, Tensor, Tensor, dict], None]


@dataclass(frozen=True)
class ActiveVerify:
    """The tree verify a forward is running: the one thing the attention function and the mask builder read."""

    layout: TreeLayout  # where the tree nodes sit after the committed prefix
    mode: VerifyMode
    observe: AttentionObserver | None = None  # sees every layer's attention inputs (dream.target.diagnose)
    _plans: dict = field(default_factory=dict, compare=False)  # the exact path's plans, built on first use

    def depth_groups(self) -> tuple[DepthGroup, ...]:
        """The exact path under sdpa: the nodes per depth, once per verify, not per layer."""
        if "groups" not in self._plans:
            self._plans["groups"] = depth_groups(self.layout.prefix_len, self.layout.depths, self.layout.ancestors)
        return self._plans["groups"]

    def tree_keys(self, window: int | None, block: int) -> TreeKeys:
        """The exact path under the batch-invariant attention: every node's keys, once per verify (and sliding
        window), not per layer."""
        if (window, block) not in self._plans:
            layout = self.layout
            self._plans[window, block] = tree_keys(layout.prefix_len, layout.depths, layout.ancestors, window, block)
        return self._plans[window, block]


_ACTIVE_VERIFY: ContextVar[ActiveVerify | None] = ContextVar("dream_active_verify", default=None)


@contextmanager
def tree_verify(layout: TreeLayout, mode: VerifyMode, observe: AttentionObserver | None = None
                ) -> Iterator[ActiveVerify]:
    """Within this block, "dream" attention and its masks run the tree verify of `layout` in `mode`."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify mode {mode!r}: expected one of {', '.join(VERIFY_MODES)}")
    if mode == "exact":
        check_depths(layout.depths, layout.ancestors)
    active = ActiveVerify(layout, mode, observe)
    token = _ACTIVE_VERIFY.set(active)
    try:
        yield active
    finally:
        _ACTIVE_VERIFY.reset(token)


@dataclass
class StatsRecorder:
    """Collects per-layer reductions of the attention weights during one prefill, of one prompt or of a batch
    right-padded to `lengths` (causal attention keeps the padding out of every real query's weights)."""

    num_layers: int
    entropy: bool  # record per-query head-mean entropy on every layer
    key_scores: bool  # record the attention each key receives in the LAST layer
    lengths: Tensor | None = None  # [B] real queries per row; None: all of them
    entropy_rows: dict[int, Tensor] = field(default_factory=dict)  # layer -> [B, S]
    received: Tensor | None = None  # [B, S]: attention each key receives, summed over real queries, head mean

    def wants(self, layer_idx: int | None) -> bool:
        if layer_idx is None:
            return False
        return self.entropy or (self.key_scores and layer_idx == self.num_layers - 1)

    def record(self, layer_idx: int, weights: Tensor) -> None:
        """weights: [B, H, Q, K] float32 softmax probabilities of one layer."""
        if self.entropy:
            self.entropy_rows[layer_idx] = -torch.special.xlogy(weights, weights).sum(-1).mean(1)
        if self.key_scores and layer_idx == self.num_layers - 1:
            if self.lengths is not None:  # padding queries attend too, and must not score the keys
                queries = torch.arange(weights.shape[2], device=weights.device)
                real = queries < self.lengths.to(weights.device)[:, None]  # [B, Q]
                weights = weights * real[:, None, :, None]
            self.received = weights.sum(2).mean(1)

    def entropy_matrix(self) -> Tensor | None:  # [B, L, S]
        if not self.entropy:
            return None
        assert len(self.entropy_rows) == self.num_layers, "a decoder layer bypassed the dream attention"
        return torch.stack([self.entropy_rows[i] for i in range(self.num_layers)], dim=1)


_RECORDER: ContextVar[StatsRecorder | None] = ContextVar("dream_stats_recorder", default=None)


@contextmanager
def recording(recorder: StatsRecorder) -> Iterator[StatsRecorder]:
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def eager_weights(
    query: Tensor, key: Tensor, attention_mask: Tensor | None, scaling: float | None, softcap: float | None,
    is_causal: bool,
) -> Tensor:
    """[1, H, Q, K] float32 softmax weights, as eager attention computes them (sdpa never materialises them)."""
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, kv_len = scores.shape[-2:]
    if attention_mask is None and is_causal and q_len > 1:
        # The mask builder returned None to let sdpa use is_causal (top-left aligned); rebuild that pattern.
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


def dream_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                    attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs) -> tuple[Tensor, Tensor | None]:
    """"dream": decoding steps through sdpa."""
    return _attend(module, query, key, value, attention_mask, None, dropout=dropout, scaling=scaling, **kwargs)


def invariant_attention_name(block: int) -> str:
    """The registered name of the batch-invariant attention at `block` (registered here, idempotent)."""
    name = f"{INVARIANT_ATTENTION_NAME}_{block}"
    AttentionInterface.register(name, partial(_attend_invariant, block=block))
    AttentionMaskInterface.register(name, dream_mask)
    return name


def _attend_invariant(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None, *,
                      block: int, **kwargs) -> tuple[Tensor, Tensor | None]:
    return _attend(module, query, key, value, attention_mask, block, dropout=dropout, scaling=scaling, **kwargs)


def _attend(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
            block: int | None, dropout: float = 0.0, scaling: float | None = None, **kwargs
            ) -> tuple[Tensor, Tensor | None]:
    """block: None, decoding steps and exact verifies through sdpa; else the batch-invariant attention."""
    active = _ACTIVE_VERIFY.get()
    if active is not None and active.observe is not None:
        active.observe(module, query, key, value, {"dropout": dropout, "scaling": scaling, **kwargs})
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if active is not None and active.mode == "exact":
        if block is not None:
            keys = active.tree_keys(kwargs.get("sliding_window"), block)
            return tree_attention(query, key, value, keys, scale, kwargs.get("softcap")), None
        return exact_tree_attention(module, query, key, value, active.depth_groups(), dropout=dropout,
                                    scaling=scaling, **kwargs)
    if block is not None and active is None and query.shape[2] == 1:
        window = one_step_window(key.shape[2], kwargs.get("sliding_window"))
        if window is not None and window < key.shape[2]:  # a full-length cache (TargetCache): the window's keys
            key, value = key[:, :, -window:], value[:, :, -window:]
            attention_mask = None if attention_mask is None else attention_mask[..., -window:]
        return decode_attention(query, key, value, attention_mask, scale, kwargs.get("softcap"), block), None
    output = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    recorder = _RECORDER.get()
    layer_idx = getattr(module, "layer_idx", None)
    if recorder is not None and recorder.wants(layer_idx):
        # Statistics come from a separate eager pass, so the layer's output stays the stock sdpa one.
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        weights = eager_weights(query, key, attention_mask, scaling, kwargs.get("softcap"), is_causal)
        recorder.record(layer_idx, weights)
    return output


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
    """The "dream" mask builder: sdpa_mask outside a verify, nothing in an exact one, tree masks in a masked one."""
    active = _ACTIVE_VERIFY.get()
    if active is None:
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
    if active.mode == "exact":
        return None  # exact tree attention picks each node's keys itself
    layout = active.layout
    assert attention_mask is None, "tree forwards take no padding mask"
    assert q_length == layout.depths.shape[0] and int(q_offset) == layout.prefix_len, "tree layout out of sync"
    return tree_mask(layout, kv_length, kv_offset, mask_function, batch_size)


def register_dream_attention() -> None:
    """Make "dream" a valid attention implementation, with its mask builder. Idempotent."""
    AttentionInterface.register(ATTENTION_NAME, dream_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, dream_mask)
