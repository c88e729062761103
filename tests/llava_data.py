"""A tiny LLaVA-format dataset on disk and a datagen config over it, shared by the datagen, train and entropy
command tests."""

from __future__ import annotations

import json
from pathlib import Path

from dream.training.datagen import DatagenConfig
from fixtures import tiny_image

QUESTION = "<image>\nWhat is in the picture?"


def write_dataset(folder: Path, num: int = 6, missing: tuple[int, ...] = (), multi_turn_every: int = 2) -> Path:
    """A LLaVA-format JSON with `num` entries and their PNG images in `folder`; entries in `missing` point to
    an image that does not exist; every `multi_turn_every`-th entry has a second turn."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(num):
        image = f"img{i}.png"
        if i in missing:
            image = f"missing{i}.png"
        else:
            tiny_image(i, (48, 32)).save(folder / image)
        turns = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": f"A shape number {i}."}]
        if multi_turn_every and i % multi_turn_every == 1:
            turns += [{"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "Blue."}]
        entries.append({"id": f"s{i}", "image": image, "conversations": turns})
    path = folder / "data.json"
    path.write_text(json.dumps(entries))
    return path


def make_config(target: Path, data: Path, out: Path, **overrides) -> DatagenConfig:
    settings = dict(target=str(target), data=str(data), image_folder=str(data.parent), out=str(out),
                    shard_size=3, batch_size=2, max_new_tokens=10, dtype="fp32", device="cpu")
    settings.update(overrides)
    return DatagenConfig(**settings)
