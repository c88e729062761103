"""Draft export for vLLM, the checkpoint fingerprint and the requirements filter (no engine; mostly no vLLM)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from dream.draft import DraftConfig, read_draft_config
from dream.methods import SHIPPED_DRAFTS
from dream.serving.export import DRAFT_ARCHITECTURE, export_for_vllm, exported_draft, read_exported_config
from optional import require


@pytest.mark.parametrize("name", ["dream", "eagle2"])
def test_export_reads_back_as_the_same_draft(tmp_path, name):
    source = SHIPPED_DRAFTS / name
    out = export_for_vllm(source, tmp_path / "out")
    config = AutoConfig.from_pretrained(out)                 # what vLLM's ModelConfig does
    assert config.architectures == [DRAFT_ARCHITECTURE]
    saved = read_draft_config(source)
    exported = read_exported_config(config)
    assert exported.draft == DraftConfig.from_dict(saved["draft"])
    assert exported.target == saved["target"]
    assert config.hidden_size == exported.draft.hidden_size and config.vocab_size == exported.draft.vocab_size
    weights, original = load_file(str(out / "model.safetensors")), load_file(str(source / "model.safetensors"))
    assert weights.keys() == original.keys() and all(torch.equal(weights[k], original[k]) for k in weights)


def test_exported_draft_is_cached_by_content(tmp_path):
    first = exported_draft(SHIPPED_DRAFTS / "dream", cache_root=tmp_path)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert exported_draft(SHIPPED_DRAFTS / "dream", cache_root=tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp             # not rewritten
    assert exported_draft(SHIPPED_DRAFTS / "eagle2", cache_root=tmp_path) != first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []


def test_a_plain_config_is_not_an_exported_draft():
    with pytest.raises(ValueError, match="dream export"):
        read_exported_config({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(ValueError, match="not a draft checkpoint"):
        exported_draft(SHIPPED_DRAFTS)


def test_checkpoint_fingerprint_matches_the_shipped_drafts_target():
    from dream.serving.fingerprint import check_draft_for_target
    from dream.target.identity import checkpoint_fingerprint
    from dream.zoo.build import resolve_target

    target = resolve_target("smolvlm-135m")
    saved = read_draft_config(SHIPPED_DRAFTS / "dream")["target"]
    assert checkpoint_fingerprint(target) == {k: v for k, v in saved.items() if k != "family"}
    check_draft_for_target(SHIPPED_DRAFTS / "eagle2", target)


def test_a_draft_for_another_target_is_refused(tmp_path):
    from dream.serving.fingerprint import check_draft_for_target
    from dream.zoo.build import resolve_target

    draft = tmp_path / "draft"
    draft.mkdir()
    config = json.loads((SHIPPED_DRAFTS / "dream" / "config.json").read_text())
    config["target"]["lm_head_sha256"] = "0" * 16
    (draft / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="different target: lm_head_sha256"):
        check_draft_for_target(draft, resolve_target("smolvlm-135m"))


def test_the_plugin_draft_refuses_another_targets_shape():
    require("vllm")
    from dream.serving.draft_model import check_target

    exported = read_exported_config(json.loads(json.dumps(
        {"dream_draft": export_config(SHIPPED_DRAFTS / "dream")})))
    text = types.SimpleNamespace(hidden_size=576, num_hidden_layers=30)
    model_config = types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type="idefics3"),
                                         hf_text_config=text, get_vocab_size=lambda: 49156)
    check_target(exported, types.SimpleNamespace(model_config=model_config))
    text.num_hidden_layers = 24
    with pytest.raises(ValueError, match="num_layers: draft 30 != target 24"):
        check_target(exported, types.SimpleNamespace(model_config=model_config))


def export_config(source):
    from dream.serving.export import _hf_config

    saved = read_draft_config(source)
    return _hf_config(DraftConfig.from_dict(saved["draft"]), saved, source)["dream_draft"]


def test_requirements_drop_the_cuda_built_packages():
    from dream.serving.requirements import vllm_requirements

    require("vllm")
    lines = vllm_requirements()
    names = {line.split(";")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip() for line in lines}
    assert {"torchvision", "torchaudio", "torchcodec"}.isdisjoint(names)
    assert "transformers" in names and not any("extra ==" in line for line in lines)
