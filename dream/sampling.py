"""Target sampling distributions, computed exactly as HF generate's warpers do.

HF applies TemperatureLogitsWarper (if temperature != 1), TopKLogitsWarper (if top_k != 0) and
TopPLogitsWarper (if top_p < 1), in that order, then a softmax. `target_probs` reproduces those steps
with the same tensor operations, so ties are broken the same way.

`sample` draws from a distribution with an explicit generator by inverting the CDF: on this CPU
torch.multinomial over a 49k vocabulary takes ~1 ms (and tens of ms with busy cores), the inversion ~50 us.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0   # 0 = greedy (argmax); > 0 = sample from the warped distribution
    top_p: float = 1.0         # nucleus mass kept, in (0, 1]; 1 = off
    top_k: int = 0             # most likely tokens kept; 0 = off

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be an integer >= 0, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """logits [..., V] -> the target's sampling distribution [..., V] (float32)."""
    if cfg.greedy:
        raise ValueError("target_probs needs temperature > 0; greedy decoding uses the argmax")
    scores = logits.float()
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k != 0:
        scores = _top_k(scores, cfg.top_k)
    if cfg.top_p < 1.0:
        scores = _top_p(scores, cfg.top_p)
    return torch.softmax(scores, -1)


def _top_k(scores: Tensor, top_k: int) -> Tensor:
    kth_best = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(scores < kth_best, -float("inf"))


def _top_p(scores: Tensor, top_p: float) -> Tensor:
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    sorted_remove = cumulative <= (1 - top_p)
    sorted_remove[..., -1:] = False                      # always keep the most likely token
    remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)
    return scores.masked_fill(remove, -float("inf"))


def sample(weights: Tensor, generator: torch.Generator | None) -> int:
    """One draw from unnormalised weights [V] >= 0 (at least one positive)."""
    cdf = weights.float().cumsum(-1)                                             # [V]
    u = torch.rand((), generator=generator) * cdf[-1]
    # right=True: u lands in [cdf[i-1], cdf[i]), an empty interval for a zero weight.
    index = int(torch.searchsorted(cdf, u, right=True))
    if index == cdf.shape[0]:
        # u rounded up to the total: the draw belongs to the last token with weight.
        index = int(weights.nonzero()[-1])
    return index
