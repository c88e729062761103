"""dream datagen on tiny targets: shard shapes and manifest, loss mask on responses only, self-distilled
answers equal the engine's greedy output, the entropy-selected layer and stored tensors against an
independent eager-attention reference, resume, refusal of a foreign output directory, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dream.cli import main as cli_main
from dream.training.data import Conversation, Turn, conversation_inputs, load_images, load_llava_json, prompt_inputs
import dream.training.datagen as datagen_module
from dream.training.datagen import parse_layer_window, run_datagen
from dream.training.hf_answers import generate_batch
from dream.engine import generate
from dream.target import TargetAdapter
from dream.draft.config import LayerWindow
from dream.training.entropy import attention_entropy
from dream.training.shards import MANIFEST, ShardDataset
from llava_data import make_config, write_dataset
from fixtures import stock_model, tiny_image

def response_runs(sample) -> list[list[int]]:
    """Contiguous runs of supervised tokens (the token each loss position predicts)."""
    predicted = sample.loss_mask[:-1].tolist()
    runs: list[list[int]] = []
    for i, on in enumerate(predicted):
        if on:
            if not runs or not predicted[i - 1]:
                runs.append([])
            runs[-1].append(int(sample.input_ids[i + 1]))
    return runs


def test_shards_have_consistent_shapes_and_manifest(tiny_target_path, tiny_target, tmp_path):
    target = tiny_target("llava")
    data = write_dataset(tmp_path / "data", num=7, missing=(4,))
    manifest = run_datagen(make_config(tiny_target_path("llava"), data, tmp_path / "out", storage_dtype="bf16"))
    assert manifest["num_entries"] == 7 and manifest["num_samples"] == 6
    assert manifest["num_skipped"] == 1 and manifest["skipped"][0]["id"] == "s4"
    assert "image not found" in manifest["skipped"][0]["reason"]
    assert [s["num_entries"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["target"] == target.fingerprint()
    dataset = ShardDataset(tmp_path / "out")
    assert len(dataset) == 6
    hidden = target.hidden_size
    for i in range(len(dataset)):
        sample = dataset[i]
        seq, vis = sample.input_ids.shape[0], sample.visual_positions.shape[0]
        assert sample.features.shape == sample.mid_features.shape == (seq, hidden)
        assert sample.features.dtype == sample.visual_embeds.dtype == torch.bfloat16
        assert sample.loss_mask.shape == sample.mid_layers.shape == (seq,)
        assert sample.visual_embeds.shape == (vis, hidden) and sample.visual_scores.shape == (vis,)
        assert torch.equal(sample.visual_positions, (sample.input_ids == target.image_token_id).nonzero().flatten())
        assert vis > 0 and not sample.loss_mask[-1]
    assert manifest["num_tokens"] == sum(dataset[i].input_ids.shape[0] for i in range(6))


def test_loss_mask_covers_exactly_the_greedy_answers(tiny_target_path, tiny_target, tmp_path):
    """Self-distillation: each response is the target's own greedy answer (engine oracle) + end of turn."""
    target = tiny_target("llava")
    data = write_dataset(tmp_path / "data", num=4)
    run_datagen(make_config(tiny_target_path("llava"), data, tmp_path / "out"))
    dataset = ShardDataset(tmp_path / "out")
    eos = target.eos_token_ids
    for i, conversation in enumerate(load_llava_json(data)):
        images = load_images(conversation, data.parent)
        runs = response_runs(dataset[i])
        assert len(runs) == len(conversation.turns)
        answers: list[list[int]] = []
        for run in runs:
            prompt = prompt_inputs(target, conversation, answers, images)
            greedy = generate(target, prompt, max_new_tokens=10).token_ids
            greedy = greedy[:-1] if greedy[-1] in eos else greedy
            assert run[:-1] == greedy and run[-1] in eos
            answers.append(greedy)
        # Nothing outside the responses is supervised: the prompt tokens are never predicted.
        assert sum(len(run) for run in runs) == int(dataset[i].loss_mask.sum())


