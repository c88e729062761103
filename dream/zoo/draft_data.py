"""A LLaVA-format dataset for training drafts of the zoo target, made offline from a seed.

    dream zoo draft-data --out runs/draft-data --samples 2000

writes `data.json` and `images/`. Each entry is a LLaVA conversation ({"id", "image", "conversations"},
`<image>` in the first human turn; no "image" for a text-only conversation) plus three fields that say what
it is made of, for checking splits: "image_kind" (dream.zoo.kinds; "none" when text-only), "prompt_kind"
(dream.zoo.templates) and "templates" (the template of every human turn; "easy-vqa" for the dataset's own
questions). Only the prompts matter: `dream datagen` lets the target regenerate every answer
(self-distillation), so the answers written here are placeholders.

Mix (`DataMix`; `--mix standard`): every TRAINING image kind in equal shares, with prompts of every image
prompt kind; one in five image conversations has a text-only follow-up turn; a tenth of the conversations
are text-only; a few easy-vqa questions (one-word answers). `--mix wide` gives the kinds with writing
(text, documents, digits, labelled charts) twice the share and reading prompts on them three times the
weight, and two in five image conversations a follow-up, a third of those a third turn. Held-out image kinds and held-out templates never appear here
(tests/test_eval_splits.py checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dream.zoo.kinds import IMAGE_KINDS, TRAIN_KINDS
from dream.zoo.kinds.common import pick
from dream.zoo.templates import IMAGE_PROMPT_KINDS, PROMPT_KINDS, render



@dataclass(frozen=True)
class DataMix:
    """Shares of the dataset; `wide` is the mix of the 6,400-conversation drafts (docs: dream/assets/drafts)."""

    text_only: float = 0.10        # conversations without an image
    easy_vqa: float = 0.05         # easy-vqa's own one-word questions
    follow_up: float = 0.20        # image conversations with a text-only second turn
    third_turn: float = 0.0        # of those, the share with a third turn
    reading_weight: float = 2.0    # read prompts on pictures with writing, relative to other prompt kinds
    reading_kinds: float = 1.0     # pictures with writing, relative to other image kinds


MIXES = {"standard": DataMix(),
         "wide": DataMix(follow_up=0.40, third_turn=0.35, reading_weight=3.0, reading_kinds=2.0)}
# Prompt kinds whose answers are usually short, then medium: datagen batches consecutive entries and a
# batched `generate` runs as long as its longest answer, so similar lengths go together.
_LENGTH_RANK = {"easy-vqa": 0, "yesno": 0, "count": 0, "locate": 1, "compare": 1, "read": 1}
_READING_KINDS = ("text", "document", "digits", "bar_chart", "line_chart", "scatter_plot")


@dataclass(frozen=True)
class Sample:
    image_kind: str                   # a key of IMAGE_KINDS, or "none"
    prompt_kind: str                  # a key of PROMPT_KINDS, or "easy-vqa"
    turns: tuple[tuple[str, str], ...]   # (template, rendered prompt) per human turn
    image: Image.Image | None

    def entry(self, index: int, image_name: str | None) -> dict:
        conversations = []
        for t, (_, prompt) in enumerate(self.turns):
            text = f"<image>\n{prompt}" if t == 0 and image_name else prompt
            conversations += [{"from": "human", "value": text}, {"from": "gpt", "value": "-"}]
        entry = {"id": f"{self.image_kind}-{self.prompt_kind}-{index}"}
        if image_name:
            entry["image"] = image_name
        return {**entry, "conversations": conversations, "image_kind": self.image_kind,
                "prompt_kind": self.prompt_kind, "templates": [template for template, _ in self.turns]}


def image_sample(rng: np.random.Generator, image_kind: str, prompt_kind: str, split: str = "train",
                 held_out: bool = False, follow_up: bool = False, third_turn: bool = False) -> Sample:
    """One picture of `image_kind` and a prompt of `prompt_kind`, from training or held-out templates."""
    kind = IMAGE_KINDS[image_kind]
    image = kind.make(rng, split)
    turns = [_turn(rng, prompt_kind, held_out, kind.thing, kind.things)]
    if follow_up:
        turns.append(_turn(rng, "follow_up", held_out))
    if follow_up and third_turn:
        turns.append(_turn(rng, "follow_up", held_out))
    return Sample(image_kind, prompt_kind, tuple(turns), image)


def _turn(rng: np.random.Generator, prompt_kind: str, held_out: bool, thing: str = "object",
          things: str = "objects") -> tuple[str, str]:
    templates = PROMPT_KINDS[prompt_kind]
    template = pick(rng, templates.held_out if held_out else templates.train)
    return template, render(template, rng, thing, things)


def _text_only_sample(rng: np.random.Generator) -> Sample:
    return Sample("none", "text_only", (_turn(rng, "text_only", held_out=False),), None)


def _easy_vqa_sample(rng: np.random.Generator, questions: tuple[list, list]) -> Sample:
    """One of easy-vqa's own train questions on its own image (short, one-word answers)."""
    import easy_vqa

    texts, image_ids = questions
    index = int(rng.integers(len(texts)))
    with Image.open(easy_vqa.get_train_image_paths()[int(image_ids[index])]) as image:
        picture = image.convert("RGB")
    question = texts[index][0].upper() + texts[index][1:]
    return Sample("shapes", "easy-vqa", (("easy-vqa", question),), picture)


