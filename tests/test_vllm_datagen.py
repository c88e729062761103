"""`dream datagen --engine vllm` on a tiny Idefics3 target (fp32): vLLM's greedy answers, spliced in token
space, give the same shards as the HF engine's batched generate (skipped without vLLM, failed under CI=true)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from optional import require

require("vllm")

from fixtures import build_tiny_target  # noqa: E402
from llava_data import make_config, write_dataset  # noqa: E402

from dream.serving.datagen import write_vllm_answers  # noqa: E402
from dream.training.datagen import run_datagen  # noqa: E402
from dream.training.shards import ShardDataset  # noqa: E402


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    # head_dim 32: vLLM's CPU attention has no kernel for the fixtures' 16.
    return build_tiny_target("idefics3", tmp_path_factory.mktemp("idefics3"), head_dim=32)


def test_vllm_answers_make_the_hf_engines_shards(idefics3, tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", num=5, missing=(3,))           # entry 1 has a second turn
    stage = partial(write_vllm_answers, in_process=True)
    made = run_datagen(make_config(idefics3, data, tmp_path / "vllm", engine="vllm", max_new_tokens=12), stage)
    reference = run_datagen(make_config(idefics3, data, tmp_path / "hf", max_new_tokens=12))
    assert made["num_samples"] == reference["num_samples"] == 4
    assert [s["id"] for s in made["skipped"]] == [s["id"] for s in reference["skipped"]] == ["s3"]
    assert made["num_response_tokens"] == reference["num_response_tokens"] > 4 * 2
    ours, theirs = ShardDataset(tmp_path / "vllm"), ShardDataset(tmp_path / "hf")
    for i in range(len(ours)):
        for name in ("input_ids", "loss_mask", "features", "aux_features", "visual_positions"):
            assert torch.equal(getattr(ours[i], name), getattr(theirs[i], name)), (i, name)
    answers = sorted((tmp_path / "vllm" / "answers").glob("*.json"))
    assert len(answers) == len(made["shards"]) and json.loads(answers[0].read_text())["answers"]
    # A rerun finds every shard made: no engine starts, no shard or answer changes (the manifest is rewritten).
    before = _made_files(tmp_path / "vllm")
    monkeypatch.setattr("dream.serving.datagen.build_llm", lambda *a, **k: pytest.fail("an engine started"))
    run_datagen(make_config(idefics3, data, tmp_path / "vllm", engine="vllm", max_new_tokens=12), stage)
    assert _made_files(tmp_path / "vllm") == before


def _made_files(folder):
    """Shards and answer files with their modification times (the manifest is rewritten by every run)."""
    return {f.name: f.stat().st_mtime_ns for f in folder.rglob("*") if f.name != "manifest.json"}


def test_bad_engine_settings_fail_before_any_output(idefics3, tmp_path):
    data = write_dataset(tmp_path / "data", num=2)
    with pytest.raises(ValueError, match="need the vllm engine"):
        make_config(idefics3, data, tmp_path / "out", temperature=0.7)
    with pytest.raises(ValueError, match="answer stage|one process"):
        run_datagen(make_config(idefics3, data, tmp_path / "out", engine="vllm"))
    assert not (tmp_path / "out").exists()
