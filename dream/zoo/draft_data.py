"""A LLaVA-format dataset for training drafts of the zoo target, from offline images only.

    python -m dream.zoo.draft_data --out runs/draft-data --samples 3000

writes `data.json` ({"id", "image", "conversations"} entries, `<image>` in the first human turn) and
`images/` with easy-vqa TRAIN images (the held-out bench prompts use test images) and the scikit-image
photos that the held-out prompts do not use. Only the prompts matter: `dream datagen` lets the target
regenerate every answer (self-distillation), so the answers written here are placeholders.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# The held-out bench prompts use these photos; training never sees them.
HELD_OUT_PHOTOS = {"astronaut", "chelsea", "coffee", "coins", "hubble_deep_field", "rocket"}
TRAIN_PHOTOS = ("cat", "camera", "clock", "colorwheel", "horse", "logo", "moon", "page", "grass", "gravel",
                "brick", "immunohistochemistry", "retina", "text", "cell", "microaneurysms")  # bundled with skimage

DESCRIBE = ("Describe this image.", "Describe the image in a few sentences.", "What do you see in this picture?",
            "Give a short description of this image.", "What is shown here?", "Tell me about this image.")
OPEN = ("What color is the shape, and where is it?", "Is the shape large or small?",
        "What could this shape be used to represent?", "Write one sentence about this picture.",
        "How many shapes are in the image?", "What is the background color?")
PHOTO = ("Describe this image.", "What is in this picture?", "What colors do you see in this image?",
         "Describe what is happening in this image.", "What objects can you see in this image?")
FOLLOW_UP = ("Can you say more?", "Why do you think so?", "Summarize that in one sentence.")


def _conversation(first: str, rng: np.random.Generator) -> list[dict[str, str]]:
    turns = [{"from": "human", "value": f"<image>\n{first}"}, {"from": "gpt", "value": "-"}]
    if rng.random() < 0.15:  # some multi-turn samples, as in LLaVA data
        turns += [{"from": "human", "value": str(rng.choice(FOLLOW_UP))}, {"from": "gpt", "value": "-"}]
    return turns


def _easy_vqa_entries(samples: int, rng: np.random.Generator, images: Path) -> list[dict]:
    from easy_vqa import get_train_image_paths, get_train_questions

    questions, _, image_ids = get_train_questions()
    paths = get_train_image_paths()
    entries = []
    for index in rng.choice(len(questions), size=samples, replace=False):
        image_id = int(image_ids[index])
        kind = rng.random()
        prompt = questions[index].capitalize() if kind < 0.45 else str(rng.choice(DESCRIBE if kind < 0.85 else OPEN))
        name = f"evqa_{image_id}.png"
        if not (images / name).exists():
            shutil.copyfile(paths[image_id], images / name)
        entries.append({"id": f"evqa-{index}", "image": name, "conversations": _conversation(prompt, rng)})
    return entries


def asks_easy_vqa_question(entry: dict) -> bool:
    first = entry["conversations"][0]["value"].removeprefix("<image>\n")
    return entry["id"].startswith("evqa-") and first not in DESCRIBE + OPEN


def _photo_entries(rng: np.random.Generator, images: Path, size: int = 128) -> list[dict]:
    import skimage.data

    entries = []
    for name in TRAIN_PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)())
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((size, size))
        image.save(images / f"{name}.jpg", quality=90)
        for j, prompt in enumerate(PHOTO):
            entries.append({"id": f"photo-{name}-{j}", "image": f"{name}.jpg", "conversations": _conversation(prompt, rng)})
    return entries


def make_dataset(out: Path, samples: int, seed: int = 0) -> Path:
    """Write out/data.json and out/images/; returns the JSON path."""
    assert not HELD_OUT_PHOTOS.intersection(TRAIN_PHOTOS), "held-out photos must stay out of training"
    rng = np.random.default_rng(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = _easy_vqa_entries(samples, rng, images) + _photo_entries(rng, images)
    entries = [entries[i] for i in rng.permutation(len(entries))]
    # One-word answers first, then the rest: a batched `generate` runs as long as its longest answer,
    # so grouping similar lengths makes datagen about twice as fast. Training draws batches at random.
    entries.sort(key=lambda e: not asks_easy_vqa_question(e))
    data = out / "data.json"
    tmp = data.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(data)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=3000, help="easy-vqa prompts (photos add 85 more)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_dataset(args.out, args.samples, args.seed))


if __name__ == "__main__":
    main()