def _prompt_kind(rng: np.random.Generator, image_kind: str, mix: DataMix) -> str:
    # Reading prompts on pictures with writing in them more often: reading answers are long and varied.
    weights = np.array([mix.reading_weight if k == "read" and image_kind in _READING_KINDS else 1.0
                        for k in IMAGE_PROMPT_KINDS])
    return IMAGE_PROMPT_KINDS[int(rng.choice(len(weights), p=weights / weights.sum()))]


def _image_kinds(mix: DataMix) -> list[str]:
    """The training image kinds in a repeating cycle; a kind with writing appears `reading_kinds` times."""
    repeats = {kind: round(mix.reading_kinds) if kind in _READING_KINDS else 1 for kind in TRAIN_KINDS}
    return [kind for kind in TRAIN_KINDS for _ in range(repeats[kind])]


def training_samples(count: int, rng: np.random.Generator, mix: DataMix = MIXES["standard"]) -> list[Sample]:
    """`count` training samples: training image kinds and training templates only."""
    from easy_vqa import get_train_questions

    texts, _, image_ids = get_train_questions()
    text_only = int(count * mix.text_only)
    easy = int(count * mix.easy_vqa)
    samples = [_text_only_sample(rng) for _ in range(text_only)]
    samples += [_easy_vqa_sample(rng, (texts, image_ids)) for _ in range(easy)]
    cycle = _image_kinds(mix)
    for n in range(count - text_only - easy):
        image_kind = cycle[n % len(cycle)]
        prompt_kind = _prompt_kind(rng, image_kind, mix)
        follow_up = bool(rng.random() < mix.follow_up)
        # Drawn only when the mix has third turns, so the standard mix keeps its earlier random stream.
        third_turn = follow_up and mix.third_turn > 0 and bool(rng.random() < mix.third_turn)
        samples.append(image_sample(rng, image_kind, prompt_kind, follow_up=follow_up, third_turn=third_turn))
    return samples


def save_image(image: Image.Image, folder: Path, stem: str, image_kind: str) -> str:
    """PNG for drawn pictures (small and exact), JPEG for photos and textures (much smaller)."""
    name = f"{stem}.jpg" if image_kind in ("photo", "texture") else f"{stem}.png"
    if name.endswith(".jpg"):
        image.save(folder / name, quality=85, optimize=True)
    else:
        image.save(folder / name, optimize=True)
    return name


def _order(samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
    """Shuffled, then stably grouped by expected answer length and by input shape (see _LENGTH_RANK).
    Training draws batches at random, so the file order only paces datagen."""
    shuffled = [samples[i] for i in rng.permutation(len(samples))]
    return sorted(shuffled, key=lambda s: (s.image is None, _LENGTH_RANK.get(s.prompt_kind, 2), len(s.turns)))


def make_dataset(out: Path, samples: int, seed: int = 0, mix: str = "standard") -> Path:
    """Write out/data.json and out/images/ with the named mix (MIXES); returns the JSON path."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {list(MIXES)}, got {mix!r}")
    rng = np.random.default_rng(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, sample in enumerate(_order(training_samples(samples, rng, MIXES[mix]), rng)):
        name = None if sample.image is None else save_image(sample.image, images, f"{index:05d}", sample.image_kind)
        entries.append(sample.entry(index, name))
    data = out / "data.json"
    tmp = data.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(data)
    return data
