"""`dream bench --tree auto` on a tiny target: dev prompts disjoint from the evaluation ones, every draft and
prompt lookup get a calibrated shape within the limits, the JSON records the choice and the calibration, and
the accepted-path walk reads ranks the way the verifier tries children."""

from __future__ import annotations

import contextlib
import functools
import json
import math

import pytest
import torch

import dream.commands.bench
from dream.bench.prompts import read_prompts
from dream.bench.tune import TuneSettings, check_disjoint, timing_tree, walk
from dream.cli import main
from dream.draft import DraftConfig, build_draft, save_draft
from dream.target import TargetAdapter
from dream.tree import tree_from_parents
from fixtures import tiny_image

SMALL = TuneSettings(max_top_k=2, max_depth=3, calibration_nodes=6, node_counts=(1, 2, 4, 6),
                     verify_nodes=(1, 3, 6), verify_depths=(1, 3), timing_repeats=1)


@pytest.fixture(scope="module")
def files(tiny_target_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    target_dir = tiny_target_path("idefics3")
    target = TargetAdapter.from_pretrained(target_dir)
    torch.manual_seed(0)
    draft = save_draft(root / "dream", build_draft(DraftConfig.from_target(target, "dream")), target.fingerprint())
    for i in range(4):
        tiny_image(10 + i, (32, 24)).save(root / f"img{i}.png")
    write = lambda name, rows: (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("eval.jsonl", [{"image": "img0.png", "prompt": "Describe this image."},
                         {"image": "img1.png", "prompt": "one two one two one two"}])
    # Same image as an evaluation prompt, other text: not an overlap.
    write("dev.jsonl", [{"image": "img2.png", "prompt": "Describe this image."},
                        {"image": "img0.png", "prompt": "two one two one two one"},
                        {"image": "img3.png", "prompt": "What is it?"}])
    return {"target": target_dir, "dream": draft, "eval": root / "eval.jsonl", "dev": root / "dev.jsonl"}


def test_tree_auto_records_the_choice_and_the_calibration(files, tmp_path, monkeypatch):
    monkeypatch.setattr(dream.commands.bench, "tune_methods",
                        functools.partial(dream.commands.bench.tune_methods, tune=SMALL))
    out = tmp_path / "r.json"
    rc = main(["bench", "--target", str(files["target"]), "--prompts", str(files["eval"]), "--draft",
               str(files["dream"]), "--tree", "auto", "--dev-prompts", str(files["dev"]), "--dtype", "fp32",
               "--max-new-tokens", "8", "--warmup", "0", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    config, tune = doc["config"], doc["config"]["tune"]
    assert config["tree"] == "auto" and tune["num_dev_prompts"] == 3 and tune["dev_prompts_file"] == str(files["dev"])
    assert set(tune["methods"]) == {"pld", "dream"}
    dream_tune = tune["methods"]["dream"]
    chosen = dream_tune["chosen"]
    assert 1 <= chosen["top_k"] <= 2 and 1 <= chosen["depth"] <= 3 and chosen["total_tokens"] in (1, 2, 3, 4, 6)
    assert config["trees"]["dream"] == {k: chosen[k] for k in ("top_k", "depth", "total_tokens")} | {"chain": False}
    assert all(chosen["tokens_per_s"] >= r["tokens_per_s"] for r in dream_tune["runners_up"])
    assert len(dream_tune["acceptance"]) == 3 and all(len(row) == 2 for row in dream_tune["acceptance"])
    assert all(0 <= p <= 1 for row in dream_tune["acceptance"] for p in row) and dream_tune["rounds"] > 0
    assert set(dream_tune["draft_s"]) == {f"{k},{d}" for k in (1, 2) for d in (1, 2, 3)}
    assert dream_tune["check"]["measured_tau"] >= 1.0
    pld_chain = tune["methods"]["pld"]["chosen"]["depth"]
    assert config["pld"]["num_tokens"] == pld_chain and 1 <= pld_chain <= 3
    assert all(math.isfinite(tune["verify_cost"][k]) for k in ("base", "per_node", "per_depth"))
    grid = {(1, 0), (2, 1), (4, 1), (7, 1), (4, 3), (7, 3)}
    assert {(n, d) for n, d, _ in tune["verify_cost"]["samples"]} == grid
    assert doc["methods"]["dream"]["mismatches"] == 0


def test_a_tuned_run_lends_its_shapes_to_later_runs(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dream.commands.bench, "tune_methods",
                        functools.partial(dream.commands.bench.tune_methods, tune=SMALL))
    common = ["bench", "--target", str(files["target"]), "--dtype", "fp32", "--max-new-tokens", "6", "--warmup", "0"]
    tuned, reused = tmp_path / "tuned.json", tmp_path / "reused.json"
    assert main([*common, "--prompts", str(files["eval"]), "--draft", str(files["dream"]), "--tree", "auto",
                 "--dev-prompts", str(files["dev"]), "--json", str(tuned)]) == 0
    assert main([*common, "--prompts", str(files["eval"]), "--draft", str(files["dream"]), "--temperature", "1",
                 "--tree", str(tuned), "--json", str(reused)]) == 0
    first, second = (json.loads(path.read_text())["config"] for path in (tuned, reused))
    assert second["tree"] == "auto" and second["trees"] == first["trees"] and second["pld"] == first["pld"]
    assert second["tune"]["reused_from"]["file"] == str(tuned)
    assert second["tune"]["reused_from"]["sampling"]["temperature"] == 0.0
    assert second["tune"]["methods"] == first["tune"]["methods"]

    torch.manual_seed(1)
    target = TargetAdapter.from_pretrained(files["target"])
    other = save_draft(tmp_path / "dream", build_draft(DraftConfig.from_target(target, "dream")), target.fingerprint())
    capsys.readouterr()
    refusals = [
        (["--prompts", str(files["eval"]), "--draft", str(other), "--tree", str(tuned)], "another draft checkpoint"),
        (["--prompts", str(files["dev"]), "--draft", str(files["dream"]), "--tree", str(tuned)], "overlaps"),
        (["--prompts", str(files["eval"]), "--draft", str(files["dream"]), "--tree", str(tuned), "--depth", "2"],
         "chooses the shapes itself"),
        (["--prompts", str(files["eval"]), "--methods", "ar", "--tree", str(reused.with_name("none.json"))],
         "no such file"),
    ]
    fixed = tmp_path / "fixed.json"
    assert main([*common, "--prompts", str(files["eval"]), "--methods", "ar", "--json", str(fixed)]) == 0
    refusals.append((["--prompts", str(files["eval"]), "--methods", "ar", "--tree", str(fixed)],
                     "did not use --tree auto"))
    for extra, message in refusals:
        # argparse refuses a missing file itself (SystemExit 2); the command returns 2 for the rest.
        with pytest.raises(SystemExit) if message == "no such file" else contextlib.nullcontext():
            assert main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], (extra, err)


def test_overlap_is_by_pixels_and_text(files, tmp_path):
    evaluation, dev = read_prompts(files["eval"]), read_prompts(files["dev"])
    check_disjoint(dev, evaluation, files["dev"])                  # shares an image, never image and text
    (tmp_path / "again.png").write_bytes((files["eval"].parent / "img1.png").read_bytes())
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "again.png", "prompt": " one two one two one two"}) + "\n")
    with pytest.raises(ValueError, match="1 share image and prompt .dev line 1 is evaluation line 2"):
        check_disjoint(read_prompts(tmp_path / "d.jsonl"), evaluation, tmp_path / "d.jsonl")


