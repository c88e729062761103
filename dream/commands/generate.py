"""`dream generate`: one answer for one image and prompt, streamed as the target accepts tokens.

    dream generate --target smolvlm-135m --image cat.png --prompt "Describe this image." [--method dream]

Method: ar (plain decoding), pld (prompt lookup), dream, eagle2 or eagle3 (a draft: --draft DIR, or the
shipped one of a zoo target). Without --method: the --draft's architecture, else the shipped dream draft of a zoo
target when it exists, else ar. With --json nothing is streamed (streaming would be timed too) and one
JSON object is printed: text, prompt_token_ids, token_ids (new tokens), tau, tokens_per_s,
target_forwards and the rest of dream.metrics' summary, plus the resolved settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dream.chat import user_messages
from dream.commands.common import (
    add_batch_invariant_argument,
    add_device_argument,
    add_dtype_argument,
    add_max_new_tokens_argument,
    add_target_argument,
    add_tree_arguments,
    tree_from_args,
)
from dream.engine import generate
from dream.images import read_image
from dream.method_names import DRAFT_NAMES
from dream.methods import SHIPPED_DRAFTS, DraftSpec, draft_spec, is_zoo_name, load_methods, make_proposer
from dream.sampling import SamplingConfig
from dream.settings import torch_dtype
from dream.target import load_target

METHODS = ("ar", "pld", "dream", "eagle2", "eagle3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--draft", type=Path, metavar="DIR",
                        help="draft checkpoint (for --method dream / eagle2 / eagle3)")
    parser.add_argument("--image", type=Path, metavar="FILE", help="the image (omit for a text-only prompt)")
    parser.add_argument("--prompt", required=True, help="the user's text; sent through the chat template")
    parser.add_argument("--method", choices=METHODS, help="default: the draft's architecture, see above")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    add_max_new_tokens_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    add_dtype_argument(parser)
    add_device_argument(parser)
    add_batch_invariant_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_tree_arguments(parser)


def run(args: argparse.Namespace) -> int:
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    tree = tree_from_args(args)
    # Cheap checks first: a wrong image or draft fails before the target is loaded.
    image = read_image(args.image) if args.image is not None else None
    draft = draft_spec(args.draft) if args.draft is not None else None
    name, draft_path = choose_method(args.method, draft, args.target)
    dtype = torch_dtype(args.dtype)
    target = load_target(args.target, dtype, args.device, args.batch_invariant)
    drafts = [] if draft_path is None else [DraftSpec(name, draft_path)]
    method = next(m for m in load_methods(target, drafts, [], dtype) if m.name == name)
    images = [] if image is None else [image]
    inputs = target.build_inputs(user_messages(args.prompt, with_image=bool(images)), images)
    stream = None if args.json else _print_text
    result = generate(target, inputs, proposer=make_proposer(method, target, tree, sampling, args.seed),
                      sampling=sampling, max_new_tokens=args.max_new_tokens, seed=args.seed, on_tokens=stream)
    summary = result.metrics.summary()
    if args.json:
        config = {"target": args.target, "draft": None if draft_path is None else str(draft_path),
                  "dtype": args.dtype, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                  "sampling": dataclasses.asdict(sampling), "tree": dataclasses.asdict(tree)}
        print(json.dumps({"method": method.name, "text": result.text,
                          "prompt_token_ids": inputs.input_ids[0].tolist(), "token_ids": result.token_ids,
                          **summary, "config": config}))
    else:
        print()
        print(f"[{method.name}: {summary['num_tokens']} tokens, tau {summary['tau']:.2f}, "
              f"{summary['tokens_per_s']:.1f} tokens/s, {summary['target_forwards']} target forwards]",
              file=sys.stderr)
    return 0


def choose_method(requested: str | None, draft: DraftSpec | None, target: str) -> tuple[str, Path | None]:
    """(method name, draft directory or None for ar / pld); ValueError for a contradiction."""
    shipped = {name: SHIPPED_DRAFTS / name for name in DRAFT_NAMES
               if is_zoo_name(target) and (SHIPPED_DRAFTS / name / "config.json").is_file()}
    if requested is None:
        requested = draft.name if draft is not None else ("dream" if "dream" in shipped else "ar")
    if requested in ("ar", "pld"):
        if draft is not None:
            raise ValueError(f"--draft is not used by --method {requested}: drop it or choose dream / eagle2 / eagle3")
        return requested, None
    if draft is not None:
        if draft.name != requested:
            raise ValueError(f"--draft {draft.path} is a {draft.name} draft, not {requested}")
        return requested, draft.path
    if requested in shipped:
        return requested, shipped[requested]
    where = f" (no shipped {requested} draft at {SHIPPED_DRAFTS / requested})" if is_zoo_name(target) else ""
    raise ValueError(f"--method {requested} needs --draft DIR{where}")


def _print_text(_tokens: list[int], text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
