"""First mismatch and its fp32 logit margin: the margin is the stock fp32 model's logit difference between the
two tokens after prompt + common prefix, on text and image families (token type ids, M-RoPE)."""

from __future__ import annotations

import pytest
import torch
from fixtures import VLM_FAMILIES, reference_logits, stock_model, tiny_image

from dream.engine import generate
from dream.target import TargetAdapter, TargetInputs
from dream.target.margins import first_mismatch, mismatch_margin


def test_first_mismatch():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 2], [1, 2, 3]) is None            # a prefix: the same path, cut shorter
    assert first_mismatch([1, 5, 3], [1, 2, 3]) == 1
    assert first_mismatch([], [4]) is None


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2_5_vl"])
def test_margin_is_the_fp32_logit_difference(tiny_target, tiny_target_path, family):
    fp32 = tiny_target(family)
    bf16 = TargetAdapter.from_pretrained(tiny_target_path(family), dtype=torch.bfloat16)
    images = [tiny_image(0, (48, 32))] if family in VLM_FAMILIES else []
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "Describe it."}]
    inputs = bf16.build_inputs([{"role": "user", "content": content}], images)   # bf16 pixel values
    reference = generate(fp32, inputs, max_new_tokens=8).token_ids
    assert len(reference) == 8
    other = (reference[4] + 1) % fp32.vocab_size
    tokens = reference[:4] + [other] + reference[5:]

    found = mismatch_margin(fp32, inputs, tokens, reference)

    # The same (bf16-rounded) pixels, in fp32: what mismatch_margin feeds the fp32 target.
    kwargs = {k: v.float() if torch.is_floating_point(v) else v for k, v in inputs.model_kwargs.items()}
    fp32_inputs = TargetInputs(inputs.input_ids, inputs.visual_mask, kwargs)
    logits = reference_logits(stock_model(tiny_target_path(family)), fp32_inputs, torch.tensor(reference[:5]))[-2]
    assert (found.position, found.token, found.reference_token) == (4, other, reference[4])
    assert found.fp32_token == reference[4] and found.margin > 0
    assert found.margin == pytest.approx(float(logits[reference[4]] - logits[other]), abs=1e-5)
    assert mismatch_margin(fp32, inputs, reference, reference) is None
