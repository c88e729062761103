"""Input building (chat template, placeholder expansion, visual mask), user errors, and the small
accessors: embed, head, fingerprint, loading from a model object."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as tf

from dream.target import TargetAdapter
from fixtures import FAMILIES, MAX_POSITIONS, VLM_FAMILIES, stock_model, tiny_image

# Visual tokens per 48x32 image in the fixtures (depends on each family's patching and merging).
VISUAL_TOKENS = {"llava": 16, "llava_next": 44, "pixtral": 12, "idefics3": 20, "smolvlm": 20, "gemma3": 4,
                 "qwen2_vl": 6, "qwen2_5_vl": 6}


def messages(n_images: int, text: str = "Compare these.") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_two_images_expand_and_prefill_like_the_stock_model(tiny_target, tiny_target_path, family):
    adapter = tiny_target(family)
    images = [tiny_image(0, (48, 32)), tiny_image(1, (32, 32))]
    inputs = adapter.build_inputs(messages(2), images)

    assert inputs.visual_mask.shape == inputs.input_ids.shape and inputs.visual_mask.dtype == torch.bool
    assert int((inputs.input_ids == adapter.image_token_id).sum()) == int(inputs.visual_mask.sum())
    singles = [int(adapter.build_inputs(messages(1), [image]).visual_mask.sum()) for image in images]
    assert int(inputs.visual_mask.sum()) == sum(singles)
    out = adapter.prefill(inputs, adapter.new_cache(), all_logits=True)
    with torch.no_grad():
        ref = stock_model(tiny_target_path(family))(input_ids=inputs.input_ids, **inputs.model_kwargs).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_visual_token_count_per_image(tiny_target, family):
    inputs = tiny_target(family).build_inputs(messages(1), [tiny_image(0, (48, 32))])
    assert int(inputs.visual_mask.sum()) == VISUAL_TOKENS[family]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "smolvlm", "pixtral"])
def test_string_prompt_is_used_verbatim(tiny_target, family):
    adapter = tiny_target(family)
    chat = adapter.build_inputs(messages(1, "hi"), [tiny_image(0)])
    text = adapter.tokenizer.apply_chat_template(messages(1, "hi"), add_generation_prompt=True, tokenize=False)
    raw = adapter.build_inputs(text, [tiny_image(0)])
    # The fixture tokenizers add no special tokens of their own, so both routes give the same ids.
    assert torch.equal(raw.input_ids, chat.input_ids)
    assert torch.equal(raw.visual_mask, chat.visual_mask)


def test_text_model_chat_and_string(tiny_target):
    adapter = tiny_target("llama")
    inputs = adapter.build_inputs([{"role": "user", "content": "hello"}])
    assert adapter.tokenizer.decode(inputs.input_ids[0]) == "<|user|>hello<|end|><|assistant|>"
    assert not inputs.visual_mask.any() and inputs.model_kwargs == {}
    assert adapter.image_token_id is None


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_vl", "smolvlm", "pixtral"])
def test_image_count_errors(tiny_target, family):
    adapter = tiny_target(family)
    with pytest.raises(ValueError, match="no image was given"):
        adapter.build_inputs(messages(1))
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\) .* but 2 image\(s\)"):
        adapter.build_inputs(messages(1), [tiny_image(0), tiny_image(1)])
    with pytest.raises(ValueError, match=r"2 image placeholder\(s\) .* but 1 image\(s\)"):
        adapter.build_inputs(messages(2), [tiny_image(0)])
    with pytest.raises(ValueError, match=r"0 image placeholder\(s\) .* but 1 image\(s\)"):
        adapter.build_inputs("no placeholder here", [tiny_image(0)])


def test_text_model_rejects_images(tiny_target):
    with pytest.raises(ValueError, match="text-only model"):
        tiny_target("llama").build_inputs("hi", [tiny_image(0)])


@pytest.mark.parametrize("family", ["llama", "llava"])
def test_prompt_longer_than_context(tiny_target, family):
    with pytest.raises(ValueError, match=f"longer than the model's context of {MAX_POSITIONS}"):
        tiny_target(family).build_inputs("x" * (MAX_POSITIONS + 1))


def test_verify_past_the_context(tiny_target):
    adapter = tiny_target("llama")
    cache = adapter.new_cache()
    adapter.prefill(adapter.build_inputs("x" * (MAX_POSITIONS - 2)), cache)
    chain = torch.ones(3, 3, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match=f"reaches position {MAX_POSITIONS}, past the model's context"):
        adapter.verify(torch.tensor([40, 41, 42]), chain, torch.arange(3), cache)


def test_unsupported_architecture():
    config = tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        TargetAdapter.from_pretrained(tf.GPT2LMHeadModel(config))


def test_prefill_needs_an_empty_cache_and_valid_layers(tiny_target):
    adapter = tiny_target("llama")
    inputs = adapter.build_inputs("hi")
    cache = adapter.new_cache()
    with pytest.raises(ValueError, match="out of range"):
        adapter.prefill(inputs, cache, layers=[adapter.num_layers])
    adapter.prefill(inputs, cache)
    with pytest.raises(ValueError, match="empty cache"):
        adapter.prefill(inputs, cache)


@pytest.mark.parametrize("family", ["gemma3", "gemma3_text", "llava"])
def test_embed_and_head_are_the_targets_own(tiny_target, family):
    adapter = tiny_target(family)
    ids = torch.tensor([[20, 30, 40]])
    embeds = adapter.embed(ids)
    assert embeds.shape == (1, 3, adapter.hidden_size)
    table = adapter.model.get_input_embeddings().weight[ids]
    scale = adapter.hidden_size**0.5 if family.startswith("gemma3") else 1.0  # Gemma scales by sqrt(H)
    torch.testing.assert_close(embeds, table * scale)
    features = torch.randn(2, adapter.hidden_size)
    torch.testing.assert_close(adapter.head(features), features @ adapter.model.get_output_embeddings().weight.T)


def test_head_applies_final_logit_softcapping(tiny_target_path):
    model = tf.Gemma3ForCausalLM.from_pretrained(tiny_target_path("gemma3_text"), final_logit_softcapping=0.5)
    adapter = TargetAdapter.from_pretrained(model)
    inputs = adapter.build_inputs("softcap check")
    out = adapter.prefill(inputs, adapter.new_cache(), all_logits=True)
    assert out.logits.abs().max() <= 0.5
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(input_ids=inputs.input_ids).logits, atol=1e-5, rtol=0)


def test_fingerprint_is_stable_across_dtypes(tiny_target, tiny_target_path):
    adapter = tiny_target("llava")
    fp = adapter.fingerprint()
    assert fp["model_type"] == "llava" and fp["family"] == "llava"
    assert (fp["vocab_size"], fp["hidden_size"], fp["num_layers"]) == (
        adapter.vocab_size, adapter.hidden_size, adapter.num_layers)
    assert len(fp["lm_head_sha256"]) == 16
    bf16 = TargetAdapter.from_pretrained(tiny_target_path("llava"), dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16 and bf16.fingerprint() == fp
    assert tiny_target("llava_next").fingerprint()["lm_head_sha256"] != fp["lm_head_sha256"]


def test_chat_template_found_beside_the_processor(tiny_target_path, tmp_path):
    checkpoint = shutil.copytree(tiny_target_path("smolvlm"), tmp_path / "smolvlm")
    template = (checkpoint / "chat_template.jinja").read_text()
    (checkpoint / "chat_template.jinja").unlink()
    (checkpoint / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    assert tf.AutoTokenizer.from_pretrained(checkpoint).chat_template is None
    adapter = TargetAdapter.from_pretrained(checkpoint)
    assert adapter.tokenizer.chat_template == template
    inputs = adapter.build_inputs(messages(1), [tiny_image(0, (48, 32))])
    assert int(inputs.visual_mask.sum()) == VISUAL_TOKENS["smolvlm"]


def test_from_model_object_and_metadata(tiny_target_path):
    path = tiny_target_path("pixtral")
    adapter = TargetAdapter.from_pretrained(stock_model(path))
    assert adapter.family == "pixtral" and adapter.max_context == MAX_POSITIONS
    eos = {adapter.tokenizer.convert_tokens_to_ids(t) for t in ("</s>", "<|end|>")}
    assert adapter.eos_token_ids == eos
    inputs = adapter.build_inputs(messages(1), [tiny_image(0, (48, 32))])
    assert int(inputs.visual_mask.sum()) == VISUAL_TOKENS["pixtral"]


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_switched_on_the_text_model_only(tiny_target, family):
    model = tiny_target(family).model
    assert model.config.get_text_config()._attn_implementation == "dream"
    vision = getattr(model.config, "vision_config", None)
    if vision is not None:
        assert vision._attn_implementation != "dream"
