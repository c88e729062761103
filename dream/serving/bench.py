"""`dream bench --engine vllm`: the same prompts through vLLM with base, ngram, eagle2 and dream.

Per method one engine (started, warmed up on the first prompt, then timed), answers one request at a
time (or `concurrency` in flight), greedy by default. The record follows the harness bench's JSON layout
(config / methods / prompts): per method `tau` (vLLM's spec-decode counters: 1 + accepted / drafts, the
bonus token included), `tokens_per_s`, `speedup` over `base`, `mismatches` against base's token ids,
`acceptance_by_depth`; per prompt every method's text and token ids. With concurrency > 1 also the
per-request latency (median, p90) and the throughput with N requests kept in flight.

Timing covers only the engine calls (prompt rendering and image decoding included, as a server would).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dream.bench.prompts import PromptRecord
from dream.serving.engine import BASE, EngineConfig, build_llm, chat_messages, close_llm, spec_counters

METHODS = ("base", "ngram", "eagle2", "dream")


@dataclass(frozen=True)
class VllmBenchConfig:
    engine: EngineConfig
    max_new_tokens: int = 128
    temperature: float = 0.0
    concurrency: int = 1                 # requests kept in flight (1: one at a time)
    warmup: int = 1                      # prompts answered before timing starts (not recorded)
    drafts: dict[str, str] = field(default_factory=dict)   # method name -> draft directory


@dataclass
class _MethodRun:
    token_ids: list[list[int]]
    texts: list[str]
    prompt_tokens: list[int]
    seconds: float
    latencies: list[float]
    tau: float
    acceptance_by_depth: list[float]


def run_vllm_bench(cfg: VllmBenchConfig, prompts: list[PromptRecord], methods: tuple[str, ...] = METHODS) -> dict:
    """Run every method over `prompts`; returns the JSON-ready record."""
    if cfg.concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {cfg.concurrency}")
    if BASE not in methods:
        raise ValueError("the vLLM bench needs the base method (speedups and mismatches are against it)")
    missing = [m for m in methods if m not in (BASE, "ngram") and m not in cfg.drafts]
    if missing:
        raise ValueError(f"no draft directory for {missing}")
    runs = {m: _run_method(cfg, m, prompts) for m in methods}
    base = runs[BASE]
    record_methods = {}
    for name, run in runs.items():
        tokens = sum(len(ids) for ids in run.token_ids)
        mismatched = [p.line for p, ids, ref in zip(prompts, run.token_ids, base.token_ids) if ids != ref]
        entry: dict[str, Any] = {
            "tau": run.tau, "tokens_per_s": tokens / run.seconds,
            "speedup": (tokens / run.seconds) / (sum(len(i) for i in base.token_ids) / base.seconds),
            "mismatches": len(mismatched), "mismatched_lines": mismatched,
            "acceptance_by_depth": run.acceptance_by_depth, "num_tokens": tokens, "generations": len(prompts),
            "total_s": run.seconds,
        }
        if cfg.concurrency > 1:
            entry["latency_s"] = {"median": statistics.median(run.latencies),
                                  "p90": sorted(run.latencies)[int(0.9 * (len(run.latencies) - 1))]}
        record_methods[name] = entry
    return {
        "config": {"engine": "vllm", **asdict(cfg), "methods": list(methods), "num_prompts": len(prompts)},
        "methods": record_methods,
        "prompts": [
            {"line": p.line, "image": str(p.image_path), "prompt": p.prompt, "category": p.category,
             "prompt_tokens": base.prompt_tokens[i],
             "outputs": {name: {"text": run.texts[i], "token_ids": run.token_ids[i],
                                "num_tokens": len(run.token_ids[i])} for name, run in runs.items()}}
            for i, p in enumerate(prompts)
        ],
    }


def _run_method(cfg: VllmBenchConfig, method: str, prompts: list[PromptRecord]) -> _MethodRun:
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
    by_depth = [a / counters.drafts for a in counters.accepted_per_position] if counters.drafts else []
    return _MethodRun([list(o.outputs[0].token_ids) for o in outputs], [o.outputs[0].text for o in outputs],
                      [len(o.prompt_token_ids) for o in outputs], seconds, latencies, counters.tau, by_depth)


def _latency(output: Any) -> float:
    """Queued to last token of one request, from vLLM's request stats (NaN when the engine keeps none).

    Both are the engine core's monotonic timestamps (arrival_time is wall-clock and not comparable)."""
    metrics = getattr(output, "metrics", None)
    queued, last = getattr(metrics, "queued_ts", None), getattr(metrics, "last_token_ts", None)
    return float(last - queued) if queued and last else float("nan")


def format_table(record: dict) -> str:
    """The terminal table of a run_vllm_bench record."""
    rows = ["method    tau   tok/s  speedup  mismatches"]
    for name, m in record["methods"].items():
        rows.append(f"{name:<8} {m['tau']:5.2f} {m['tokens_per_s']:7.1f} {m['speedup']:7.2f}x {m['mismatches']:>6}")
        if "latency_s" in m:
            rows[-1] += f"   latency median {m['latency_s']['median']:.2f}s p90 {m['latency_s']['p90']:.2f}s"
    return "\n".join(rows)
