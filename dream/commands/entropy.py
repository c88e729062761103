"""`dream entropy`: mean attention entropy by target layer over a LLaVA dataset, and the argmin histogram.

    dream entropy --target smolvlm-135m --data convs.json --image-folder imgs [--max-samples 50]
                  [--layer-window A:B] [--plot entropy.png] [--json entropy.json]

Each conversation (the dataset's own answers) runs once through the target with per-layer attention
statistics. Counted are the tokens the draft is supervised at (positions that predict a response token),
so the histogram shows which layers dream datagen would pick as l* with the same --layer-window. Samples
whose images are missing or unreadable are skipped and counted, as in datagen.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from dream.commands.common import add_device_argument, add_dtype_argument, add_target_argument
from dream.target import TargetAdapter, load_target
from dream.training.data import Conversation, conversation_inputs, load_images, load_llava_json
from dream.training.datagen import parse_layer_window
from dream.draft.config import LayerWindow
from dream.training.entropy import EntropyReport, entropy_report, plot_entropy_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--data", required=True, help="LLaVA conversation JSON")
    parser.add_argument("--image-folder", required=True, help="folder the JSON's image names are relative to")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N entries")
    parser.add_argument("--layer-window", type=parse_layer_window, default=LayerWindow(),
                        help="layers the argmin histogram chooses among: A:B (0-based, B excluded)")
    parser.add_argument("--plot", default=None, help="write the two-panel figure here (.png)")
    parser.add_argument("--json", default=None, help="write the report here")
    add_dtype_argument(parser)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    conversations = load_llava_json(args.data)[: args.max_samples]
    target = load_target(args.target, args.dtype, args.device)
    skipped: list[dict] = []
    try:
        report = entropy_report(_entropies(target, conversations, args.image_folder, skipped),
                                window=args.layer_window)
    except ValueError:
        if len(skipped) == len(conversations):
            raise ValueError(f"no usable sample in {args.data}: all {len(skipped)} skipped "
                             f"(first: {skipped[0]['reason']})") from None
        raise
    if args.json:
        result = {**report.to_dict(), "target": target.fingerprint(), "num_samples":
                  len(conversations) - len(skipped), "num_skipped": len(skipped), "skipped": skipped}
        _write_atomically(Path(args.json), json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot_entropy_report(report, args.plot)
    print(format_report(report, len(conversations) - len(skipped), len(skipped)))
    return 0


def _entropies(target: TargetAdapter, conversations: list[Conversation], image_folder: str,
               skipped: list[dict]) -> Iterator[torch.Tensor]:
    """[L, n] entropy at each counted token of each usable sample; unusable ones are appended to `skipped`."""
    for conversation in tqdm(conversations, desc="entropy", unit="sample", disable=None):
        images = load_images(conversation, image_folder)
        try:
            if isinstance(images, str):
                raise ValueError(images)
            sample = conversation_inputs(target, conversation, [t.answer for t in conversation.turns], images)
        except ValueError as err:
            skipped.append({"index": conversation.index, "id": conversation.id, "reason": str(err)})
            continue
        out = target.prefill(sample.inputs, target.new_cache(), entropy=True)
        yield out.stats.entropy.float().cpu()[:, sample.loss_mask]


def format_report(report: EntropyReport, num_samples: int, num_skipped: int) -> str:
    lines = [f"attention entropy over {report.num_tokens} response-predicting tokens of {num_samples} samples"
             f" ({num_skipped} skipped)", f"{'layer':>5}  {'mean':>8}  {'std':>8}  {'argmin':>7}"]
    for layer, (mean, std, count) in enumerate(zip(report.mean, report.std, report.argmin_counts)):
        lines.append(f"{layer:>5}  {mean:>8.4f}  {std:>8.4f}  {count:>7}")
    return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
