"""`dream datagen`: LLaVA conversations -> self-distilled draft-training shards (dream.training.datagen)."""

from __future__ import annotations

import argparse

from dream.commands.common import add_device_argument, add_dtype_argument, add_max_new_tokens_argument, add_target_argument
from dream.settings import DTYPES
from dream.training.datagen import ENGINES, DatagenConfig, parse_layer_window, run_datagen
from dream.draft.config import LayerWindow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--data", required=True, help="LLaVA conversation JSON")
    parser.add_argument("--image-folder", required=True, help="folder the JSON's image names are relative to")
    parser.add_argument("--out", required=True, help="shard directory (resumed when it exists)")
    parser.add_argument("--keep-answers", action="store_true", help="keep the dataset's answers (no regeneration)")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N entries")
    parser.add_argument("--shard-size", type=int, default=256, help="entries per shard")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="conversations generated together (vllm: requests in flight)")
    parser.add_argument("--feature-batch-size", type=int, default=8,
                        help="conversations per teacher-forced feature forward (similar lengths together)")
    parser.add_argument("--engine", choices=ENGINES, default="hf",
                        help="what regenerates the answers: hf (batched generate) or vllm (continuous batching; "
                             "answers kept in OUT/answers/, then the HF target extracts the features)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy answers; > 0: sampled answers (--engine vllm)")
    add_max_new_tokens_argument(parser, "per regenerated answer")
    parser.add_argument("--layer-window", type=parse_layer_window, default=LayerWindow(),
                        help="candidate layers for the entropy argmin: A:B (0-based, B excluded), or one layer")
    add_dtype_argument(parser)
    parser.add_argument("--storage-dtype", choices=list(DTYPES), default="bf16",
                        help="dtype of the stored features (default bf16: half the disk, ample for features)")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    cfg = DatagenConfig(
        target=args.target, data=args.data, image_folder=args.image_folder, out=args.out,
        keep_answers=args.keep_answers, max_samples=args.max_samples, shard_size=args.shard_size,
        batch_size=args.batch_size, feature_batch_size=args.feature_batch_size, max_new_tokens=args.max_new_tokens,
        layer_window=args.layer_window,
        dtype=args.dtype, storage_dtype=args.storage_dtype, device=args.device, engine=args.engine,
        temperature=args.temperature,
    )
    answer_stage = None
    if cfg.engine == "vllm":
        from dream.serving.datagen import write_vllm_answers

        answer_stage = write_vllm_answers
    manifest = run_datagen(cfg, answer_stage)
    if manifest is not None:
        print(f"{manifest['num_samples']} samples ({manifest['num_tokens']} tokens) in {len(manifest['shards'])} "
              f"shard(s) at {cfg.out}; skipped {manifest['num_skipped']} of {manifest['num_entries']} entries"
              + (" (reasons in manifest.json)" if manifest["num_skipped"] else ""))
        if manifest["eos_appended"]:
            print(f"{manifest['eos_appended']} answer(s) had no end-of-turn token in the chat template: the "
                  f"tokenizer's EOS was appended to them")
    return 0
