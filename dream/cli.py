"""The `dream` command: a thin parser over library functions; nothing runs at import.

COMMANDS maps each subcommand to its module in dream/commands/ (argparse wrappers over library functions;
shared flags in dream/commands/common.py), which exposes `add_arguments(parser)` and `run(args) -> int`.
User errors (ValueError, FileNotFoundError) become one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("dream.commands.generate", "generate an answer for one image and prompt"),
    "bench": ("dream.commands.bench", "compare ar, hf, pld and drafts side by side on a prompts file"),
    "datagen": ("dream.commands.datagen", "make draft-training shards from a LLaVA-format dataset"),
    "train": ("dream.commands.train", "train a DREAM or EAGLE-2-style draft on datagen shards"),
    "entropy": ("dream.commands.entropy", "report attention entropy by target layer over a dataset"),
    "zoo": ("dream.commands.zoo", "build or check the offline targets"),
    "serve": ("dream.commands.serve", "serve a target with a draft through vLLM's OpenAI-compatible server"),
    "export": ("dream.commands.export", "write a draft as a folder vLLM loads as its speculator (with the plugin)"),
    "doctor": ("dream.commands.doctor", "this machine's numerics, exactness and verify cost for a target"),
    "demo": ("dream.commands.demo", "the main job: build the offline target, run a short side-by-side benchmark"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text).set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    known, _ = parser.parse_known_args(argv[:1] or ["--help"])
    module = importlib.import_module(known._module)
    # Loading a checkpoint prints per-tensor progress bars; the commands keep their own tqdm bars.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    sub = argparse.ArgumentParser(prog=f"dream {known.command}", description=COMMANDS[known.command][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    args.argv = ["dream", *argv]     # the command line as given, for the records a command writes
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"dream {known.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
