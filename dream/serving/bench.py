"""`dream bench --engine vllm`: the same prompts through vLLM with ar, pld, eagle2, eagle3 and dream.

The method names are the harness's (dream.method_names): `ar` is vLLM without speculation, `pld` vLLM's
n-gram prompt lookup; records made before the names were shared call them `base` and `ngram`.

Per method and pass one engine (started, warmed up on the first prompt, then timed), answering one
request at a time (or `concurrency` in flight), greedy by default. With `repeats` R the methods run R
passes over the prompts, each pass on fresh engines and in an order rotated by one per pass, so a slow
engine start or a busy spell lands on different methods. Engines are started one after another: a vLLM
engine holds its cores and memory, so methods cannot be interleaved per prompt as the harness does.

The record follows the harness bench's JSON layout (config / methods / prompts): per method `tau` (vLLM's
spec-decode counters over all passes: 1 + accepted / drafts, the bonus token included), `tokens_per_s` and
`speedup` over `ar` with 95 % intervals (`_ci`, dream.bench.stats: cells are prompt x pass with one
request at a time; with several in flight a pass is one cell, so only passes are resampled), `vs_eagle2`
when eagle2 ran, `mismatches` against ar's token ids (every pass), `acceptance_by_depth`; per prompt
every method's text and token ids of the first pass. With concurrency > 1 also the per-request latency
(median, p90) and the throughput with N requests kept in flight.

Timing covers only the engine calls (prompt rendering and image decoding included, as a server would).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from dream.bench.prompts import PromptRecord
from dream.bench.stats import Cells, rate_estimates
from dream.method_names import AR, PLD, VLLM_METHODS, canonical
from dream.serving.engine import EngineConfig, SpecCounters, build_llm, chat_messages, close_llm, spec_counters

METHODS = VLLM_METHODS


@dataclass(frozen=True)
class VllmBenchConfig:
    engine: EngineConfig
    max_new_tokens: int = 128
    temperature: float = 0.0
    concurrency: int = 1                 # requests kept in flight (1: one at a time)
    warmup: int = 1                      # prompts answered before timing starts (not recorded)
    repeats: int = 1                     # passes over the prompts, each on fresh engines
    drafts: dict[str, str] = field(default_factory=dict)   # method name -> draft directory


@dataclass
class MethodPass:
    """One method's timed pass over the prompts on one engine."""

    token_ids: list[list[int]]
    texts: list[str]
    prompt_tokens: list[int]
    seconds: float
    latencies: list[float]               # per request: its call (one at a time) or queued to last token
    counters: SpecCounters


def run_vllm_bench(cfg: VllmBenchConfig, prompts: list[PromptRecord], methods: tuple[str, ...] | None = None) -> dict:
    """Run every method over `prompts`, `cfg.repeats` times; returns the JSON-ready record. Methods default to
    ar, pld and every method of METHODS that `cfg.drafts` has a draft for."""
    if cfg.concurrency < 1 or cfg.repeats < 1:
        raise ValueError(f"concurrency and repeats must be >= 1, got {cfg.concurrency} and {cfg.repeats}")
    if methods is None:
        methods = tuple(m for m in METHODS if m in (AR, PLD) or m in cfg.drafts)
    methods = tuple(canonical(m) for m in methods)
    if AR not in methods:
        raise ValueError("the vLLM bench needs the ar method (speedups and mismatches are against it)")
    missing = [m for m in methods if m not in (AR, PLD) and m not in cfg.drafts]
    if missing:
        raise ValueError(f"no draft directory for {missing}")
    passes: dict[str, list[MethodPass]] = {m: [] for m in methods}
    for r in range(cfg.repeats):
        for method in methods[r % len(methods):] + methods[: r % len(methods)]:
            passes[method].append(_run_method(cfg, method, prompts))
    return bench_record(cfg, prompts, passes)


