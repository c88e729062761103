"""The timed part of `dream bench`: every method on every prompt, in one process, interleaved.

Everything that is not model or tensor work happens outside the engine's timed region: inputs are built
(tokenised, images preprocessed) once per prompt before anything runs, proposers are made before each
call, outputs are decoded only after the last timing, and no text is streamed or stop string searched
(the engine decodes only for those). Timing comes from the engine's own metrics (dream.metrics), so the
progress bar and bookkeeping between generations are not counted.

Noise control: a warm-up pass over the first prompts (untimed, discarded), methods interleaved per prompt
with the order rotated by one each prompt (no method is always first after a cache-cold switch), and the
garbage collector frozen after set-up so a collection over the loaded models cannot land inside a run.

Repeats: the whole prompt set runs `repeats` times, each pass interleaved the same way (the rotation moves
on by one each pass). Cell (prompt i, repeat r) samples with seed + r * len(prompts) + i, the same for every
method; at T=0 the seed does not matter and every repeat decodes the same tokens.

The `hf` method (dream.bench.hf) is plain transformers generate() of the same model, timed the same way.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Sequence

from tqdm import tqdm

from dream.bench.hf import hf_generate
from dream.methods import PLAIN, Method, make_proposer
from dream.engine import generate
from dream.metrics import GenerationMetrics
from dream.bench.prompts import PromptRecord
from dream.chat import user_messages
from dream.sampling import SamplingConfig
from dream.target import TargetAdapter, TargetInputs
from dream.tree import TreeConfig


@dataclass(frozen=True)
class BenchSettings:
    max_new_tokens: int = 64
    sampling: SamplingConfig = SamplingConfig()
    tree: TreeConfig = TreeConfig()
    seed: int = 0              # prompt i of repeat r uses seed + r * len(prompts) + i, the same for every method
    warmup: int = 1            # prompts run through every method, untimed, before timing
    repeats: int = 1           # passes over the prompt set (each method, every prompt, each pass)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")


@dataclass(frozen=True)
class PromptRun:
    """One method on one prompt."""

    token_ids: tuple[int, ...]     # generated tokens (EOS included when it ended the generation)
    metrics: GenerationMetrics


@dataclass(frozen=True)
class BenchResult:
    prompts: list[PromptRecord]
    prompt_lengths: list[int]                 # target tokens of each prompt (image tokens expanded)
    runs: dict[str, list[tuple[PromptRun, ...]]]   # method -> per prompt (in order), one run per repeat

    def first(self, method: str) -> list[PromptRun]:
        """The method's runs of the first repeat, one per prompt (its outputs; at T=0 every repeat's)."""
        return [cells[0] for cells in self.runs[method]]


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
    if not any(m.name in PLAIN for m in methods):
        raise ValueError(f"the methods must include a plain baseline ({' or '.join(PLAIN)}) to measure speedups")
    inputs = build_inputs(target, prompts, settings.max_new_tokens)
    warmup = min(settings.warmup, len(prompts))
    total = (warmup + len(prompts) * settings.repeats) * len(methods)
    bar = tqdm(total=total, desc="warm-up", unit="run", disable=not progress, leave=False)
    for i in range(warmup):
        for method in methods:
            _run(target, method, inputs[i], settings, settings.seed + i)
            bar.update()
    bar.set_description("bench")
    gc.collect()
    gc.freeze()
    cells: dict[str, list[list[PromptRun]]] = {m.name: [[] for _ in inputs] for m in methods}
    try:
        for repeat in range(settings.repeats):
            for i, prompt_inputs in enumerate(inputs):
                shift = (repeat + i) % len(methods)
                seed = settings.seed + repeat * len(inputs) + i
                for method in [*methods[shift:], *methods[:shift]]:
                    cells[method.name][i].append(_run(target, method, prompt_inputs, settings, seed))
                    bar.update()
    finally:
        gc.unfreeze()
        bar.close()
    lengths = [x.input_ids.shape[1] for x in inputs]
    runs = {name: [tuple(per_prompt) for per_prompt in by_prompt] for name, by_prompt in cells.items()}
    return BenchResult(list(prompts), lengths, runs)


def _run(target: TargetAdapter, method: Method, inputs: TargetInputs, settings: BenchSettings, seed: int) -> PromptRun:
    if method.name == "hf":
        tokens, metrics = hf_generate(target, inputs, settings.sampling, settings.max_new_tokens, seed)
        return PromptRun(tuple(tokens), metrics)
    proposer = make_proposer(method, target, settings.tree, settings.sampling, seed)
    result = generate(target, inputs, proposer=proposer, sampling=settings.sampling,
                      max_new_tokens=settings.max_new_tokens, seed=seed)
    return PromptRun(tuple(result.token_ids), result.metrics)
