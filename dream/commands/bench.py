"""`dream bench`: ar, pld and every draft side by side, in one process, on the same prompts.

    dream bench --target smolvlm-135m --prompts prompts.jsonl --draft dream=runs/dream \\
        --draft eagle2=runs/eagle2 [--keep-ratios 1.0,0.5] [--temperature 0] [--max-new-tokens 64] \\
        [--dtype bf16] [--json out.json] [--plot out.png]

Without --draft, a zoo target runs its shipped drafts (the ones that exist). Every user error (a bad prompts
line, a missing image, an unknown method name, a draft for another target, a prompt too long for the
context) is raised before the first timed generation. The loop is dream.bench.run, the report
dream.bench.report.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

import torch
import transformers

from dream.bench.report import MethodSummary, format_categories, format_table, json_document, summarize, write_plot
from dream.bench.run import BenchResult, BenchSettings, run_bench
from dream.methods import (
    DTYPES,
    Method,
    add_tree_arguments,
    is_zoo_name,
    load_methods,
    load_target,
    make_proposer,
    method_config,
    parse_draft_arg,
    parse_keep_ratios,
    plan_method_names,
    resolve_target_path,
    shipped_drafts,
    tree_from_args,
)
from dream.bench.prompts import HELDOUT_PROMPTS, PromptRecord, read_prompts
from dream.sampling import SamplingConfig
from dream.target import TargetAdapter

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="checkpoint directory or zoo name (smolvlm-135m)")
    parser.add_argument("--draft", action="append", default=[], metavar="NAME=DIR",
                        help="a draft checkpoint; NAME is eagle2, dream or dream-<ablation> (default: its "
                             "architecture). Repeatable. Default: the shipped drafts of a zoo target")
    parser.add_argument("--prompts", type=Path, default=HELDOUT_PROMPTS,
                        help="JSON Lines {image, prompt, category}; default: the shipped held-out prompts")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write a plot of speedup and tau")
    parser.add_argument("--keep-ratios", metavar="R,R,...",
                        help="also run the dream draft at these visual keep ratios (as dream-keep<100R>)")
    add_tree_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="prompt i samples with seed + i (T > 0)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--warmup", type=int, default=1, help="prompts run untimed first (default 1)")
    add_threads_argument(parser)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    settings = BenchSettings(max_new_tokens=args.max_new_tokens, sampling=SamplingConfig(args.temperature),
                             tree=tree_from_args(args), seed=args.seed, warmup=args.warmup)
    set_threads(args.threads)
    keep_ratios = parse_keep_ratios(args.keep_ratios)
    drafts = [parse_draft_arg(text) for text in args.draft]
    plan_method_names(drafts, keep_ratios)
    prompts = read_prompts(args.prompts, limit=args.limit)
    if not drafts and is_zoo_name(args.target):
        drafts = shipped_drafts()
    dtype = DTYPES[args.dtype]
    target_path = resolve_target_path(args.target)
    target = load_target(target_path, dtype)
    methods = load_methods(target, drafts, keep_ratios, dtype)
    config = bench_config(args.target, target_path, target, methods, settings, args.dtype, args.prompts, prompts)
    execute(target, methods, prompts, settings, config, json_out=args.json, plot_out=args.plot)
    return 0


def execute(target: TargetAdapter, methods: Sequence[Method], prompts: list[PromptRecord], settings: BenchSettings,
            config: dict, *, json_out: Path | None, plot_out: Path | None,
            progress: bool = True) -> tuple[BenchResult, dict[str, MethodSummary], dict[str, list[str]]]:
    """Run, print the tables, write the JSON and plot. Returns the raw result, summaries and decoded texts."""
    load, cores = config["load_average_1m"], config["cpu_count"]
    if load is not None and cores and load > cores - 0.5:
        # Oversubscribed OpenMP threads spin and wait: timings then swing by multiples, not percent.
        log.warning("the machine is busy (load %.1f on %d cores): speeds will be noisy and low "
                    "(--threads 1 suffers least)", load, cores)
    result = run_bench(target, methods, prompts, settings, progress=progress)
    summaries = summarize(result, settings.sampling.greedy)
    # Decoding happens here, after every timed generation.
    texts = {name: [target.tokenizer.decode(run.token_ids, skip_special_tokens=True) for run in runs]
             for name, runs in result.runs.items()}
    print(format_table(summaries))
    if config["dtype"] == "bf16" and any(x.overall.mismatches for x in summaries.values()):
        print("(mismatch in bf16: a tree forward rounds differently from a one-token forward, so a near tie "
              "can flip an argmax; --dtype fp32 checks losslessness)")
    categories = format_categories(summaries)
    if categories:
        print("\nby category")
        print(categories)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(json_document(config, summaries, result, texts), indent=2) + "\n")
        print(f"wrote {json_out}", file=sys.stderr)
    if plot_out is not None:
        title = f"{config['target']} ({config['dtype']}, T={settings.sampling.temperature:g}, {len(prompts)} prompts)"
        print(f"wrote {write_plot(summaries, plot_out, title)}", file=sys.stderr)
    return result, summaries, texts


def bench_config(target_name: str, target_path: Path, target: TargetAdapter, methods: Sequence[Method],
                 settings: BenchSettings, dtype: str, prompts_file: Path, prompts: list[PromptRecord]) -> dict:
    """Everything that decides the numbers: settings as resolved, the target's identity, the software."""
    pld = make_proposer(Method("pld"), target, settings.tree, settings.sampling, settings.seed)
    return {
        "target": target_name,
        "target_path": str(target_path),
        "target_fingerprint": target.fingerprint(),
        "dtype": dtype,
        "prompts_file": str(prompts_file),
        "prompts_sha256": hashlib.sha256(Path(prompts_file).read_bytes()).hexdigest(),
        "num_prompts": len(prompts),
        "categories": sorted({p.category for p in prompts if p.category is not None}),
        "max_new_tokens": settings.max_new_tokens,
        "sampling": dataclasses.asdict(settings.sampling),
        "tree": dataclasses.asdict(settings.tree),
        "pld": {"num_tokens": pld.num_tokens, "max_ngram": pld.max_ngram, "min_ngram": pld.min_ngram},
        "seed": settings.seed,
        "warmup": settings.warmup,
        "methods": [m.name for m in methods],
        "drafts": {m.name: method_config(m) for m in methods if m.draft is not None},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,   # before the run
        "platform": platform.platform(),
    }
