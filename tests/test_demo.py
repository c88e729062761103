"""The pieces of `dream demo` that do not need the real target: the shipped prompts parse, their images
exist and are small, scripts/make_prompts.py reproduces them byte for byte, the answer shown is chosen as
documented, and the whole demo flow runs in bf16 with a tiny target standing in for the zoo one."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import torch

import dream.commands.demo as demo
from dream.bench.run import BenchResult, PromptRun
from dream.methods import DraftSpec
from dream.settings import DEFAULT_MAX_NEW_TOKENS, resolve_dtype_name
from dream.cli import main
from dream.draft import DraftConfig, build_draft, save_draft
from dream.metrics import GenerationMetrics
from dream.bench.prompts import ASSETS_PROMPTS, DEMO_PROMPTS, HELDOUT_PROMPTS, read_prompts
from dream.target import TargetAdapter

REPO = Path(__file__).resolve().parent.parent


def test_shipped_prompts_parse_and_their_images_exist():
    heldout = read_prompts(HELDOUT_PROMPTS)
    assert len(heldout) >= 24
    categories = {r.category for r in heldout}
    assert categories == {"describe", "vqa", "open", "natural"}
    assert all(r.image_path.is_file() and r.image.mode == "RGB" for r in heldout)
    assert all(max(r.image.size) <= 128 for r in heldout)
    assert all(r.answer for r in heldout if r.category == "vqa")
    demo_records = read_prompts(DEMO_PROMPTS)
    assert len(demo_records) == 4
    pairs = {(r.image_path, r.prompt) for r in heldout}
    assert all((r.image_path, r.prompt) in pairs for r in demo_records)
    size = sum(f.stat().st_size for f in ASSETS_PROMPTS.rglob("*") if f.is_file())
    assert size < 1_000_000
    used = {r.image_path.resolve() for path in ASSETS_PROMPTS.glob("*.jsonl") for r in read_prompts(path)}
    assert used == {f.resolve() for f in (ASSETS_PROMPTS / "images").iterdir()}     # no stray images


def test_make_prompts_reproduces_the_shipped_files(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_prompts", REPO / "scripts" / "make_prompts.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_prompts", script)     # its dataclass looks its module up there
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path)])
    shipped = sorted(p.relative_to(ASSETS_PROMPTS) for p in ASSETS_PROMPTS.rglob("*") if p.is_file())
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == shipped
    for rel in shipped:
        assert (tmp_path / rel).read_bytes() == (ASSETS_PROMPTS / rel).read_bytes(), rel


def fake_result(categories: list[str | None], methods: list[str]) -> BenchResult:
    records = read_prompts(HELDOUT_PROMPTS, limit=len(categories))
    records = [dataclasses.replace(r, category=c) for r, c in zip(records, categories)]
    run = PromptRun((1, 2), GenerationMetrics())
    return BenchResult(records, [10] * len(records), {m: [(run,)] * len(records) for m in methods})


def test_showcase_prefers_a_long_answer_and_the_best_draft():
    assert demo.showcase(fake_result(["vqa", "open", "natural"], ["ar", "pld", "eagle2", "dream"]), "ar") == (2, "dream")
    assert demo.showcase(fake_result(["vqa", "describe"], ["ar", "pld", "eagle2"]), "ar") == (1, "eagle2")
    assert demo.showcase(fake_result([None, None], ["ar", "pld"]), "ar") == (0, "pld")
    parted = fake_result(["describe", "natural"], ["ar", "hf", "dream"])
    parted.runs["dream"][0] = (PromptRun((1, 3), GenerationMetrics()),)     # a bf16 near tie on prompt 0
    assert demo.showcase(parted, "hf") == (1, "dream")
    parted.runs["hf"][0] = parted.runs["dream"][0]                          # the reference agrees after all
    assert demo.showcase(parted, "hf") == (0, "dream")


def test_demo_flow_with_a_stand_in_target(tiny_target_path, tmp_path, monkeypatch, capsys):
    target_dir = tiny_target_path("idefics3")
    target = TargetAdapter.from_pretrained(target_dir)
    torch.manual_seed(0)
    draft_dir = save_draft(tmp_path / "dream", build_draft(DraftConfig.from_target(target, "dream")),
                           target.fingerprint())
    monkeypatch.setattr(demo, "resolve_target_path", lambda name: target_dir)
    monkeypatch.setattr(demo, "shipped_drafts", lambda: [DraftSpec("dream", draft_dir)])
    plot, out = tmp_path / "demo.png", tmp_path / "demo.json"
    assert main(["demo", "--max-new-tokens", "4", "--plot", str(plot), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert plot.read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(out.read_text())
    assert list(doc["methods"]) == ["ar", "hf", "pld", "dream"] and doc["config"]["dtype"] == resolve_dtype_name("auto")
    assert doc["config"]["command"][:2] == ["dream", "demo"] and doc["mismatch_reference"] == "hf"
    assert doc["config"]["tree"] == {"top_k": 3, "depth": 5, "total_tokens": 12, "chain": False}
    assert doc["config"]["num_prompts"] == 4
    assert "prompt (evqa_2.png): Describe this image." in captured.out and "answer (dream" in captured.out


def test_demo_defaults():
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([])
    assert args.plot == Path("demo.png") and args.max_new_tokens == DEFAULT_MAX_NEW_TOKENS and args.json is None