def test_walk_reads_ranks_in_tree_order_and_stops_at_the_verified_depth():
    #        0
    #      1   2          children of the root in rank order: 1 (rank 0), 2 (rank 1)
    #     3 4   5         3, 4 under 1; 5 under 2
    tree = tree_from_parents(torch.tensor([9, 10, 11, 12, 13, 14]), torch.tensor([-1, 0, 0, 1, 1, 2]))
    accepted_second = walk(tree, [11, 14], max_depth=2)
    assert accepted_second.walk == ((2, 1), (1, 0)) and accepted_second.accepted == 2
    rejected = walk(tree, [10], max_depth=2)
    assert rejected.walk == ((2, 0), (2, None)) and rejected.drafted == 5 and rejected.depth == 2
    cut = walk(tree, [10], max_depth=1)                            # the engine cut depth 2 off: no rejection there
    assert cut.walk == ((2, 0),) and cut.drafted == 2 and cut.depth == 1


def test_tune_settings_refuse_extrapolation():
    with pytest.raises(ValueError, match="calibration tree"):
        TuneSettings(calibration_nodes=16)
    with pytest.raises(ValueError, match="no extrapolation"):
        TuneSettings(verify_nodes=(1, 8))


def test_timing_trees_have_the_asked_size_and_depth():
    for nodes, depth in [(1, 0), (2, 1), (9, 1), (9, 8), (33, 4)]:
        tree = timing_tree(nodes, depth)
        assert tree.num_nodes == nodes and int(tree.depths.max()) == depth
