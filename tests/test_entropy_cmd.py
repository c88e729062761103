"""`dream entropy` on a tiny target: the JSON report and the table agree with dream.training.entropy computed directly
over the same tokens, the plot is written, missing images are counted, and an unusable dataset is a
one-line error."""

from __future__ import annotations

import json

import torch

from dream.cli import main as cli_main
from dream.training.data import conversation_inputs, load_images, load_llava_json
from dream.draft.config import LayerWindow
from dream.training.entropy import entropy_report
from llava_data import write_dataset


def test_report_json_plot_and_table(tiny_target_path, tiny_target, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num=4, missing=(2,))
    code = cli_main(["entropy", "--target", str(tiny_target_path("gemma3")), "--data", str(data),
                     "--image-folder", str(data.parent), "--layer-window", "1:", "--plot", str(tmp_path / "e.png"),
                     "--json", str(tmp_path / "e.json"), "--dtype", "fp32"])
    assert code == 0
    report = json.loads((tmp_path / "e.json").read_text())
    target = tiny_target("gemma3")
    # Reference: the same statistics straight from dream.training.entropy over the response-predicting tokens.
    entropies = []
    for conversation in load_llava_json(data):
        images = load_images(conversation, data.parent)
        if isinstance(images, str):
            continue
        sample = conversation_inputs(target, conversation, [t.answer for t in conversation.turns], images)
        stats = target.prefill(sample.inputs, target.new_cache(), entropy=True).stats
        entropies.append(stats.entropy[:, sample.loss_mask])
    expected = entropy_report(entropies, window=LayerWindow(start=1))
    assert report["num_tokens"] == expected.num_tokens == sum(e.shape[1] for e in entropies)
    torch.testing.assert_close(torch.tensor(report["mean"]), torch.tensor(expected.mean))
    assert report["argmin_counts"] == expected.argmin_counts and report["argmin_counts"][0] == 0
    assert len(report["mean"]) == target.num_layers and report["window"]["start"] == 1
    assert report["num_samples"] == 3 and report["num_skipped"] == 1 and report["skipped"][0]["id"] == "s2"
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert "3 samples (1 skipped)" in table[0] and len(table) == 2 + target.num_layers


def test_no_usable_sample_is_a_one_line_error(tiny_target_path, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num=2, missing=(0, 1))
    code = cli_main(["entropy", "--target", str(tiny_target_path("llava")), "--data", str(data),
                     "--image-folder", str(data.parent)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "all 2 skipped (first: image not found" in err
