"""The zoo target's draft-training dataset is valid LLaVA format, reproducible, wide, and says what it holds."""

import json

import pytest

from dream.training.data import load_images, load_llava_json
from dream.zoo.draft_data import make_dataset
from dream.zoo.kinds import IMAGE_KINDS, TRAIN_KINDS
from dream.zoo.kinds.sampled import PHOTOS
from dream.zoo.templates import IMAGE_PROMPT_KINDS, PROMPT_KINDS, matches


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 150-conversation dataset (every training image kind and prompt kind appears)."""
    path = make_dataset(tmp_path_factory.mktemp("draft-data"), samples=150, seed=5)
    return path, json.loads(path.read_text())


def test_dataset_is_reproducible(tmp_path):
    first, again = (make_dataset(tmp_path / name, samples=30, seed=2) for name in "ab")
    assert first.read_text() == again.read_text()
    for entry in json.loads(first.read_text()):
        if "image" in entry:
            assert (first.parent / "images" / entry["image"]).read_bytes() == (again.parent / "images" / entry["image"]).read_bytes()


def test_dataset_is_llava_format(dataset):
    path, entries = dataset
    conversations = load_llava_json(path)
    assert len(conversations) == len(entries)
    for conversation in conversations:
        images = load_images(conversation, path.parent / "images")
        assert not isinstance(images, str), images  # a str names why the image could not be read


def test_entries_record_their_kinds_and_templates(dataset):
    _, entries = dataset
    for entry in entries:
        assert entry["id"].startswith(f"{entry['image_kind']}-{entry['prompt_kind']}-")
        humans = [turn["value"].removeprefix("<image>\n") for turn in entry["conversations"][::2]]
        assert len(entry["templates"]) == len(humans)
        assert ("image" in entry) == (entry["image_kind"] != "none") == ("<image>" in entry["conversations"][0]["value"])
        for template, text in zip(entry["templates"], humans):
            assert template == "easy-vqa" or matches(template, text), (template, text)
    assert {e["image_kind"] for e in entries} == {*TRAIN_KINDS, "none"}
    assert {e["prompt_kind"] for e in entries} == {*IMAGE_PROMPT_KINDS, "text_only", "easy-vqa"}
    assert any(len(e["conversations"]) == 4 for e in entries)      # multi-turn, with a follow-up
    assert set(TRAIN_KINDS) < set(IMAGE_KINDS) and PROMPT_KINDS["text_only"].with_image is False


def test_entries_are_grouped_by_answer_length(dataset):
    """Datagen batches consecutive entries: short-answer kinds come first, text-only conversations last."""
    _, entries = dataset
    text_only = ["image" not in e for e in entries]
    assert text_only == sorted(text_only)
    short = [e["prompt_kind"] in ("easy-vqa", "yesno", "count") for e in entries if "image" in e]
    assert short == sorted(short, reverse=True)


def test_photo_pools_are_disjoint():
    train, dev, evaluation = (set(PHOTOS[split]) for split in ("train", "dev", "eval"))
    assert not train & dev and not train & evaluation and not dev & evaluation
