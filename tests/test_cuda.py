"""On a CUDA machine: the target, the drafts and the engine run on the GPU, and speculative output there
equals plain decoding there. Skipped where torch sees no CUDA device (CI, this project's CPU machines)."""

from __future__ import annotations

import pytest
import torch
from drafts import overfit_draft
from fixtures import tiny_image

from dream.draft import DraftProposer, load_draft, save_draft
from dream.engine import generate
from dream.pld import PromptLookupProposer
from dream.sampling import SamplingConfig
from dream.target import load_target
from dream.tree import TreeConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("family,architecture", [("llava", "dream"), ("qwen2_5_vl", "dream"), ("gemma3", "dream"),
                                                 ("gemma3", "eagle3")])
def test_speculative_equals_plain_on_cuda(tiny_target_path, tmp_path, family, architecture):
    target = load_target(tiny_target_path(family), "fp32", "cuda")
    assert target.model.device.type == "cuda"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    inputs = target.build_inputs(messages, [tiny_image()])
    plain = generate(target, inputs, max_new_tokens=16)
    cpu_target = load_target(tiny_target_path(family), "fp32", "cpu")
    draft = overfit_draft(cpu_target, inputs, plain.token_ids, architecture)
    save_draft(tmp_path / "draft", draft, cpu_target.fingerprint(), dtype=torch.float32)
    loaded = load_draft(tmp_path / "draft", target).draft
    assert next(loaded.parameters()).device.type == "cuda"
    proposers = [PromptLookupProposer(num_tokens=3, image_token_id=target.image_token_id),
                 DraftProposer(loaded, target, TreeConfig(top_k=3, depth=3, total_tokens=8))]
    for proposer in proposers:
        assert generate(target, inputs, proposer=proposer, max_new_tokens=16).token_ids == plain.token_ids

    def sampled() -> list[int]:                     # the sampling path (residuals, draws) runs on the GPU too
        chain = DraftProposer(loaded, target, TreeConfig(depth=3, chain=True), temperature=1.0,
                              generator=torch.Generator().manual_seed(0))
        return generate(target, inputs, proposer=chain, sampling=SamplingConfig(temperature=1.0),
                        max_new_tokens=16, seed=0).token_ids

    assert sampled() == sampled()
