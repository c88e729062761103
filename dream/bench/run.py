"""The timed part of `dream bench`: every method on every prompt, in one process, interleaved.

Everything that is not model or tensor work happens outside the engine's timed region: inputs are built
(tokenised, images preprocessed) once per prompt before anything runs, proposers are made before each
call, outputs are decoded only after the last timing, and no text is streamed or stop string searched
(the engine decodes only for those). Timing comes from the engine's own metrics (dream.metrics), so the
progress bar and bookkeeping between generations are not counted.

Noise control: a warm-up pass over the first prompts (untimed, discarded), methods interleaved per prompt
with the order rotated by one each prompt (no method is always first after a cache-cold switch), and the
garbage collector frozen after set-up so a collection over the loaded models cannot land inside a run.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Sequence

from tqdm import tqdm

from dream.methods import Method, make_proposer
from dream.engine import generate
from dream.metrics import GenerationMetrics
from dream.bench.prompts import PromptRecord, user_messages
from dream.sampling import SamplingConfig
from dream.target import TargetAdapter, TargetInputs
from dream.tree import TreeConfig


@dataclass(frozen=True)
class BenchSettings:
    max_new_tokens: int = 64
    sampling: SamplingConfig = SamplingConfig()
    tree: TreeConfig = TreeConfig()
    seed: int = 0              # prompt i uses seed + i, the same for every method
    warmup: int = 1            # prompts run through every method, untimed, before timing

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class PromptRun:
    """One method on one prompt."""

    token_ids: tuple[int, ...]     # generated tokens (EOS included when it ended the generation)
    metrics: GenerationMetrics


@dataclass(frozen=True)
class BenchResult:
    prompts: list[PromptRecord]
    prompt_lengths: list[int]                 # target tokens of each prompt (image tokens expanded)
    runs: dict[str, list[PromptRun]]          # method -> one run per prompt, in prompt order (ar first)


def build_inputs(target: TargetAdapter, prompts: Sequence[PromptRecord], max_new_tokens: int) -> list[TargetInputs]:
    """Target inputs of every prompt; a prompt too long for the context fails here, before any timing."""
    built = []
    for record in prompts:
        inputs = target.build_inputs(user_messages(record.prompt, with_image=True), [record.image])
        needed = inputs.input_ids.shape[1] + max_new_tokens
        if needed > target.max_context:
            raise ValueError(f"prompt at line {record.line}: {inputs.input_ids.shape[1]} tokens + max_new_tokens "
                             f"{max_new_tokens} exceed the target's context of {target.max_context}")
        built.append(inputs)
    return built


def run_bench(target: TargetAdapter, methods: Sequence[Method], prompts: Sequence[PromptRecord],
              settings: BenchSettings, *, progress: bool = True) -> BenchResult:
    if not methods or methods[0].name != "ar":
        raise ValueError("the first method must be the 'ar' baseline")
    inputs = build_inputs(target, prompts, settings.max_new_tokens)
    warmup = min(settings.warmup, len(prompts))
    bar = tqdm(total=(warmup + len(prompts)) * len(methods), desc="warm-up", unit="run", disable=not progress,
               leave=False)
    for i in range(warmup):
        for method in methods:
            _run(target, method, inputs[i], settings, settings.seed + i)
            bar.update()
    bar.set_description("bench")
    gc.collect()
    gc.freeze()
    runs: dict[str, list[PromptRun]] = {m.name: [] for m in methods}
    try:
        for i, prompt_inputs in enumerate(inputs):
            shift = i % len(methods)
            for method in [*methods[shift:], *methods[:shift]]:
                runs[method.name].append(_run(target, method, prompt_inputs, settings, settings.seed + i))
                bar.update()
    finally:
        gc.unfreeze()
        bar.close()
    lengths = [x.input_ids.shape[1] for x in inputs]
    return BenchResult(list(prompts), lengths, runs)


def _run(target: TargetAdapter, method: Method, inputs: TargetInputs, settings: BenchSettings, seed: int) -> PromptRun:
    proposer = make_proposer(method, target, settings.tree, settings.sampling, seed)
    result = generate(target, inputs, proposer=proposer, sampling=settings.sampling,
                      max_new_tokens=settings.max_new_tokens, seed=seed)
    return PromptRun(tuple(result.token_ids), result.metrics)