def bench_record(cfg: VllmBenchConfig, prompts: list[PromptRecord], passes: dict[str, list[MethodPass]]) -> dict:
    """The JSON-ready record of every method's passes (the same number for each)."""
    estimates = rate_estimates({name: _cells(runs, cfg.concurrency) for name, runs in passes.items()},
                               plain=[AR], versus="eagle2" if "eagle2" in passes else None)
    reference = passes[AR][0].token_ids
    record_methods = {}
    for name, runs in passes.items():
        counters = reduce(SpecCounters.plus, (run.counters for run in runs))
        mismatched = sorted({p.line for run in runs for p, ids, ref in zip(prompts, run.token_ids, reference)
                             if ids != ref})
        rate, speedup = estimates.rates[name], estimates.speedups[name]
        entry: dict[str, Any] = {
            "tau": counters.tau, "tokens_per_s": rate.value, "tokens_per_s_ci": rate.to_list(),
            "speedup": speedup.value, "speedup_ci": speedup.to_list(),
            "mismatches": len(mismatched), "mismatched_lines": mismatched,
            "acceptance_by_depth": [a / counters.drafts for a in counters.accepted_per_position]
            if counters.drafts else [],
            "num_tokens": sum(len(ids) for run in runs for ids in run.token_ids),
            "generations": len(prompts) * len(runs), "total_s": sum(run.seconds for run in runs),
        }
        if name in estimates.relative:
            entry["vs_eagle2"] = estimates.relative[name].value
            entry["vs_eagle2_ci"] = estimates.relative[name].to_list()
        if cfg.concurrency > 1:
            latencies = sorted(t for run in runs for t in run.latencies)
            entry["latency_s"] = {"median": statistics.median(latencies),
                                  "p90": latencies[int(0.9 * (len(latencies) - 1))]}
        record_methods[name] = entry
    first = {name: runs[0] for name, runs in passes.items()}
    return {
        "config": {"engine": "vllm", **asdict(cfg), "methods": list(passes), "num_prompts": len(prompts)},
        "methods": record_methods,
        "prompts": [
            {"line": p.line, "image": str(p.image_path), "prompt": p.prompt, "category": p.category,
             "prompt_tokens": first[AR].prompt_tokens[i],
             "outputs": {name: {"text": run.texts[i], "token_ids": run.token_ids[i],
                                "num_tokens": len(run.token_ids[i])} for name, run in first.items()}}
            for i, p in enumerate(prompts)
        ],
    }


def _cells(runs: list[MethodPass], concurrency: int) -> Cells:
    """tokens / seconds [n, R]: per prompt and pass with one request at a time, else [1, R] per pass."""
    if concurrency == 1:
        tokens = [[len(ids) for ids in run.token_ids] for run in runs]
        seconds = [run.latencies for run in runs]
    else:
        tokens = [[sum(len(ids) for ids in run.token_ids)] for run in runs]
        seconds = [[run.seconds] for run in runs]
    return Cells(np.array(tokens, dtype=float).T, np.array(seconds, dtype=float).T)


def _run_method(cfg: VllmBenchConfig, method: str, prompts: list[PromptRecord]) -> MethodPass:
    from vllm import SamplingParams

    # max_num_seqs = concurrency: vLLM then runs exactly that many requests at once, the rest wait.
    engine = replace(cfg.engine, max_num_seqs=cfg.concurrency)
    draft = cfg.drafts.get(method)
    llm = build_llm(engine, method, Path(draft) if draft else None)
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_new_tokens, seed=engine.seed)
    conversations = [chat_messages(p.prompt, p.image) for p in prompts]
    try:
        for conversation in conversations[: cfg.warmup]:
            llm.chat(conversation, params, use_tqdm=False)
        before = spec_counters(llm)
        start = time.perf_counter()
        if cfg.concurrency == 1:
            outputs, latencies = [], []
            for conversation in conversations:
                t = time.perf_counter()
                outputs.append(llm.chat(conversation, params, use_tqdm=False)[0])
                latencies.append(time.perf_counter() - t)
        else:
            engine_outputs = llm.chat(conversations, params, use_tqdm=False)
            outputs, latencies = engine_outputs, [_latency(o) for o in engine_outputs]
        seconds = time.perf_counter() - start
        counters = spec_counters(llm).minus(before)
    finally:
        close_llm(llm)
    return MethodPass([list(o.outputs[0].token_ids) for o in outputs], [o.outputs[0].text for o in outputs],
                      [len(o.prompt_token_ids) for o in outputs], seconds, latencies, counters)


def _latency(output: Any) -> float:
    """Queued to last token of one request, from vLLM's request stats (NaN when the engine keeps none).

    Both are the engine core's monotonic timestamps (arrival_time is wall-clock and not comparable)."""
    metrics = getattr(output, "metrics", None)
    queued, last = getattr(metrics, "queued_ts", None), getattr(metrics, "last_token_ts", None)
    return float(last - queued) if queued and last else float("nan")


def format_table(record: dict) -> str:
    """The terminal table of a run_vllm_bench record."""
    rows = ["method    tau   tok/s [95 % CI]       speedup [95 % CI]      vs eagle2 [95 % CI]    mismatches"]
    for name, m in record["methods"].items():
        rate, speedup = m["tokens_per_s_ci"], m["speedup_ci"]
        versus = "-"
        if "vs_eagle2" in m:
            versus = f"{m['vs_eagle2']:.2f}x [{m['vs_eagle2_ci'][0]:.2f}, {m['vs_eagle2_ci'][1]:.2f}]"
        rows.append(f"{name:<8} {m['tau']:5.2f} {m['tokens_per_s']:5.1f} [{rate[0]:.1f}, {rate[1]:.1f}]  "
                    f"{m['speedup']:5.2f}x [{speedup[0]:.2f}, {speedup[1]:.2f}]  {versus:<21} {m['mismatches']:>6}")
        if "latency_s" in m:
            rows[-1] += f"   latency median {m['latency_s']['median']:.2f}s p90 {m['latency_s']['p90']:.2f}s"
    return "\n".join(rows)
