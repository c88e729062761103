"""`dream doctor` on a tiny target: the report names the machine, the probe, every check and the verify-cost
curve; greedy output of ar, pld and a draft equals generate() under the batch-invariant mode; the JSON holds
the same; bad flags are one-line errors. Timings and pads are this machine's facts: reported, not asserted."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import tiny_image

from dream.cli import main
from dream.draft import DraftConfig, build_draft, save_draft
from dream.target import TargetAdapter


@pytest.fixture(scope="module")
def setup(tiny_target_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    target_dir = tiny_target_path("idefics3")
    target = TargetAdapter.from_pretrained(target_dir, batch_invariant="off")
    torch.manual_seed(0)
    draft = save_draft(root / "dream", build_draft(DraftConfig.from_target(target, "dream")), target.fingerprint(),
                       dtype=torch.float32)
    tiny_image(0, (48, 32)).save(root / "img.png")
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"image": "img.png", "prompt": "Describe this image."}) + "\n")
    return {"target": target_dir, "draft": draft, "prompts": prompts, "root": root}


def test_doctor_reports_every_check(setup, capsys):
    out_json = setup["root"] / "doctor.json"
    rc = main(["doctor", "--target", str(setup["target"]), "--draft", f"dream={setup['draft']}",
               "--prompts", str(setup["prompts"]), "--dtype", "bf16", "--batch-invariant", "on", "--limit", "1",
               "--max-new-tokens", "12", "--max-nodes", "6", "--repeats", "1", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0
    for part in ("machine:", "batch-invariant mode: on", "row-wise", "attention", "greedy tokens against generate()",
                 "verify cost", "recommended: --dtype"):
        assert part in text, part
    doc = json.loads(out_json.read_text())
    assert doc["batch_invariance"]["enabled"] and doc["batch_invariance"]["invariant"]
    assert doc["mismatches"] == {"ar": 0, "pld": 0, "dream": 0} and doc["exact"]
    assert [p["nodes"] for p in doc["verify_curve"]] == [1, 2, 3, 4, 5, 6]
    assert doc["verify_curve"][0]["steps"] == 1.0 and all(p["seconds"] > 0 for p in doc["verify_curve"])
    assert doc["verify_curve"][0]["median_steps"] == 1.0 and all(p["median_steps"] > 0 for p in doc["verify_curve"])
    assert not [f["name"] for f in doc["findings"] if f["section"] == "row-wise" and f["differs"]]


@pytest.mark.parametrize("flags, message", [(["--limit", "0"], "must be >= 1"),
                                            (["--max-nodes", "0"], "must be >= 1")])
def test_doctor_bad_flags_are_one_line(setup, capsys, flags, message):
    rc = main(["doctor", "--target", str(setup["target"]), "--prompts", str(setup["prompts"]), *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