def test_keep_answers_supervises_the_dataset_answers(tiny_target_path, tiny_target, tmp_path):
    target = tiny_target("llava")
    data = write_dataset(tmp_path / "data", num=2)
    run_datagen(make_config(tiny_target_path("llava"), data, tmp_path / "out", keep_answers=True))
    sample = ShardDataset(tmp_path / "out")[1]
    texts = [target.tokenizer.decode(run, skip_special_tokens=True) for run in response_runs(sample)]
    assert texts == ["A shape number 1.", "Blue."]


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_vl"])
def test_selected_layer_and_tensors_match_eager_reference(tiny_target_path, tiny_target, tmp_path, family):
    """Independent reference: stock transformers with eager attention, output_attentions/hidden_states."""
    target = tiny_target(family)
    data = write_dataset(tmp_path / "data", num=2)
    run_datagen(make_config(tiny_target_path(family), data, tmp_path / "out", keep_answers=True,
                            storage_dtype="fp32"))
    sample = ShardDataset(tmp_path / "out")[1]
    conversation = load_llava_json(data)[1]
    images = load_images(conversation, data.parent)
    inputs = conversation_inputs(target, conversation, [t.answer for t in conversation.turns], images).inputs
    assert torch.equal(inputs.input_ids[0], sample.input_ids)
    model = stock_model(tiny_target_path(family), attn_implementation="eager")
    layers = model.model.get_decoder().layers
    # Layer outputs by hook: hidden_states[-1] is after the final norm, not the last layer's output.
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
             for layer in layers]
    with torch.no_grad():
        out = model(input_ids=inputs.input_ids, output_attentions=True, output_hidden_states=True,
                    **inputs.model_kwargs)
    for hook in hooks:
        hook.remove()
    entropy = attention_entropy(torch.stack([a[0] for a in out.attentions]))          # [L, S]
    reference = entropy.argmin(0)
    assert torch.equal(sample.mid_layers, reference)
    assert reference.unique().numel() > 1           # the choice varies by token: a real test
    tokens = torch.arange(sample.input_ids.shape[0])
    layer_outputs = torch.stack([o.reshape(-1, o.shape[-1]) for o in outputs])            # [L, S, H]
    torch.testing.assert_close(sample.mid_features, layer_outputs[reference, tokens], atol=1e-5, rtol=1e-5)
    hidden = torch.stack([h[0] for h in out.hidden_states])                            # [L + 1, S, H]
    torch.testing.assert_close(sample.features, hidden[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sample.visual_embeds, hidden[0][sample.visual_positions], atol=1e-6, rtol=1e-6)
    # What training rebuilds: text embeddings from the ids with the target's own embedding (scaling included).
    text = ~sample.visual_mask
    torch.testing.assert_close(target.embed(sample.input_ids)[text], hidden[0][text], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_batched_feature_pass_makes_the_one_at_a_time_shards(tiny_target_path, tmp_path, family):
    """Conversations of different lengths share a right-padded forward: same entries, in the same order,
    with the tensors of the one-at-a-time pass (fp32, up to batched-kernel rounding)."""
    data = write_dataset(tmp_path / "data", num=6)
    shards = {}
    for size in (1, 4):
        out = tmp_path / f"fb{size}"
        manifest = run_datagen(make_config(tiny_target_path(family), data, out, batch_size=6, shard_size=6,
                                           feature_batch_size=size, storage_dtype="fp32"))
        assert manifest["num_samples"] == 6
        shards[size] = ShardDataset(out)
    lengths = {shards[1][i].input_ids.shape[0] for i in range(6)}
    assert len(lengths) > 1                      # padding happened
    for i in range(6):
        one, batched = shards[1][i], shards[4][i]
        assert torch.equal(one.input_ids, batched.input_ids) and torch.equal(one.mid_layers, batched.mid_layers)
        for name in ("features", "mid_features", "aux_features", "visual_embeds", "visual_scores"):
            torch.testing.assert_close(getattr(batched, name), getattr(one, name), atol=1e-5, rtol=1e-5)


def test_layer_window_restricts_and_static_layer_fixes_the_choice(tiny_target_path, tmp_path):
    data = write_dataset(tmp_path / "data", num=2)
    run_datagen(make_config(tiny_target_path("gemma3"), data, tmp_path / "w", layer_window=parse_layer_window("1:")))
    assert set(ShardDataset(tmp_path / "w")[0].mid_layers.tolist()) <= {1, 2}
    run_datagen(make_config(tiny_target_path("gemma3"), data, tmp_path / "s", layer_window=parse_layer_window("2")))
    assert set(ShardDataset(tmp_path / "s")[0].mid_layers.tolist()) == {2}
    assert parse_layer_window(":2") == LayerWindow(0, 2)
    with pytest.raises(ValueError, match="layer-window"):
        parse_layer_window("a:b")


def test_resume_skips_finished_shards(tiny_target_path, tmp_path):
    data = write_dataset(tmp_path / "data", num=7)
    cfg = make_config(tiny_target_path("llava"), data, tmp_path / "out")
    first = run_datagen(cfg)
    out = tmp_path / "out"
    files = [out / s["file"] for s in first["shards"]]
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    files[1].unlink()
    (out / "manifest.json").unlink()
    (out / f".{files[1].name}.tmp").write_bytes(b"half")          # leftovers of a killed run
    again = run_datagen(cfg)
    assert again == first
    after = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    assert after[0] == before[0] and after[2] == before[2]         # untouched
    assert after[1][1] != before[1][1]                                  # regenerated ...
    # ... with the same tensors and metadata (safetensors orders the header's metadata keys freely).
    assert shard_contents(files[1]) == shard_contents_from_bytes(before[1][0], tmp_path / "before")
    assert sorted(p.name for p in out.iterdir()) == sorted([f.name for f in files] + ["manifest.json"])
    with pytest.raises(ValueError, match="other settings"):
        run_datagen(make_config(tiny_target_path("llava"), data, out, max_new_tokens=5))


@pytest.mark.parametrize("family", ["llava", "smolvlm", "qwen2_vl"])
def test_batched_generation_equals_engine_greedy(tiny_target, family):
    target = tiny_target(family)
    questions = ["Hi", "Describe the picture in much more detail please", "What?"]
    prompts = [target.build_inputs([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                   [tiny_image(i, (48, 32))]) for i, q in enumerate(questions)]
    assert len({p.input_ids.shape[1] for p in prompts}) == 3                        # padding is exercised
    batched = generate_batch(target, prompts, max_new_tokens=12)
    assert batched == [generate(target, p, max_new_tokens=12).token_ids for p in prompts]


@pytest.mark.parametrize("content,match", [
    ({"id": 1}, "expected a JSON list"),
    ([], "holds no conversations"),
    ([{"id": "a", "image": "x.png"}], r"entry 0 \(id 'a'\): field 'conversations'"),
    ([{"id": "a", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]}],
     r"conversations\[0\]\.from must be 'human'"),
    ([{"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "no tag"},
                                                       {"from": "gpt", "value": "x"}]}], "0 '<image>' tag"),
    ("{not json", "not valid JSON"),
])
def test_bad_data_is_one_line_error_and_writes_nothing(tiny_target_path, tmp_path, capsys, content, match):
    data = tmp_path / "data.json"
    data.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        run_datagen(make_config(tiny_target_path("llava"), data, out))
    assert not out.exists()
    code = cli_main(["datagen", "--target", str(tiny_target_path("llava")), "--data", str(data),
                     "--image-folder", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dream datagen: error:") and err.count("\n") == 1
    assert not out.exists()


def test_a_shard_whose_entries_are_all_skipped_is_empty_and_counted(tiny_target_path, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num=4, missing=(0, 1))
    code = cli_main(["datagen", "--target", str(tiny_target_path("llava")), "--data", str(data),
                     "--image-folder", str(data.parent), "--out", str(tmp_path / "out"), "--dtype", "fp32",
                     "--max-new-tokens", "4", "--shard-size", "2"])
    assert code == 0 and "skipped 2 of 4 entries" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 2 and [s["id"] for s in manifest["skipped"]] == ["s0", "s1"]
    with safe_open(str(tmp_path / "out" / "shard-00000.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("features").shape == (0, 64)
    assert len(ShardDataset(tmp_path / "out")) == 2


@pytest.mark.slow
def test_two_processes_write_the_shards_of_one(tiny_target_path, tmp_path):
    data = write_dataset(tmp_path / "data", num=7)
    single = run_datagen(make_config(tiny_target_path("llava"), data, tmp_path / "one"))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "dream.cli", "datagen", "--target", str(tiny_target_path("llava")), "--data", str(data),
                    "--image-folder", str(data.parent), "--out", str(tmp_path / "two"), "--shard-size", "3",
                    "--batch-size", "2", "--max-new-tokens", "10", "--dtype", "fp32", "--device", "cpu"],
                   check=True, env=env, cwd=repo, capture_output=True)
    double = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert double["shards"] == single["shards"]
    for shard in single["shards"]:
        assert (tmp_path / "one" / shard["file"]).read_bytes() == (tmp_path / "two" / shard["file"]).read_bytes()


def shard_contents(file: Path) -> tuple[dict, dict]:
    with safe_open(str(file), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name).tolist() for name in handle.keys()}
        return tensors, handle.metadata()


def shard_contents_from_bytes(data: bytes, file: Path) -> tuple[dict, dict]:
    file.write_bytes(data)
    return shard_contents(file)


def test_bad_entries_are_skipped_and_counted_never_fatal(tiny_target_path, tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", num=4)
    entries = json.loads(data.read_text())
    Image.new("RGB", (10_000, 10_000)).save(data.parent / "huge.png")        # over the pixel limit
    entries[1]["image"] = "huge.png"
    data.write_text(json.dumps(entries))
    real_extract = datagen_module._extract

    def failing_second(target, samples, cfg):
        if len(samples) > 1:
            raise RuntimeError("out of memory")  # the batched forward fails: each sample is retried alone
        failing_second.calls += 1
        if failing_second.calls == 2:
            raise RuntimeError("kernel fault")
        return real_extract(target, samples, cfg)

    failing_second.calls = 0
    monkeypatch.setattr(datagen_module, "_extract", failing_second)
    manifest = run_datagen(make_config(tiny_target_path("llava"), data, tmp_path / "out"))
    reasons = [s["reason"] for s in manifest["skipped"]]
    assert manifest["num_samples"] == 2 and len(reasons) == 2
    assert "pixel limit" in reasons[0] and reasons[1] == "RuntimeError: kernel fault"


def test_all_skipped_is_an_error_and_leaves_no_folder(tiny_target_path, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num=3)
    for file in data.parent.glob("*.png"):
        file.unlink()
    out = tmp_path / "out"
    code = cli_main(["datagen", "--target", str(tiny_target_path("llava")), "--data", str(data), "--image-folder",
                     str(data.parent), "--out", str(out), "--dtype", "fp32", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no usable sample" in err[0] and "image not found" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("verb", ["datagen", "train"])
def test_out_that_is_a_file_is_refused_before_work(tiny_target_path, tmp_path, capsys, verb):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    data = write_dataset(tmp_path / "data", num=1)
    args = {"datagen": ["--data", str(data), "--image-folder", str(data.parent)], "train": ["--data", str(tmp_path)]}
    code = cli_main([verb, "--target", str(tiny_target_path("llava")), *args[verb], "--out", str(taken)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"dream {verb}: error: --out {taken} is a file, not a directory"]
    assert taken.read_text() == "keep me"


def test_template_without_end_of_turn_gets_the_tokenizer_eos(tiny_target_path):
    target = TargetAdapter.from_pretrained(tiny_target_path("llava"))            # its own copy: mutated below
    conversation = Conversation(0, "c0", ("img.png",), (Turn("<image>\nwhat is it?", "a"),))
    answer = [5, 6, 7]
    assert conversation_inputs(target, conversation, [answer], [tiny_image()]).eos_appended == 0
    target._inputs.chat_template = target._inputs.chat_template.replace("<|end|>", "")   # turns end with nothing
    sample = conversation_inputs(target, conversation, [answer], [tiny_image()])
    ids = sample.inputs.input_ids[0].tolist()
    start = len(ids) - 4                                          # nothing follows the last answer
    assert sample.eos_appended == 1
    assert ids[start:] == [*answer, target.tokenizer.eos_token_id]
    assert sample.loss_mask.nonzero().flatten().tolist() == list(range(start - 1, start + 3))


def test_a_dataset_made_in_parts_reads_as_one(tiny_target_path, tmp_path):
    data = write_dataset(tmp_path / "data", num=5)
    target = tiny_target_path("llava")
    run_datagen(make_config(target, data, tmp_path / "all"))
    run_datagen(make_config(target, data, tmp_path / "first", max_samples=2))
    rest = json.loads(data.read_text())[2:]
    (tmp_path / "data" / "rest.json").write_text(json.dumps(rest))
    run_datagen(make_config(target, tmp_path / "data" / "rest.json", tmp_path / "rest", shard_size=2))
    whole, parts = ShardDataset(tmp_path / "all"), ShardDataset(tmp_path / "first", tmp_path / "rest")
    assert len(parts) == len(whole) == 5
    # Other batches: features equal up to batched rounding (a bf16 step where kernels block by rows, as on AVX2).
    for i in range(5):
        assert torch.equal(parts[i].input_ids, whole[i].input_ids)
        torch.testing.assert_close(parts[i].features, whole[i].features, atol=1e-2, rtol=1e-2)
    sampled = json.loads((tmp_path / "rest" / MANIFEST).read_text())     # as `--engine vllm --temperature 1` writes
    sampled["settings"].update(engine="vllm", temperature=1.0)
    (tmp_path / "rest" / MANIFEST).write_text(json.dumps(sampled))
    mixed = ShardDataset(tmp_path / "first", tmp_path / "rest")              # greedy and sampled answers mix
    assert len(mixed) == 5
    assert mixed.settings["temperature"] == [0.0, 1.0] and mixed.settings["engine"] == ["hf", "vllm"]
    run_datagen(make_config(target, data, tmp_path / "longer", max_new_tokens=12))
    with pytest.raises(ValueError, match="different settings: max_new_tokens"):
        ShardDataset(tmp_path / "first", tmp_path / "longer")
    with pytest.raises(ValueError, match="given twice"):
        ShardDataset(tmp_path / "first", tmp_path / "first")
