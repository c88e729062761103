"""The generation loop: prefill -> propose -> verify -> commit, until EOS, a stop string or the budget.

`generate(target, inputs, proposer=...)` runs speculative decoding; `generate(target, inputs)` (no
proposer) runs the plain autoregressive baseline: one token per target forward, no tree machinery.
Both share the stop rules, so greedy speculative output equals greedy plain output token for token:
a round that accepts past EOS / a stop string / max_new_tokens is truncated at that token.

The first output token comes from the prefill logits. Each round then commits the pending root plus the
accepted drafts, and the bonus / recovered token becomes the next root.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from dream.metrics import GenerationMetrics, MetricsRecorder
from dream.proposer import AcceptedStep, PromptState, Proposer
from dream.sampling import SamplingConfig, check_generation_config, sample, target_probs
from dream.tree import Tree, prune_depth
from dream.verify import VerifyResult, verify_greedy, verify_sampling

if TYPE_CHECKING:
    from dream.target import ForwardOutput, TargetAdapter, TargetCache, TargetInputs

TokenCallback = Callable[[list[int], str], None]
# on_tokens(new_token_ids, new_text): called as tokens are committed; new_text is the newly decodable
# text (a trailing incomplete multi-byte character is held back until it completes).


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]          # generated tokens, EOS included when it ended the generation
    text: str                     # token_ids decoded with special tokens skipped
    metrics: GenerationMetrics


def generate(target: TargetAdapter, inputs: TargetInputs, *, proposer: Proposer | None = None,
             sampling: SamplingConfig = SamplingConfig(), max_new_tokens: int,
             stop_strings: Sequence[str] | str = (), seed: int = 0,
             on_tokens: TokenCallback | None = None) -> GenerationResult:
    """Generate from `inputs` (a TargetInputs of `target.build_inputs`) with a TargetAdapter.

    The proposer owns its tree shape (TreeConfig) and, for stochastic chains, its own generator; `seed`
    drives the target's sampling and the acceptance rule. temperature 0 is greedy.
    """
    stops = _check_args(target, inputs, sampling, max_new_tokens, stop_strings)
    generator = torch.Generator().manual_seed(seed)
    output = _Output(target.tokenizer, set(target.eos_token_ids), max_new_tokens, stops, on_tokens)
    if proposer is None:
        metrics = _autoregressive(target, inputs, sampling, generator, output)
    else:
        metrics = _speculative(target, inputs, proposer, sampling, generator, output)
    return GenerationResult(list(output.token_ids), output.text(), metrics)


def _check_args(target: TargetAdapter, inputs: TargetInputs, sampling: SamplingConfig, max_new_tokens: int,
                stop_strings: Sequence[str] | str) -> tuple[str, ...]:
    if not isinstance(sampling, SamplingConfig):
        raise ValueError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    check_generation_config(getattr(target.model, "generation_config", None))
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
    needed = inputs.input_ids.shape[-1] + max_new_tokens
    if needed > target.max_context:
        raise ValueError(f"prompt + max_new_tokens = {needed} exceeds the target's context {target.max_context}")
    return stops


def _autoregressive(target: TargetAdapter, inputs: TargetInputs, sampling: SamplingConfig, generator: torch.Generator,
                    output: "_Output") -> GenerationMetrics:
    """Plain decoding through the adapter: each step verifies a one-node tree (the cache grows by one,
    every entry is kept, so no commit is needed). On the exact path (the default) that is the stock model's
    own decoding step, so this equals generate() token for token, in bf16 too."""
    metrics = MetricsRecorder()
    start = perf_counter()
    cache = target.new_cache()
    logits = target.prefill(inputs, cache).logits[0, -1]                       # [V]
    metrics.prefill_s = perf_counter() - start
    token = _choose(logits, sampling, generator)
    ancestors = torch.ones(1, 1, dtype=torch.bool)
    depths = torch.zeros(1, dtype=torch.long)
    while not output.extend([token]):
        step_start = perf_counter()
        logits = target.verify(torch.tensor([token]), ancestors, depths, cache).logits[0, -1]
        token = _choose(logits, sampling, generator)
        metrics.verify_s += perf_counter() - step_start
        metrics.record_round(0, 0)
    return metrics.finish(len(output.token_ids), perf_counter() - start)


def _speculative(target: TargetAdapter, inputs: TargetInputs, proposer: Proposer, sampling: SamplingConfig,
                 generator: torch.Generator, output: "_Output") -> GenerationMetrics:
    metrics = MetricsRecorder()
    start = perf_counter()
    cache = target.new_cache()
    request = proposer.prefill_request()
    prefill = target.prefill(inputs, cache, visual_scores=request.visual_scores, layers=request.layers)
    metrics.prefill_s = perf_counter() - start
    root = _choose(prefill.logits[0, -1], sampling, generator)
    if output.extend([root]):
        return metrics.finish(len(output.token_ids), perf_counter() - start)
    draft_start = perf_counter()
    proposer.begin(_prompt_state(inputs, prefill, request.layers))
    metrics.draft_s += perf_counter() - draft_start
    while True:
        draft_start = perf_counter()
        tree = proposer.propose(root)
        verify_start = perf_counter()
        tree = _fit_budget(tree, output.remaining)
        result, features, layer_outputs = _verify_round(target, cache, tree, root, sampling, generator,
                                                        request.layers)
        metrics.draft_s += verify_start - draft_start
        metrics.verify_s += perf_counter() - verify_start
        metrics.record_round(result.accepted.shape[0] - 1, int(tree.depths.max()))
        committed = tree.tokens[result.accepted]                                 # [k] root first
        if output.extend(committed[1:].tolist() + [result.next_token]):
            return metrics.finish(len(output.token_ids), perf_counter() - start)
        draft_start = perf_counter()
        proposer.accept(AcceptedStep(committed, features, result.next_token, layer_outputs))
        metrics.draft_s += perf_counter() - draft_start
        root = result.next_token


def _fit_budget(tree: Tree, remaining: int) -> Tree:
    """Drop nodes that could only produce tokens past max_new_tokens (a round emits depth + 1 at most)."""
    if int(tree.depths.max()) < remaining:
        return tree
    return prune_depth(tree, remaining - 1)


def _verify_round(target: TargetAdapter, cache: TargetCache, tree: Tree, root: int, sampling: SamplingConfig,
                  generator: torch.Generator, layers: tuple[int, ...]) -> tuple[VerifyResult, Tensor, Tensor | None]:
    """One target forward over the tree (capturing `layers`), the acceptance rule, and the cache commit.
    Returns the result and, at the accepted nodes, the target's features [k, H] and the outputs of `layers`
    [k, A, H] (None without layers)."""
    if int(tree.tokens[0]) != root:
        raise ValueError(f"the proposer's tree must start with the pending root {root}, got {int(tree.tokens[0])}")
    out = target.verify(tree.tokens, tree.ancestors, tree.depths, cache, layers=layers)
    logits = out.logits[0]                                                       # [N, V]
    if sampling.greedy:
        result = verify_greedy(tree, logits)
    else:
        result = verify_sampling(tree, target_probs(logits, sampling), generator)
    target.commit(cache, tree.num_nodes, result.accepted)
    layer_outputs = _stacked(out, layers)
    accepted = result.accepted.to(out.features.device)
    return result, out.features[0, accepted], None if layer_outputs is None else layer_outputs[accepted]


def _choose(logits: Tensor, sampling: SamplingConfig, generator: torch.Generator) -> int:
    """The target's next token from logits [V]: argmax, or a sample from the warped distribution."""
    if sampling.greedy:
        return int(logits.argmax())
    return sample(target_probs(logits, sampling), generator)


