"""`dream export`: a draft checkpoint as a folder that plain vLLM loads once the dream plugin is installed.

    dream export DRAFT --out DIR
    vllm serve TARGET --speculative-config '{"method": "eagle", "model": "DIR", "num_speculative_tokens": 4}'

(method "eagle3" for an eagle3 draft: it reads the target's aux layers.)
DRAFT: `dream` / `eagle2` / `eagle3` (the shipped drafts) or a draft checkpoint directory. --out must be new or an
empty folder; it is written whole or not at all. The folder names the plugin's draft class, so stock vLLM
without the plugin cannot load it (docs/vllm.md). `dream serve` and `dream bench --engine vllm` take the
draft directory itself and export it into the cache on their own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dream.methods import draft_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("draft", metavar="DRAFT", help="dream, eagle2, eagle3 (shipped drafts) or a draft directory")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new (or empty) folder to write")


def run(args: argparse.Namespace) -> int:
    from dream.serving.export import export_draft

    print(export_draft(draft_dir(args.draft), args.out))
    return 0


