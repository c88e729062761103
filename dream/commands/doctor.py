"""`dream doctor`: this machine's numerics and verify cost for a target, and the dtype and tree it recommends.

    dream doctor --target smolvlm-135m [--dtype auto] [--limit 2] [--max-nodes 16] [--json OUT]

It reports which operations are batch-invariant (and what the batch-invariant mode pads), whether greedy
output of ar, prompt lookup and the drafts equals generate()'s on dev prompts, and the verify-cost curve
(N nodes against one decoding step). Methods: ar and pld, plus the shipped drafts of a zoo target or the
--draft NAME=DIR given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dream.bench.doctor import examine, format_report
from dream.bench.prompts import ASSETS_PROMPTS, read_prompts
from dream.bench.run import build_inputs
from dream.commands.common import (
    add_batch_invariant_argument,
    add_device_argument,
    add_dtype_argument,
    add_target_argument,
    add_threads_argument,
    parse_draft_arg,
    set_threads,
)
from dream.methods import is_zoo_name, load_methods, shipped_drafts
from dream.settings import torch_dtype
from dream.target import load_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--draft", action="append", default=[], metavar="NAME=DIR",
                        help="a draft to check too (default: the shipped drafts of a zoo target)")
    parser.add_argument("--prompts", type=Path, default=ASSETS_PROMPTS / "dev.jsonl",
                        help="prompts for the exactness check (default: the dev split)")
    parser.add_argument("--limit", type=int, default=2, help="prompts checked for exactness (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per prompt (default 32)")
    parser.add_argument("--max-nodes", type=int, default=16, help="largest verify timed (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="each verify's time is the fastest of this many")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    add_dtype_argument(parser)
    add_device_argument(parser)
    add_batch_invariant_argument(parser)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1 or args.max_nodes < 1 or args.repeats < 1:
        raise ValueError("--limit, --max-nodes and --repeats must be >= 1")
    set_threads(args.threads)
    prompts = read_prompts(args.prompts, limit=args.limit)
    drafts = [parse_draft_arg(text) for text in args.draft]
    if not drafts and is_zoo_name(args.target):
        drafts = shipped_drafts()
    dtype = torch_dtype(args.dtype)
    target = load_target(args.target, dtype, args.device, args.batch_invariant)
    methods = [m for m in load_methods(target, drafts, [], dtype) if m.name != "hf"]  # hf is the reference
    inputs = build_inputs(target, prompts, args.max_new_tokens)
    report = examine(target, inputs, methods, args.max_new_tokens, args.max_nodes, args.repeats)
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": args.argv, **report.to_json()}, indent=1) + "\n")
    return 0
