"""`dream train`: train a DREAM or EAGLE-2 / EAGLE-3-style draft on datagen shards (dream.training.train)."""

from __future__ import annotations

import argparse

from dream.commands.common import add_device_argument, add_dtype_argument, add_target_argument
from dream.draft.config import ARCHITECTURES
from dream.training.train import DRAFT_DIR, TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    add_target_argument(parser)
    parser.add_argument("--data", required=True, nargs="+", metavar="DIR",
                        help="datagen shard directory; several: one dataset made in parts (same target and settings)")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), default="dream")
    parser.add_argument("--out", required=True,
                        help=f"run directory: the trained draft goes to OUT/{DRAFT_DIR}/, plus checkpoints/ "
                             "and train_log.jsonl")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--w-feat", type=float, default=None, help="default: 0.2 (dream, eagle2), 0 (eagle3)")
    parser.add_argument("--w-mid", type=float, default=None, help="default: 0.2 (dream), 0 (eagle2, eagle3)")
    parser.add_argument("--w-kl", type=float, default=defaults.w_kl)
    parser.add_argument("--keep-ratio", type=float, default=None, help="default: 0.75 (dream), 1.0 (eagle2, eagle3)")
    parser.add_argument("--ttt-steps", type=int, default=None, metavar="K",
                        help="training-time test: also train K - 1 steps on the draft's own earlier outputs "
                             "(1 = teacher forcing; default: 3 for eagle3, else 1)")
    parser.add_argument("--noise", type=float, default=defaults.noise)
    add_dtype_argument(parser, "training precision: bf16 autocast, or fp32")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the newest checkpoint in --out, or from the given checkpoint "
                             "directory; the settings must be the checkpoint's (except --eval-every/--save-every)")
    parser.add_argument("--draft-vocab", type=int, default=None)
    parser.add_argument("--blocks", type=lambda s: tuple(s.split(",")), default=None, help="e.g. self,cross,self")
    parser.add_argument("--gate-lr-scale", type=float, default=defaults.gate_lr_scale,
                        help="learning-rate multiple of the cross-attention gates, which start closed "
                             f"(default {defaults.gate_lr_scale:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        arch=args.arch, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        w_feat=args.w_feat, w_mid=args.w_mid, w_kl=args.w_kl, keep_ratio=args.keep_ratio, ttt_steps=args.ttt_steps,
        noise=args.noise, dtype=args.dtype, val_fraction=args.val_fraction, eval_every=args.eval_every,
        save_every=args.save_every,
        draft_vocab=args.draft_vocab, blocks=args.blocks, seed=args.seed, gate_lr_scale=args.gate_lr_scale,
    )
    result = train(cfg, args.target, args.data, args.out, resume=args.resume, device=args.device)
    if result is not None:
        last = result.evaluations[-1]
        summary = "no validation"
        if "val_loss" in last:
            summary = f"val loss {last['val_loss']:.4f}, top-1 agreement {last['val_top1']:.3f}"
        print(f"draft saved to {result.draft_dir} ({summary})")
    return 0
