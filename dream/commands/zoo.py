"""`dream zoo build NAME` and `dream zoo check NAME`: the offline targets from the command line."""

from __future__ import annotations

import argparse

from dream.zoo.build import ZOO, build
from dream.zoo.check import check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    build_parser = sub.add_parser("build", help="build the target into the cache (reused when present)")
    build_parser.add_argument("name", choices=sorted(ZOO))
    build_parser.add_argument("--force", action="store_true", help="rebuild even if a cached build matches")
    check_parser = sub.add_parser("check", help="easy-vqa test accuracy and sample descriptions")
    check_parser.add_argument("name", help="zoo name or checkpoint directory")
    check_parser.add_argument("--questions", type=int, default=1000,
                              help="easy-vqa test questions (a fixed subset; 0 = all 9,673)")
    check_parser.add_argument("--batch-size", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        print(build(args.name, force=args.force))
        return 0
    check(args.name, n_questions=args.questions or None, batch_size=args.batch_size)
    return 0
