"""Draft checkpoints: round trip (fp32 exact, bf16 rounded), no shared target weights inside, refusal of
another target, of unknown config keys, and of truncated or corrupted files with a clear error."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import open_draft
from safetensors.torch import load_file

from dream.draft import (
    DraftConfig,
    DraftProposer,
    build_draft,
    frequent_vocab_map,
    load_draft,
    read_draft_config,
    save_draft,
)
from dream.engine import generate
from dream.draft.config import LayerWindow
from dream.tree import TreeConfig


def trained_looking_draft(target, architecture: str = "dream", **over):
    torch.manual_seed(0)
    return open_draft(build_draft(DraftConfig.from_target(target, architecture, **over)), gate=0.5)


@pytest.mark.parametrize("architecture", ["dream", "eagle2", "eagle3"])
def test_round_trip_fp32_is_exact(tiny_target, tmp_path, architecture):
    target = tiny_target("llava")
    draft = trained_looking_draft(target, architecture, draft_vocab_size=32)
    draft.set_vocab_map(frequent_vocab_map(torch.rand(target.vocab_size), 32))
    window = LayerWindow(start=0, stop=2)
    training = {"lr": 3e-5, "steps": 10, "weights": [0.2, 0.2, 1.0]}
    save_draft(tmp_path, draft, target.fingerprint(), layer_window=window, training=training, dtype=torch.float32)
    loaded = load_draft(tmp_path, target)
    assert loaded.draft.config == draft.config and type(loaded.draft) is type(draft)
    assert read_draft_config(tmp_path)["architecture"] == architecture
    assert loaded.layer_window == window and loaded.training == training and loaded.saved_dtype == "float32"
    assert loaded.target_fingerprint == json.loads(json.dumps(target.fingerprint()))
    for (name, saved), (_, restored) in zip(draft.state_dict().items(), loaded.draft.state_dict().items()):
        assert torch.equal(saved, restored), name
    inputs = target.build_inputs([{"role": "user", "content": "hi"}])
    tree = TreeConfig(top_k=2, depth=2, total_tokens=4)
    a = generate(target, inputs, proposer=DraftProposer(draft, target, tree), max_new_tokens=8)
    b = generate(target, inputs, proposer=DraftProposer(loaded.draft, target, tree), max_new_tokens=8)
    assert a.token_ids == b.token_ids and a.metrics.committed == b.metrics.committed


def test_bf16_file_holds_no_shared_weights(tiny_target, tmp_path):
    target = tiny_target("llava")
    draft = trained_looking_draft(target)
    save_draft(tmp_path, draft, target.fingerprint())
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert set(tensors) == set(draft.state_dict())
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    largest = max(t.numel() for t in tensors.values())
    assert largest < target.vocab_size * target.hidden_size       # no embedding / head matrix inside
    loaded = load_draft(tmp_path, target).draft
    for name, p in draft.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p.to(torch.bfloat16).float(), rtol=0, atol=0)
    config = read_draft_config(tmp_path)
    assert config["architecture"] == "dream" and config["draft"]["keep_ratio"] == 0.75


def test_loading_against_another_target_names_the_mismatch(tiny_target, tmp_path):
    llava, gemma = tiny_target("llava"), tiny_target("gemma3")
    save_draft(tmp_path, trained_looking_draft(llava), llava.fingerprint())
    with pytest.raises(ValueError, match="different target.*vocab_size"):
        load_draft(tmp_path, gemma)
    fingerprint = dict(llava.fingerprint(), lm_head_sha256="0" * 16)
    save_draft(tmp_path, trained_looking_draft(llava), fingerprint)
    with pytest.raises(ValueError, match="lm_head_sha256"):
        load_draft(tmp_path, llava)


def test_unknown_or_missing_config_keys_raise(tiny_target, tmp_path):
    target = tiny_target("llava")
    save_draft(tmp_path, trained_looking_draft(target), target.fingerprint())
    config_file = tmp_path / "config.json"
    original = json.loads(config_file.read_text())
    for broken, pattern in [
        ({**original, "learning_rate": 1.0}, "unknown keys"),
        ({**original, "draft": {**original["draft"], "num_blockz": 3}}, "unknown draft config keys"),
        ({**original, "layer_window": {"start": 0, "end": 3}}, "unknown layer window keys"),
        ({k: v for k, v in original.items() if k != "target"}, "missing keys"),
    ]:
        config_file.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=pattern):
            load_draft(tmp_path, target)


def test_truncated_or_corrupted_files_raise_clearly(tiny_target, tmp_path):
    target = tiny_target("llava")
    save_draft(tmp_path, trained_looking_draft(target), target.fingerprint())
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_draft(tmp_path, target)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_draft(tmp_path, target)
    weights.unlink()
    with pytest.raises(ValueError, match="does not exist"):
        load_draft(tmp_path, target)
    config_file = tmp_path / "config.json"
    config_file.write_text(config_file.read_text()[:40])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_draft(tmp_path, target)
