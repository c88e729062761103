"""Reproduce the shipped prompts: dream/assets/prompts/{heldout,demo,eval-seen,eval-unseen,dev}.jsonl and images.

    python scripts/make_prompts.py [--out dream/assets/prompts]

Sources (both installed with the project, nothing downloaded):
  * easy-vqa TEST images (64 x 64 PNG, copied byte for byte): never seen by the zoo target's or the drafts'
    training, which use the train split. Prompts: descriptions, the image's own easy-vqa questions (with
    their answers as a reference), and short open questions.
  * six natural photographs from skimage.data, downsized to 128 px JPEG: out of the target's training
    distribution on purpose (the draft has to follow whatever the target says).
  * eval-seen / eval-unseen / dev: the two evaluation splits and the tuning split of dream.zoo.splits
    (in-distribution; leave-kind-out; dev), pictures made offline by dream.zoo.kinds.
Deterministic: a fixed seed picks the images and phrasings, so rerunning rewrites identical files.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "dream" / "assets" / "prompts"
SEED = 0
NATURAL_SIDE = 128

DESCRIBE = (
    "Describe this image.", "Describe the image in a few sentences.", "What do you see in this picture?",
    "Give a short description of this image.", "Tell me about this image.", "Describe what is shown here.",
    "What does this picture show?", "Write a short caption for this image.",
)
OPEN = (
    "Where is the shape in the image?", "How big is the shape compared to the whole picture?",
    "What color is the background?", "Is the shape close to an edge of the picture?",
    "How many shapes are in the image, and what are they?", "What is the color and the shape of the object?",
)
# skimage.data name -> prompt. All are public domain or CC0 (see skimage.data's own documentation).
NATURAL = (
    ("astronaut", "Describe this image."),
    ("coffee", "What is in this picture?"),
    ("chelsea", "What animal is in this picture, and what is it doing?"),
    ("rocket", "Describe what is happening in this image."),
    ("coins", "What objects can you see in this image?"),
    ("hubble_deep_field", "What colors do you see in this image?"),
)
COUNTS = {"describe": 8, "vqa": 10, "open": 6}
# Demo: long answers show speculative decoding best (a one-word VQA answer is mostly prefill).
DEMO = (("describe", 0), ("describe", 1), ("open", 0), ("natural", 0))


README = """# Shipped prompts

Written by `python scripts/make_prompts.py`; edit the script, not these files.

- `heldout.jsonl`: the first benchmark prompts (`dream bench` default), one JSON object a line:
  `{"image": "images/...", "prompt": "...", "category": "describe|vqa|open|natural", "answer": "..."}`
  (`answer` only for easy-vqa questions, as a reference; the benchmark does not score it). Its prompts use
  the same sources and phrasings as the drafts' first training data: an in-distribution set.
- `demo.jsonl`: the 4 prompts of `dream demo`.
- `eval-seen.jsonl` (36): in-distribution evaluation. Image kinds and prompt templates of draft training
  (`dream.zoo.draft_data`), on pictures training never saw. `category` is the image kind.
- `eval-unseen.jsonl` (36): leave-kind-out evaluation. Only image kinds that draft training never has
  (pie_chart, table, diagram: `dream.zoo.kinds.HELD_OUT_KINDS`) and only prompt templates it never uses (the
  `held_out` templates of `dream.zoo.templates`). `category` is the image kind.
- `dev.jsonl` (20): for tuning (tree shape); training kinds and templates, pictures disjoint from both
  evaluation splits and from training. Never evaluate on it.
- `images/evqa_<id>.png`: easy-vqa (MIT licence) TEST images, copied unchanged.
- `images/<name>.jpg`: skimage.data photographs (public domain / CC0), downsized to 128 px.
- `images/{seen,unseen,dev}_<n>.{png,jpg}`: the splits' pictures, 128 px (64 px for easy-vqa shapes), made by
  `dream.zoo.kinds`: drawn, rendered with matplotlib, or crops of skimage.data photographs and easy-vqa test
  images (dev and evaluation use disjoint pools: `dream.zoo.kinds.sampled`).

