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
from pathlib import Path

from dream.bench.prompts import HELDOUT_PROMPTS, read_prompts
from dream.bench.run import BenchSettings
from dream.bench.session import bench_config, execute
from dream.commands.common import (
    add_device_argument,
    add_dtype_argument,
    add_max_new_tokens_argument,
    add_target_argument,
    add_threads_argument,
    add_tree_arguments,
    set_threads,
    tree_from_args,
)
from dream.methods import is_zoo_name, load_methods, parse_draft_arg, parse_keep_ratios, plan_method_names, shipped_drafts
from dream.sampling import SamplingConfig
from dream.settings import torch_dtype
from dream.target import load_target, resolve_target_path



def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--draft", action="append", default=[], metavar="NAME=DIR",
                        help="a draft checkpoint; NAME is eagle2, dream or dream-<ablation> (default: its "
                             "architecture). Repeatable. Default: the shipped drafts of a zoo target")
    parser.add_argument("--prompts", type=Path, default=HELDOUT_PROMPTS,
                        help="JSON Lines {image, prompt, category}; default: the shipped held-out prompts")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    add_max_new_tokens_argument(parser)
    add_dtype_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write a plot of speedup and tau")
    parser.add_argument("--keep-ratios", metavar="R,R,...",
                        help="also run the dream draft at these visual keep ratios (as dream-keep<100R>)")
    add_tree_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="prompt i samples with seed + i (T > 0)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--warmup", type=int, default=1, help="prompts run untimed first (default 1)")
    add_threads_argument(parser)


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
    dtype = torch_dtype(args.dtype)
    target_path = resolve_target_path(args.target)
    target = load_target(target_path, dtype, args.device)
    methods = load_methods(target, drafts, keep_ratios, dtype)
    config = bench_config(args.target, target_path, target, methods, settings, args.dtype, args.prompts, prompts)
    execute(target, methods, prompts, settings, config, json_out=args.json, plot_out=args.plot)
    return 0