def _prompt_state(inputs: TargetInputs, prefill: ForwardOutput, layers: tuple[int, ...]) -> PromptState:
    stats = prefill.stats
    return PromptState(
        input_ids=inputs.input_ids[0],
        visual_mask=inputs.visual_mask[0],
        input_embeds=prefill.input_embeds[0],
        features=prefill.features[0],
        visual_scores=None if stats is None else stats.visual_scores,
        layer_outputs=_stacked(prefill, layers),
    )


def _stacked(out: ForwardOutput, layers: tuple[int, ...]) -> Tensor | None:
    """The captured outputs of `layers`, in that order (repeats included): [N, A, H]; None for no layers."""
    if not layers:
        return None
    return torch.stack([out.layer_outputs[layer][0] for layer in layers], dim=1)


class _Output:
    """The generated tokens; applies the stop rules (EOS, budget, stop strings) and streams."""

    def __init__(self, tokenizer: Any, eos_token_ids: set[int], max_new_tokens: int,
                 stop_strings: tuple[str, ...], on_tokens: TokenCallback | None) -> None:
        self.token_ids: list[int] = []
        self._tokenizer = tokenizer
        self._eos = eos_token_ids
        self._max_new_tokens = max_new_tokens
        self._stop_strings = stop_strings
        self._on_tokens = on_tokens
        self._streamed_chars = 0

    @property
    def remaining(self) -> int:
        return self._max_new_tokens - len(self.token_ids)

    def text(self, token_ids: list[int] | None = None) -> str:
        ids = self.token_ids if token_ids is None else token_ids
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def extend(self, new_tokens: list[int]) -> bool:
        """Append tokens up to the first stop; True when the generation is over."""
        keep, done = self._stop_index(new_tokens)
        kept = new_tokens[:keep]
        self.token_ids.extend(kept)
        if self._on_tokens is not None:
            self._stream(kept, done)
        return done

    def _stop_index(self, new_tokens: list[int]) -> tuple[int, bool]:
        """How many of new_tokens to keep, and whether the generation stops there."""
        keep, done = len(new_tokens), False
        for i, token in enumerate(new_tokens):
            if token in self._eos or len(self.token_ids) + i + 1 >= self._max_new_tokens:
                keep, done = i + 1, True
                break
        if self._stop_strings and self._has_stop_string(new_tokens[:keep]):
            # Decoding once per round is the common case; search token by token only on a hit.
            keep = next(i for i in range(1, keep + 1) if self._has_stop_string(new_tokens[:i]))
            done = True
        return keep, done

    def _has_stop_string(self, new_tokens: list[int]) -> bool:
        text = self.text(self.token_ids + new_tokens)
        return any(stop in text for stop in self._stop_strings)

    def _stream(self, new_tokens: list[int], done: bool) -> None:
        text = self.text()
        # U+FFFD at the end is an incomplete multi-byte character: wait for the bytes that complete it.
        end = len(text) if done else len(text.rstrip("\ufffd"))
        delta = text[self._streamed_chars:end]
        self._streamed_chars = max(self._streamed_chars, end)
        self._on_tokens(new_tokens, delta)
