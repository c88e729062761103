"""Draft export for vLLM (`dream export` included), the checkpoint fingerprint and the requirements filter (no
engine; mostly no vLLM)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from dream.cli import main
from dream.draft import DraftConfig, build_draft, read_draft_config, save_draft
from dream.methods import SHIPPED_DRAFTS
from dream.serving.engine import EngineConfig, speculative_config
from dream.serving.export import (
    DRAFT_ARCHITECTURE,
    EAGLE3_ARCHITECTURE,
    export_draft,
    export_for_vllm,
    exported_draft,
    read_exported_config,
    vllm_method,
)
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


def test_dream_export_writes_the_folder_vllm_loads(tmp_path, capsys):
    out = tmp_path / "exports" / "dream-vllm"
    assert main(["export", "dream", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = AutoConfig.from_pretrained(out)         # what vLLM's --speculative-config '{"model": OUT}' reads
    assert config.architectures == [DRAFT_ARCHITECTURE]
    assert read_exported_config(config).draft == DraftConfig.from_dict(
        read_draft_config(SHIPPED_DRAFTS / "dream")["draft"])
    assert (out / "model.safetensors").read_bytes() == (SHIPPED_DRAFTS / "dream" / "model.safetensors").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["dream-vllm"]     # no temporary folder left


def _eagle3_draft(tmp_path):
    cfg = DraftConfig(architecture="eagle3", hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      intermediate_size=64, vocab_size=50, blocks=("self",), aux_layers=(2, 2, 1), draft_vocab_size=20)
    return save_draft(tmp_path / "eagle3", build_draft(cfg), {"family": "llama"}), cfg


def test_an_eagle3_draft_exports_for_vllms_eagle3_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "cache"))        # speculative_config's export goes here
    source, cfg = _eagle3_draft(tmp_path)
    assert main(["export", str(source), "--out", str(tmp_path / "out")]) == 0
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.architectures == [EAGLE3_ARCHITECTURE]
    # What vLLM's model runner and EAGLE-3 model read: the aux layers to capture (ours, as they are), fc's width.
    assert config.eagle_aux_hidden_state_layer_ids == [2, 2, 1]
    assert config.num_aux_hidden_states == 3 and config.target_hidden_size == 32 and config.num_hidden_layers == 1
    assert read_exported_config(config).draft == cfg
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    original = load_file(str(source / "model.safetensors"))
    assert "vocab_map" in weights and weights.keys() == original.keys()
    assert vllm_method(source) == "eagle3" and vllm_method(SHIPPED_DRAFTS / "eagle2") == "eagle"
    spec = speculative_config("eagle3", source, EngineConfig(target="t"))
    assert spec["method"] == "eagle3"


def test_the_plugin_eagle3_draft_refuses_vllms_eagle_method(tmp_path):
    require("vllm")
    from dream.serving.eagle3_draft import _read_eagle3_config, captured_layers

    source, _ = _eagle3_draft(tmp_path)
    hf_config = AutoConfig.from_pretrained(export_for_vllm(source, tmp_path / "out"))

    def vllm_config(method: str):
        spec = types.SimpleNamespace(method=method, parallel_drafting=False,
                                     draft_model_config=types.SimpleNamespace(hf_config=hf_config))
        return types.SimpleNamespace(speculative_config=spec)

    assert _read_eagle3_config(vllm_config("eagle3")).draft.aux_layers == (2, 2, 1)
    with pytest.raises(ValueError, match="runs with vLLM's speculative method 'eagle3', not 'eagle'"):
        _read_eagle3_config(vllm_config("eagle"))
    assert captured_layers((2, 2, 1)) == (1, 2)       # what vLLM's EagleModelMixin returns: distinct, ascending


def test_dream_export_fills_an_empty_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(SHIPPED_DRAFTS / "eagle2"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def _not_a_draft(tmp_path):
    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "idefics3"}')
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _an_export(tmp_path):
    return export_for_vllm(SHIPPED_DRAFTS / "dream", tmp_path / "exported")


@pytest.mark.parametrize("draft, expected", [
    (lambda tmp: tmp / "missing", "no such directory"),
    (lambda tmp: SHIPPED_DRAFTS, "not a draft checkpoint directory (config.json missing)"),
    (_not_a_draft, "is not a dream-draft config"),
    (_an_export, "is not a dream-draft config"),
])
def test_dream_export_refuses_what_is_not_a_draft_in_one_line(tmp_path, capsys, draft, expected):
    out = tmp_path / "out"
    assert main(["export", str(draft(tmp_path)), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("dream export: error:")
    assert not out.exists()


def test_dream_export_refuses_a_folder_in_use_and_leaves_it_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "dream", "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failed_export_writes_nothing(tmp_path, monkeypatch):
    def disk_full(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr("dream.serving.export.shutil.copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_draft(SHIPPED_DRAFTS / "dream", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


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
    from dream.serving.draft_io import check_target

    exported = read_exported_config(json.loads(json.dumps(
        {"dream_draft": export_config(SHIPPED_DRAFTS / "dream")})))
    text = types.SimpleNamespace(hidden_size=576, num_hidden_layers=30)
    model_config = types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type="idefics3"),
                                         hf_text_config=text, get_vocab_size=lambda: 49156)
    check_target(exported, types.SimpleNamespace(model_config=model_config))
    text.num_hidden_layers = 24
    with pytest.raises(ValueError, match="num_layers: draft 30 != target 24"):
        check_target(exported, types.SimpleNamespace(model_config=model_config))


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_the_drafts_greedy_token_is_the_argmax_of_its_scattered_logits(monkeypatch, softcap):
    """get_top_tokens (vLLM's use_local_argmax_reduction) picks what compute_logits' argmax picks, ties and the
    never-proposed image token included."""
    require("vllm")
    from torch import nn

    import dream.serving.draft_io as draft_io

    monkeypatch.setattr(draft_io, "get_tensor_model_parallel_world_size", lambda: 1)
    hidden_size, vocab, image_token = 8, 50, 7
    vocab_map = torch.tensor([1, 3, 4, 7, 9, 20, 31, 44])

    class Head(draft_io.TargetSharedIO, nn.Module):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.model = nn.Module()
            self.model.register_buffer("vocab_map", vocab_map)
            self.lm_head = nn.Linear(hidden_size, vocab, bias=False)
            self.vocab_size, self.image_token_id, self.logit_softcap = vocab, image_token, softcap
            self._reduced_head = None

    torch.manual_seed(0)
    head = Head()
    with torch.no_grad():
        tied = 10 * head.lm_head.weight[9]
        head.lm_head.weight[9] = head.lm_head.weight[31] = tied   # a tie between two draft ids ...
        head.lm_head.weight[image_token] = 10 * tied              # ... that only the image token would beat
    hidden = torch.randn(64, hidden_size)
    hidden[:8] = tied                                              # rows where the tie is the maximum
    top = head.get_top_tokens(hidden)
    assert torch.equal(top, head.compute_logits(hidden).argmax(dim=-1))
    assert not (top == image_token).any() and bool((top[:8] == 9).all())


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
