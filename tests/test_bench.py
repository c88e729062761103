"""`dream bench` on a tiny Idefics3 target (the zoo target's family) with untrained drafts saved by
save_draft: every method in the JSON (hf included), 0 greedy mismatches against hf in fp32 on prompts whose
images have other sizes, consistent metrics, intervals, token ids and the recorded command; each user error
is one line and exit 2 before anything is timed; the loop warms up, interleaves and rotates methods over
repeats; prompts files are read strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures import tiny_image

import dream.bench.session
import dream.commands.bench
import dream.bench.run
import dream.methods
from dream.bench.report import summarize
from dream.bench.run import BenchSettings, PromptRun, run_bench
from dream.bench.session import with_margins
from dream.methods import Method, shipped_drafts
from dream.cli import main
from dream.draft import DraftConfig, build_draft, save_draft
from dream.bench.prompts import load_image, read_prompts
from dream.target import TargetAdapter

FAST_RUN = ["--dtype", "fp32", "--max-new-tokens", "8"]
FAST = [*FAST_RUN, "--tree-top-k", "2", "--depth", "2", "--total-tokens", "4"]


@pytest.fixture(scope="module")
def setup(tiny_target_path, tmp_path_factory) -> dict[str, Path]:
    """The target, drafts (dream, eagle2, eagle3, a second dream with larger weights) and a 3-prompt file."""
    root = tmp_path_factory.mktemp("bench")
    target_dir = tiny_target_path("idefics3")
    target = TargetAdapter.from_pretrained(target_dir)
    paths = {"target": target_dir, "root": root}
    for name, arch in (("dream", "dream"), ("eagle2", "eagle2"), ("eagle3", "eagle3"), ("nomid", "dream")):
        torch.manual_seed(len(name))
        draft = build_draft(DraftConfig.from_target(target, arch))
        if name == "nomid":      # a second, different draft of the same architecture
            draft.reset_parameters(std=0.1)
        paths[name] = save_draft(root / name, draft, target.fingerprint(), dtype=torch.float32)
    other = json.loads((paths["dream"] / "config.json").read_text())
    other["target"]["lm_head_sha256"] = "0" * 16
    paths["other"] = root / "other"
    paths["other"].mkdir()
    (paths["other"] / "config.json").write_text(json.dumps(other))
    (paths["other"] / "model.safetensors").write_bytes((paths["dream"] / "model.safetensors").read_bytes())
    for i, size in enumerate([(48, 32), (20, 40), (32, 32)]):
        tiny_image(i, size).save(root / f"img{i}.png")
    lines = [{"image": "img0.png", "prompt": "Describe this image.", "category": "describe"},
             {"image": "img1.png", "prompt": "one two one two one two", "category": "vqa"},
             {"image": "img2.png", "prompt": "What is it?", "category": "vqa"}]
    paths["prompts"] = write_lines(root / "prompts.jsonl", [json.dumps(x) for x in lines])
    return paths


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bench_json_has_every_method_and_no_greedy_mismatch(setup, tmp_path, capsys):
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["bench", "--target", str(setup["target"]), "--prompts", str(setup["prompts"]),
            "--draft", f"dream={setup['dream']}", "--draft", str(setup["eagle2"]), "--draft", str(setup["eagle3"]),
            "--draft", f"dream-nomid={setup['nomid']}", "--keep-ratios", "1.0,0.5", "--repeats", "2",
            "--json", str(out), "--plot", str(plot), "--threads", "1", *FAST]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    names = ["ar", "hf", "pld", "dream", "eagle2", "eagle3", "dream-nomid", "dream-keep100", "dream-keep50"]
    assert list(doc["methods"]) == names and doc["mismatch_reference"] == "hf"
    assert doc["speedup_baseline"] in ("ar", "hf")
    for name, m in doc["methods"].items():
        assert m["mismatches"] == 0 and m["mismatch_details"] == [], name
        assert m["tau"] == pytest.approx(1 + sum(m["acceptance_by_depth"])), name
        assert m["generations"] == 6 and m["num_tokens"] > 0 and m["target_forwards"] > 0     # 3 prompts x 2
        assert set(m["time_split"]) == {"prefill_s", "draft_s", "verify_s", "other_s", "total_s"}
        assert set(m["categories"]) == {"describe", "vqa"}
        assert m["categories"]["vqa"]["generations"] == 4
        low, high = m["tokens_per_s_ci"]
        assert 0 < low <= high and m["tokens_per_s"] > 0
        assert m["speedup"] == pytest.approx(m["tokens_per_s"] / doc["methods"][doc["speedup_baseline"]]["tokens_per_s"])
        assert len(m["speedup_ci"]) == 2 and m["speedup_ci"][0] <= m["speedup_ci"][1]
        assert m["vs_eagle2"] == pytest.approx(m["tokens_per_s"] / doc["methods"]["eagle2"]["tokens_per_s"])
        assert m["vs_eagle2_ci"][0] <= m["vs_eagle2_ci"][1]
    plain = [doc["methods"][name] for name in ("ar", "hf")]
    assert max(m["speedup"] for m in plain) == 1.0 and all(m["tau"] == 1.0 for m in plain)
    assert doc["methods"]["ar"]["acceptance_by_depth"] == []
    assert max(m["tau"] for m in doc["methods"].values()) > 1.0     # paths past the root were verified
    config = doc["config"]
    assert config["command"] == ["dream", *argv] and config["repeats"] == 2
    assert len(config["code"]["commit"]) == 40 and isinstance(config["code"]["dirty"], bool)
    assert config["target_fingerprint"]["family"] == "idefics3" and config["dtype"] == "fp32"
    assert config["versions"]["torch"] == torch.__version__ and config["threads"] == 1
    assert config["tree"] == {"top_k": 2, "depth": 2, "total_tokens": 4, "chain": False}
    assert config["drafts"]["dream-keep50"]["keep_ratio"] == 0.5 and config["methods"] == names
    assert config["trees"]["dream"] == config["tree"] and config["tune"] is None
    assert [p["line"] for p in doc["prompts"]] == [1, 2, 3]
    outputs = doc["prompts"][0]["outputs"]
    assert len({o["text"] for o in outputs.values()}) == 1          # lossless: every method wrote hf's text
    assert len({tuple(o["token_ids"]) for o in outputs.values()}) == 1
    assert all(len(o["token_ids"]) == o["num_tokens"] > 0 and len(o["repeats"]) == 2 for o in outputs.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert all(f"\n{name} " in table for name in names[1:]) and "by category" in table


def test_bench_at_temperature_reports_no_mismatches(setup, tmp_path):
    out = tmp_path / "r.json"
    rc = main(["bench", "--target", str(setup["target"]), "--prompts", str(setup["prompts"]), "--limit", "1",
               "--warmup", "0", "--temperature", "1.0", "--json", str(out), *FAST])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert list(doc["methods"]) == ["ar", "hf", "pld"]
    assert all(m["mismatches"] is None for m in doc["methods"].values())
    assert doc["config"]["sampling"]["temperature"] == 1.0 and doc["config"]["num_prompts"] == 1


def bad_prompts(setup, tmp_path, kind: str) -> Path:
    good = json.dumps({"image": str(setup["root"] / "img0.png"), "prompt": "hi"})
    lines = {"missing_image": [good, json.dumps({"image": "nope.png", "prompt": "hi"})],
             "bad_json": [good, '{"image": "img0.png", "prompt": '],
             "unknown_key": [json.dumps({"image": str(setup["root"] / "img0.png"), "prompt": "hi", "x": 1})]}
    return write_lines(tmp_path / "p.jsonl", lines[kind])


ERRORS = {
    # case: (extra arguments, text the one-line error must contain)
    "missing_image": (lambda s, t: ["--prompts", str(bad_prompts(s, t, "missing_image"))], ["p.jsonl:2", "nope.png"]),
    "bad_json": (lambda s, t: ["--prompts", str(bad_prompts(s, t, "bad_json"))], ["p.jsonl:2", "not valid JSON"]),
    "unknown_key": (lambda s, t: ["--prompts", str(bad_prompts(s, t, "unknown_key"))], ["p.jsonl:1", "'x'"]),
    "missing_prompts": (lambda s, t: ["--prompts", str(t / "none.jsonl")], ["none.jsonl"]),
    "unknown_method": (lambda s, t: ["--draft", f"medusa={s['dream']}"], ["unknown method name 'medusa'"]),
    "baseline_name": (lambda s, t: ["--draft", f"pld={s['dream']}"], ["'pld' names a method without a draft"]),
    "wrong_architecture": (lambda s, t: ["--draft", f"eagle2={s['dream']}"], ["is a dream checkpoint"]),
    "wrong_eagle": (lambda s, t: ["--draft", f"eagle3={s['eagle2']}"], ["is a eagle2 checkpoint", "needs a eagle3"]),
    "other_target": (lambda s, t: ["--draft", str(s["other"])], ["different target", "lm_head_sha256"]),
    "keep_without_dream": (lambda s, t: ["--keep-ratios", "0.5"], ["--keep-ratios"]),
    "bad_keep_ratio": (lambda s, t: ["--draft", str(s["dream"]), "--keep-ratios", "1.5"], ["(0, 1]"]),
    "duplicate": (lambda s, t: ["--draft", str(s["dream"]), "--draft", f"dream={s['nomid']}"], ["unique"]),
    "not_a_draft": (lambda s, t: ["--draft", str(t)], ["not a draft checkpoint"]),
    "bad_threads": (lambda s, t: ["--threads", "0"], ["--threads must be >= 1"]),
    "bad_warmup": (lambda s, t: ["--warmup", "-1"], ["warmup must be >= 0"]),
    "zero_repeats": (lambda s, t: ["--repeats", "0"], ["--repeats must be >= 1, got 0"]),
    "unknown_selected": (lambda s, t: ["--methods", "ar,medusa"], ["unknown method 'medusa'", "ar, hf, pld"]),
    "no_plain_method": (lambda s, t: ["--methods", "pld"], ["plain baseline (ar or hf)"]),
    "json_is_a_folder": (lambda s, t: ["--json", str(t)], ["--json", "is a directory"]),
    "json_unwritable": (lambda s, t: ["--json", "/proc/dream-bench.json"], ["--json", "cannot be written"]),
    "json_under_a_file": (lambda s, t: ["--json", str(s["prompts"] / "r.json")], ["cannot be written"]),
    "plot_unwritable": (lambda s, t: ["--plot", "/proc/dream-bench.png"], ["--plot", "cannot be written"]),
    "plot_suffix": (lambda s, t: ["--plot", str(t / "r.txt")], ["--plot", "must end in one of", ".png"]),
    "same_outputs": (lambda s, t: ["--json", str(t / "r.png"), "--plot", str(t / "r.png")], ["the same file"]),
    "dev_overlaps": (lambda s, t: ["--tree", "auto", "--dev-prompts", str(s["prompts"])],
                     ["overlaps the evaluation prompts", "3 share", "dev line 1 is evaluation line 1"]),
    "dev_overlaps_by_pixels": (lambda s, t: ["--tree", "auto", "--dev-prompts", str(copied_prompt(s, t))],
                               ["overlaps the evaluation prompts", "1 share", "dev line 2 is evaluation line 3"]),
    "auto_with_shape": (lambda s, t: ["--tree", "auto", "--depth", "3"], ["--tree auto chooses", "--depth"]),
    "dev_without_auto": (lambda s, t: ["--dev-prompts", str(s["prompts"])], ["only with --tree auto"]),
}


def copied_prompt(setup, tmp_path) -> Path:
    """A dev file whose second prompt is evaluation line 3 with its image under another name."""
    (tmp_path / "copy.png").write_bytes((setup["root"] / "img2.png").read_bytes())
    lines = [{"image": str(setup["root"] / "img2.png"), "prompt": "Something else?"},
             {"image": "copy.png", "prompt": "What is it?"}]
    return write_lines(tmp_path / "dev.jsonl", [json.dumps(x) for x in lines])


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bench_user_errors_are_one_line_before_timing(setup, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setattr(dream.bench.session, "run_bench", lambda *a, **k: pytest.fail("timing started"))
    monkeypatch.setattr(dream.commands.bench, "tune_methods", lambda *a, **k: pytest.fail("tuning started"))
    extra, expected = ERRORS[case]
    extra = extra(setup, tmp_path)
    shape = FAST_RUN if "auto" in extra else FAST        # --tree auto refuses a given shape
    rc = main(["bench", "--target", str(setup["target"]), "--prompts", str(setup["prompts"]), *shape, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dream bench: error: "), err
    assert all(text in lines[0] for text in expected), lines[0]


def test_run_bench_warms_up_then_interleaves_and_rotates(setup, monkeypatch):
    calls: list[tuple[str, int]] = []
    real_generate, real_hf = dream.bench.run.generate, dream.bench.run.hf_generate

    def recording(target, inputs, *, proposer, seed, **kwargs):
        calls.append((type(proposer).__name__, seed))
        return real_generate(target, inputs, proposer=proposer, seed=seed, **kwargs)

    def recording_hf(target, inputs, sampling, max_new_tokens, seed):
        calls.append(("hf", seed))
        return real_hf(target, inputs, sampling, max_new_tokens, seed)

    monkeypatch.setattr(dream.bench.run, "generate", recording)
    monkeypatch.setattr(dream.bench.run, "hf_generate", recording_hf)
    target = TargetAdapter.from_pretrained(setup["target"])
    prompts = read_prompts(setup["prompts"])
    settings = BenchSettings(max_new_tokens=3, seed=10, warmup=2, repeats=2)
    result = run_bench(target, [Method("ar"), Method("hf"), Method("pld")], prompts, settings, progress=False)
    ar, hf, pld = "NoneType", "hf", "PromptLookupProposer"
    assert calls == [(ar, 10), (hf, 10), (pld, 10), (ar, 11), (hf, 11), (pld, 11),       # warm-up
                     (ar, 10), (hf, 10), (pld, 10), (hf, 11), (pld, 11), (ar, 11),       # repeat 0
                     (pld, 12), (ar, 12), (hf, 12),
                     (hf, 13), (pld, 13), (ar, 13), (pld, 14), (ar, 14), (hf, 14),       # repeat 1: seeds go on
                     (ar, 15), (hf, 15), (pld, 15)]
    assert [[len(cells) for cells in runs] for runs in result.runs.values()] == [[2, 2, 2]] * 3
    assert result.first("ar")[1].token_ids == result.first("pld")[1].token_ids == result.first("hf")[1].token_ids
    assert result.runs["ar"][1][0].token_ids == result.runs["ar"][1][1].token_ids      # greedy: repeats agree
    with pytest.raises(ValueError, match="plain baseline"):
        run_bench(target, [Method("pld")], prompts, settings, progress=False)


def test_a_mismatch_names_its_position_and_fp32_margin(setup):
    target = TargetAdapter.from_pretrained(setup["target"])
    settings = BenchSettings(max_new_tokens=4, warmup=0)
    result = run_bench(target, [Method("ar"), Method("hf")], read_prompts(setup["prompts"], limit=1), settings,
                       progress=False)
    good = result.runs["ar"][0][0]
    assert len(good.token_ids) >= 2
    flipped = (good.token_ids[1] + 1) % target.vocab_size
    result.runs["ar"][0] = (PromptRun((good.token_ids[0], flipped, *good.token_ids[2:]), good.metrics),)
    summary = summarize(result, greedy=True)
    mismatch = summary.methods["ar"].overall.mismatched[0]
    assert (mismatch.line, mismatch.position, mismatch.expected, mismatch.got) == (1, 1, good.token_ids[1], flipped)
    assert summary.methods["hf"].overall.mismatches == 0 and mismatch.fp32_margin is None
    filled = with_margins(summary, result, target, settings, {"dtype": "fp32", "target_path": "not loaded"})
    mismatch = filled.methods["ar"].overall.mismatched[0]
    # The reference is the fp32 greedy path: its token is the argmax there, ahead of the flipped one.
    assert mismatch.fp32_token == good.token_ids[1] and mismatch.fp32_margin > 0
    assert filled.methods["ar"].categories["describe"].mismatched[0].fp32_margin == mismatch.fp32_margin


def test_read_prompts_strict_and_limited(setup, tmp_path):
    records = read_prompts(setup["prompts"])
    assert [(r.line, r.category, r.image.size) for r in records] == [
        (1, "describe", (48, 32)), (2, "vqa", (20, 40)), (3, "vqa", (32, 32))]
    text = (setup["prompts"]).read_text().splitlines()
    path = write_lines(setup["root"] / "gaps.jsonl", [text[0], "", "  ", text[1]])
    assert [r.line for r in read_prompts(path)] == [1, 4]
    assert len(read_prompts(setup["prompts"], limit=2)) == 2
    # A missing image past the limit is never opened.
    broken = write_lines(tmp_path / "b.jsonl", [text[0].replace("img0.png", str(setup["root"] / "img0.png")),
                                               json.dumps({"image": "gone.png", "prompt": "x"})])
    assert len(read_prompts(broken, limit=1)) == 1
    for line, message in [("[1, 2]", "expected a JSON object"), ('{"image": "a.png"}', "'prompt' must be"),
                          ('{"image": "a.png", "prompt": "x", "category": 3}', "'category' must be a string")]:
        with pytest.raises(ValueError, match=message):
            read_prompts(write_lines(tmp_path / "x.jsonl", [line]))
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(write_lines(tmp_path / "empty.jsonl", [""]))


def test_load_image_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not a readable image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="is not a readable image"):
        load_image(tmp_path)
    tiny_image(0, (10, 6)).convert("L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").mode == "RGB"


def test_shipped_drafts_skip_missing_with_a_warning(tmp_path, monkeypatch, caplog):
    """A missing shipped draft is a warning, and an error only when the run asks for it."""
    monkeypatch.setattr(dream.methods, "SHIPPED_DRAFTS", tmp_path)
    (tmp_path / "dream").mkdir()
    (tmp_path / "dream" / "config.json").write_text("{}")
    with caplog.at_level("WARNING"):
        found = shipped_drafts()
    assert [(d.name, d.path) for d in found] == [("dream", tmp_path / "dream")]
    assert "shipped eagle2 draft not found" in caplog.text and "shipped eagle3 draft not found" in caplog.text
    with pytest.raises(ValueError, match=r"no shipped eagle3 draft at .*: give one with --draft eagle3=DIR"):
        shipped_drafts(["ar", "eagle3"])
    (tmp_path / "eagle3").mkdir()
    (tmp_path / "eagle3" / "config.json").write_text("{}")
    assert [d.name for d in shipped_drafts(["ar", "eagle3"])] == ["eagle3", "dream"]
