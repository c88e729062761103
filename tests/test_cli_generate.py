"""`dream generate` on a tiny Idefics3 target: the --json fields, lossless output equal to ar's, streaming
equal to the JSON text, and one-line errors (exit 2) for a missing or non-image file and contradictory
method / draft choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from fixtures import tiny_image

import dream.commands.generate as generate_command
from dream.cli import main
from dream.chat import user_messages
from dream.draft import save_draft
from dream.engine import generate
from dream.target import TargetAdapter
from drafts import overfit_draft

PROMPT = "Describe this image."
FAST = ["--dtype", "fp32", "--max-new-tokens", "10", "--tree-top-k", "2", "--depth", "3", "--total-tokens", "6"]


@pytest.fixture(scope="module")
def setup(tiny_target_path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    target_dir = tiny_target_path("idefics3")
    target = TargetAdapter.from_pretrained(target_dir)
    paths = {"target": target_dir}
    image = tiny_image(0, (40, 24))
    image.save(root / "img.png")
    paths["image"] = root / "img.png"
    # Drafts trained on the target's own answer to the prompt the tests send: they get accepted.
    inputs = target.build_inputs(user_messages(PROMPT, with_image=True), [image])
    answer = generate(target, inputs, max_new_tokens=10).token_ids
    for arch in ("dream", "eagle2", "eagle3"):
        paths[arch] = save_draft(root / arch, overfit_draft(target, inputs, answer, arch), target.fingerprint(),
                                 dtype=torch.float32)
    return paths


def generate_json(setup, capsys, *extra: str) -> dict:
    rc = main(["generate", "--target", str(setup["target"]), "--image", str(setup["image"]),
               "--prompt", PROMPT, "--json", *FAST, *extra])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def test_generate_json_fields_and_lossless(setup, capsys):
    ar = generate_json(setup, capsys, "--method", "ar")
    for key in ("text", "prompt_token_ids", "token_ids", "tau", "tokens_per_s", "target_forwards",
                "acceptance_by_depth", "prefill_s", "draft_s", "verify_s", "num_tokens"):
        assert key in ar, key
    assert ar["method"] == "ar" and ar["tau"] == 1.0 and 1 <= len(ar["token_ids"]) <= 10
    image_id = TargetAdapter.from_pretrained(setup["target"]).image_token_id
    assert image_id in ar["prompt_token_ids"]
    assert ar["config"]["dtype"] == "fp32" and ar["config"]["draft"] is None
    for extra in (["--draft", str(setup["dream"])], ["--draft", str(setup["eagle2"]), "--method", "eagle2"],
                  ["--draft", str(setup["eagle3"])], ["--method", "pld"]):
        spec = generate_json(setup, capsys, *extra)
        assert spec["token_ids"] == ar["token_ids"] and spec["text"] == ar["text"], extra
        assert spec["num_tokens"] == len(spec["token_ids"])
        if "pld" not in extra:
            assert spec["tau"] > 1.5, (extra, spec["tau"])                   # drafts were accepted
    assert generate_json(setup, capsys, "--draft", str(setup["dream"]))["method"] == "dream"


def test_generate_streams_the_same_text(setup, capsys):
    expected = generate_json(setup, capsys, "--draft", str(setup["dream"]))
    rc = main(["generate", "--target", str(setup["target"]), "--image", str(setup["image"]),
               "--prompt", "Describe this image.", "--draft", str(setup["dream"]), *FAST])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out == expected["text"] + "\n"
    assert "[dream: " in captured.err and "target forwards]" in captured.err


def test_generate_samples_reproducibly(setup, capsys):
    extra = ["--method", "ar", "--temperature", "1.0", "--top-k", "20", "--top-p", "0.9", "--seed", "3"]
    first, second = generate_json(setup, capsys, *extra), generate_json(setup, capsys, *extra)
    assert first["token_ids"] == second["token_ids"]
    assert first["config"]["sampling"] == {"temperature": 1.0, "top_p": 0.9, "top_k": 20}


def run_error(setup, tmp_path, capsys, image: Path, *extra: str) -> str:
    rc = main(["generate", "--target", str(setup["target"]), "--image", str(image), "--prompt", "hi", *FAST, *extra])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("dream generate: error: "), lines
    return lines[0]


def test_generate_missing_or_non_image_file(setup, tmp_path, capsys):
    assert str(tmp_path / "gone.png") in run_error(setup, tmp_path, capsys, tmp_path / "gone.png")
    (tmp_path / "text.jpg").write_text("hello")
    assert f"{tmp_path / 'text.jpg'} is not a readable image" in run_error(setup, tmp_path, capsys,
                                                                            tmp_path / "text.jpg")
    # 15000 x 15000: PIL itself would refuse it with a DecompressionBombError traceback.
    Image.new("1", (15_000, 15_000)).save(tmp_path / "huge.png")
    assert "is too large to decode safely" in run_error(setup, tmp_path, capsys, tmp_path / "huge.png")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "large.png")
    assert "over the 89,478,485-pixel limit" in run_error(setup, tmp_path, capsys, tmp_path / "large.png")


@pytest.mark.parametrize("extra, message", [
    (["--method", "dream"], "--method dream needs --draft DIR"),
    (["--method", "ar", "--draft", "DREAM"], "--draft is not used by --method ar"),
    (["--method", "eagle2", "--draft", "DREAM"], "is a dream draft, not eagle2"),
    (["--draft", "NOWHERE"], "not a draft checkpoint"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
])
def test_generate_contradictory_choices(setup, tmp_path, capsys, extra, message):
    extra = [str(setup["dream"]) if x == "DREAM" else str(tmp_path / "x") if x == "NOWHERE" else x for x in extra]
    assert message in run_error(setup, tmp_path, capsys, setup["image"], *extra)


def test_choose_method_defaults_to_the_shipped_dream_draft(tmp_path, monkeypatch):
    monkeypatch.setattr(generate_command, "SHIPPED_DRAFTS", tmp_path)
    assert generate_command.choose_method(None, None, "smolvlm-135m") == ("ar", None)
    (tmp_path / "dream").mkdir()
    (tmp_path / "dream" / "config.json").write_text("{}")
    assert generate_command.choose_method(None, None, "smolvlm-135m") == ("dream", tmp_path / "dream")
    assert generate_command.choose_method(None, None, str(tmp_path)) == ("ar", None)
    with pytest.raises(ValueError, match="no shipped eagle2 draft"):
        generate_command.choose_method("eagle2", None, "smolvlm-135m")
    with pytest.raises(ValueError, match="--method eagle3 needs --draft DIR .no shipped eagle3 draft"):
        generate_command.choose_method("eagle3", None, "smolvlm-135m")
    (tmp_path / "eagle3").mkdir()
    (tmp_path / "eagle3" / "config.json").write_text("{}")
    assert generate_command.choose_method("eagle3", None, "smolvlm-135m") == ("eagle3", tmp_path / "eagle3")


def test_dtype_auto_follows_native_bf16(monkeypatch):
    import dream.settings as settings

    monkeypatch.setattr(settings.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(settings, "_cpu_flags", lambda: {"avx2", "fma"})
    assert settings.resolve_dtype_name("auto") == "fp32"                       # bf16 would be emulated
    monkeypatch.setattr(settings, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(settings.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert settings.resolve_dtype_name("auto") == "bf16"
    monkeypatch.setattr(settings.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY
    assert settings.resolve_dtype_name("auto") == "fp32" and "torch held to AVX2" in settings.cpu_kind()
    assert settings.resolve_dtype_name("fp32") == "fp32"
    with pytest.raises(ValueError, match="auto or one of bf16, fp32"):
        settings.resolve_dtype_name("float16")
