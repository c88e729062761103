"""The shipped evaluation and dev prompts are disjoint from draft training and from each other.

eval-unseen is leave-kind-out: none of its image kinds and none of its prompt templates ever appears in
draft-training data. dev (for tuning) shares no picture with either evaluation split or the old held-out set.
"""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from dream.bench.prompts import ASSETS_PROMPTS, read_prompts
from dream.zoo.draft_data import make_dataset
from dream.zoo.kinds import HELD_OUT_KINDS, TRAIN_KINDS
from dream.zoo.splits import SPLIT_SIZES, split_prompts
from dream.zoo.templates import PROMPT_KINDS, matches

SPLITS = ("eval-seen", "eval-unseen", "dev")
TRAIN_TEMPLATES = [t for kind in PROMPT_KINDS.values() for t in kind.train]
HELD_OUT_TEMPLATES = [t for kind in PROMPT_KINDS.values() for t in kind.held_out]


def _records(split: str) -> list:
    return read_prompts(ASSETS_PROMPTS / f"{split}.jsonl")     # the bench's own reader accepts the files


def _pixels(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """Training data as `python -m dream.zoo.draft_data` makes it (default seed), smaller."""
    path = make_dataset(tmp_path_factory.mktemp("train"), samples=200)
    return path, json.loads(path.read_text())


def test_template_lists_are_disjoint():
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    for held_out in HELD_OUT_TEMPLATES:
        assert not any(matches(template, held_out) for template in TRAIN_TEMPLATES), held_out


def test_training_never_uses_held_out_kinds_or_templates(training):
    _, entries = training
    assert not {e["image_kind"] for e in entries} & set(HELD_OUT_KINDS)
    for entry in entries:
        assert not set(entry["templates"]) & set(HELD_OUT_TEMPLATES)
        for turn in entry["conversations"][::2]:
            text = turn["value"].removeprefix("<image>\n")
            assert not any(matches(template, text) for template in HELD_OUT_TEMPLATES), text


def test_unseen_split_is_leave_kind_out(training):
    _, entries = training
    training_prompts = {turn["value"].removeprefix("<image>\n") for e in entries for turn in e["conversations"][::2]}
    records = _records("eval-unseen")
    assert {r.category for r in records} == set(HELD_OUT_KINDS)
    for record in records:
        assert record.prompt not in training_prompts
        assert not any(matches(template, record.prompt) for template in TRAIN_TEMPLATES), record.prompt
        assert any(matches(template, record.prompt) for template in HELD_OUT_TEMPLATES), record.prompt


def test_seen_and_dev_splits_use_training_kinds_and_templates():
    for split in ("eval-seen", "dev"):
        for record in _records(split):
            assert record.category in TRAIN_KINDS
            assert any(matches(template, record.prompt) for template in TRAIN_TEMPLATES), record.prompt


def test_no_picture_is_shared_between_training_dev_and_evaluation(training):
    path, entries = training
    seen = {split: {_pixels(r.image) for r in _records(split)} for split in SPLITS}
    assert all(len(hashes) == SPLIT_SIZES[split] for split, hashes in seen.items())   # no repeats inside a split
    old = {_pixels(r.image) for r in read_prompts(ASSETS_PROMPTS / "heldout.jsonl")}
    assert not seen["dev"] & (seen["eval-seen"] | seen["eval-unseen"] | old)
    assert not seen["eval-seen"] & seen["eval-unseen"]
    with_image = [e for e in entries if "image" in e]
    trained = {_pixels(Image.open(path.parent / "images" / e["image"])) for e in with_image}
    assert not trained & (seen["dev"] | seen["eval-seen"] | seen["eval-unseen"])


@pytest.mark.parametrize("split", SPLITS)
def test_shipped_files_match_the_generator(split):
    """The files are what scripts/make_prompts.py writes from dream.zoo.splits (prompts and kinds)."""
    shipped = [(r.prompt, r.category) for r in _records(split)]
    assert shipped == [(p.prompt, p.image_kind) for p in split_prompts(split)]
