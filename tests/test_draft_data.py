"""The zoo target's draft-training dataset is valid LLaVA format, reproducible, and free of held-out images."""

import json

from easy_vqa import get_train_image_paths

from dream.training.data import load_images, load_llava_json
from dream.zoo.draft_data import HELD_OUT_PHOTOS, asks_easy_vqa_question, make_dataset


def test_dataset_is_llava_format_and_reproducible(tmp_path):
    first = make_dataset(tmp_path / "a", samples=20, seed=3)
    again = make_dataset(tmp_path / "b", samples=20, seed=3)
    assert first.read_text() == again.read_text()
    conversations = load_llava_json(first)
    assert len(conversations) == len(json.loads(first.read_text()))
    for conversation in conversations[:25]:
        images = load_images(conversation, first.parent / "images")
        assert not isinstance(images, str), images  # a str names why the image could not be read
    names = {entry["image"] for entry in json.loads(first.read_text())}
    assert not {f"{photo}.jpg" for photo in HELD_OUT_PHOTOS} & names
    train = get_train_image_paths()
    for name in (n for n in names if n.startswith("evqa_")):
        assert (first.parent / "images" / name).read_bytes() == open(train[int(name[5:-4])], "rb").read()


def test_one_word_questions_come_first(tmp_path):
    """Datagen batches consecutive entries: easy-vqa questions (one-word answers) are grouped before the rest."""
    entries = json.loads(make_dataset(tmp_path, samples=60, seed=1).read_text())
    short = [asks_easy_vqa_question(e) for e in entries]
    assert any(short) and not all(short)
    assert short == sorted(short, reverse=True)