Tests: `tests/test_eval_splits.py` checks the leave-kind-out property against generated training data and
that dev and evaluation share no picture.
"""
SPLIT_FILES = {"eval-seen": "seen", "eval-unseen": "unseen", "dev": "dev"}   # split -> image name prefix


@dataclass(frozen=True)
class Entry:
    image: str
    prompt: str
    category: str
    answer: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})


def easy_vqa_entries(images: Path, rng: np.random.Generator) -> list[Entry]:
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    qa: dict[int, list[tuple[str, str]]] = {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        qa.setdefault(image_id, []).append((question, answer))
    chosen = sorted(int(i) for i in rng.choice(sorted(paths), sum(COUNTS.values()), replace=False))
    order = [category for category, count in COUNTS.items() for _ in range(count)]
    entries: list[Entry] = []
    used: set[str] = set()
    for n, (image_id, category) in enumerate(zip(chosen, order)):
        name = f"evqa_{image_id}.png"
        shutil.copyfile(paths[image_id], images / name)
        if category == "describe":
            entries.append(Entry(f"images/{name}", DESCRIBE[n % len(DESCRIBE)], category))
        elif category == "open":
            entries.append(Entry(f"images/{name}", OPEN[n % len(OPEN)], category))
        else:
            question, answer = _vqa_question(qa[image_id], n, used, rng)
            used.add(question)
            entries.append(Entry(f"images/{name}", question[0].upper() + question[1:], category, answer))
    return entries


def _vqa_question(pairs: list[tuple[str, str]], n: int, used: set[str],
                  rng: np.random.Generator) -> tuple[str, str]:
    """One of the image's own questions, rotating shape / colour / yes-no kinds, new wordings first
    (easy-vqa's own mix leans to yes/no and repeats a few wordings)."""
    kinds = ({"circle", "rectangle", "triangle"}, {"red", "green", "blue", "black", "gray", "teal", "brown",
                                                    "yellow"}, {"yes", "no"})
    pool = sorted(pairs)
    wanted, fallback = kinds[n % 3], kinds[0] | kinds[1]      # an image without that kind: any wh-question
    of_kind = ([p for p in pool if p[1] in wanted] or [p for p in pool if p[1] in fallback] or pool)
    fresh = [pair for pair in of_kind if pair[0] not in used] or of_kind
    return fresh[int(rng.integers(len(fresh)))]


def natural_entries(images: Path) -> list[Entry]:
    import skimage.data
    from PIL import Image

    entries = []
    for name, prompt in NATURAL:
        pixels = getattr(skimage.data, name)()
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((NATURAL_SIDE, NATURAL_SIDE), Image.Resampling.LANCZOS)
        image.save(images / f"{name}.jpg", quality=85, optimize=True)
        entries.append(Entry(f"images/{name}.jpg", prompt, "natural"))
    return entries


def split_entries(images: Path, split: str) -> list[Entry]:
    """One split of dream.zoo.splits, its pictures saved under images/; the category is the image kind."""
    from dream.zoo.draft_data import save_image
    from dream.zoo.splits import split_prompts

    entries = []
    for n, prompt in enumerate(split_prompts(split, SEED)):
        name = save_image(prompt.image, images, f"{SPLIT_FILES[split]}_{n:02d}", prompt.image_kind)
        entries.append(Entry(f"images/{name}", prompt.prompt, prompt.image_kind))
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args(argv).out
    images = out / "images"
    shutil.rmtree(images, ignore_errors=True)     # the script owns this folder: no stale images survive
    images.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    entries = easy_vqa_entries(images, rng) + natural_entries(images)
    (out / "heldout.jsonl").write_text("".join(e.to_json() + "\n" for e in entries))
    by_category: dict[str, list[Entry]] = {}
    for entry in entries:
        by_category.setdefault(entry.category, []).append(entry)
    demo = [by_category[category][index] for category, index in DEMO]
    (out / "demo.jsonl").write_text("".join(e.to_json() + "\n" for e in demo))
    for split in SPLIT_FILES:
        (out / f"{split}.jsonl").write_text("".join(e.to_json() + "\n" for e in split_entries(images, split)))
    (out / "README.md").write_text(README)
    size = sum(f.stat().st_size for f in images.iterdir())
    print(f"wrote {len(entries)} held-out prompts ({len(demo)} in the demo) and the {', '.join(SPLIT_FILES)} "
          f"splits, {size / 1024:.0f} KiB of images, to {out}")


if __name__ == "__main__":
    main()
