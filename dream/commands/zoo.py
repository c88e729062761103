"""`dream zoo build|check|draft-data|train-vision`: the offline targets from the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dream.zoo.build import ZOO
    from dream.zoo.model import assets_dir
    from dream.zoo.train_vision import TrainConfig

    sub = parser.add_subparsers(dest="action", required=True)
    build_parser = sub.add_parser("build", help="build the target into the cache (reused when present)")
    build_parser.add_argument("name", choices=sorted(ZOO))
    build_parser.add_argument("--force", action="store_true", help="rebuild even if a cached build matches")
    check_parser = sub.add_parser("check", help="easy-vqa test accuracy and sample descriptions")
    check_parser.add_argument("name", help="zoo name or checkpoint directory")
    check_parser.add_argument("--questions", type=int, default=1000,
                              help="easy-vqa test questions (a fixed subset; 0 = all 9,673)")
    check_parser.add_argument("--batch-size", type=int, default=32)
    data_parser = sub.add_parser("draft-data", help="write the offline draft-training dataset (LLaVA format, "
                                                     "placeholder answers for datagen to regenerate)")
    data_parser.add_argument("--out", type=Path, required=True)
    data_parser.add_argument("--samples", type=int, default=2000, help="conversations")
    data_parser.add_argument("--seed", type=int, default=0)
    data_parser.add_argument("--mix", choices=["standard", "wide"], default="standard",
                             help="what the conversations are made of (dream.zoo.draft_data.MIXES)")
    train_parser = sub.add_parser("train-vision", help="train (or export) the smolvlm-135m vision side, "
                                                       "see dream.zoo.train_vision")
    train_parser.add_argument("--export", metavar="CKPT", help="export a checkpoint to the assets folder and exit")
    train_parser.add_argument("--assets", default=str(assets_dir("smolvlm-135m")), help="export destination")
    train_parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    train_parser.add_argument("--init-from", metavar="ASSETS", type=Path,
                              help="start stage 2 from exported weights in this folder")
    for field in dataclasses.fields(TrainConfig):
        kind = _yes_or_no if isinstance(field.default, bool) else type(field.default)
        train_parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default)


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        from dream.zoo.build import build

        print(build(args.name, force=args.force))
    elif args.action == "check":
        from dream.zoo.check import check

        check(args.name, n_questions=args.questions or None, batch_size=args.batch_size)
    elif args.action == "draft-data":
        from dream.zoo.draft_data import make_dataset

        print(make_dataset(args.out, args.samples, args.seed, args.mix))
    elif args.export:
        from dream.zoo.export import export

        export(Path(args.export), Path(args.assets))
    else:
        from dream.zoo.train_vision import TrainConfig, run_training

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        run_training(TrainConfig.from_dict(values), resume=args.resume, init_from=args.init_from)
    return 0


def _yes_or_no(text: str) -> bool:
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "yes", "1")
