"""The vLLM plugin on the offline smolvlm-135m target, fp32, with images (skipped without vLLM, failed under
CI=true).

One engine per method, run in this process (enforce_eager: no compile), on two held-out prompts:
- the draft class inside vLLM computes what the harness's draft computes on the same inputs, and those
  inputs are the right streams: the target's image embeddings at visual positions, the target's features
  for verified positions, the draft's own features for its speculative steps;
- greedy outputs with dream, eagle2, eagle3 and ngram equal vLLM's output without speculation, which
  equals the harness's plain decoding (`dream generate --method ar --dtype fp32`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from optional import require
from vllm_hooks import check_draft_rows, check_speculative_steps, record_draft_calls

require("vllm")

from safetensors.torch import load_file  # noqa: E402

from dream.bench.prompts import HELDOUT_PROMPTS, read_prompts  # noqa: E402
from dream.bench.prompts import user_messages  # noqa: E402
from dream.draft import DraftConfig, build_draft, read_draft_config  # noqa: E402
from dream.engine import generate  # noqa: E402
from dream.method_names import DRAFT_NAMES  # noqa: E402
from dream.methods import SHIPPED_DRAFTS  # noqa: E402
from dream.serving.engine import EngineConfig, build_llm, chat_messages, close_llm, spec_counters  # noqa: E402
from dream.target import TargetAdapter  # noqa: E402
from dream.zoo.build import resolve_target  # noqa: E402

PROMPT_LINES = (1, 25)           # an easy-vqa description, a natural photo
MAX_TOKENS = 32


@dataclass
class Run:
    token_ids: list[list[int]]          # per prompt, EOS included when it ended the answer
    prompt_ids: list[list[int]]
    tau: float
    records: list[dict[str, torch.Tensor]]   # every draft forward of the first prompt (drafts only)


@pytest.fixture(scope="module")
def prompts():
    records = read_prompts(HELDOUT_PROMPTS)
    return [records[line - 1] for line in PROMPT_LINES]


@pytest.fixture(scope="module")
def target_dir():
    return resolve_target("smolvlm-135m")


def _run(target_dir, prompts, method: str) -> Run:
    from vllm import SamplingParams

    cfg = EngineConfig(target=str(target_dir), dtype="float32", enforce_eager=True, in_process=True,
                       max_model_len=512, max_num_seqs=2, num_speculative_tokens=3)
    draft = SHIPPED_DRAFTS / method if method in DRAFT_NAMES else None
    llm = build_llm(cfg, method, draft)
    try:
        records = record_draft_calls(llm) if draft is not None else []
        answers, first_records = [], []
        for record in prompts:
            answers.append(llm.chat(chat_messages(record.prompt, record.image),
                                    SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)[0])
            first_records = first_records or list(records)      # the first prompt's draft calls only
        return Run([list(a.outputs[0].token_ids) for a in answers], [list(a.prompt_token_ids) for a in answers],
                   spec_counters(llm).tau, first_records)
    finally:
        close_llm(llm)


@pytest.fixture(scope="module")
def runs(target_dir, prompts):
    """method -> Run, each engine started on first use (one at a time: they share the memory reservation)."""
    done: dict[str, Run] = {}

    def get(method: str) -> Run:
        if method not in done:
            done[method] = _run(target_dir, prompts, method)
        return done[method]

    return get


@pytest.fixture(scope="module")
def target(target_dir):
    return TargetAdapter.from_pretrained(str(target_dir), dtype=torch.float32)


def test_speculative_greedy_outputs_equal_plain_vllm(runs):
    base = runs("base").token_ids
    assert all(len(ids) > 0 for ids in base)
    for method in ("dream", "eagle2", "eagle3", "ngram"):
        assert runs(method).token_ids == base, method


def test_plain_vllm_equals_the_harness_plain_decoding(runs, target, prompts):
    for record, prompt_ids, ids in zip(prompts, runs("base").prompt_ids, runs("base").token_ids):
        inputs = target.build_inputs(user_messages(record.prompt, with_image=True), [record.image])
        assert inputs.input_ids[0].tolist() == prompt_ids          # same chat template, same image tokens
        assert generate(target, inputs, max_new_tokens=MAX_TOKENS).token_ids == ids


def test_drafts_are_accepted(runs):
    # The shipped drafts should mostly be right on their own target (harness, unseen kinds, 12-node tree:
    # dream 3.7, eagle3 3.5, eagle2 3.0).
    assert runs("dream").tau > 3.0
    assert runs("eagle3").tau > 2.0
    assert runs("eagle2").tau > 2.0


def _harness_draft(name: str):
    config = read_draft_config(SHIPPED_DRAFTS / name)
    draft = build_draft(DraftConfig.from_dict(config["draft"]))
    draft.load_state_dict(load_file(str(SHIPPED_DRAFTS / name / "model.safetensors")))
    return draft.float().eval()


@pytest.mark.parametrize("name", ["dream", "eagle2"])
def test_vllm_draft_forward_equals_the_harness_draft(runs, target, prompts, name):
    records = runs(name).records
    prefill, steps = records[0], records[1:3]
    # vLLM row p carries position p + 1's token and position p's feature (the EAGLE shift).
    positions = prefill["positions"] + 1
    record = prompts[0]
    inputs = target.build_inputs(user_messages(record.prompt, with_image=True), [record.image])
    with torch.no_grad():
        reference = target.prefill(inputs, target.new_cache())
    n = inputs.input_ids.shape[1]
    assert prefill["inputs_embeds"].shape[0] == n
    # The input stream: the target's merged input embeddings, image embeddings at visual positions.
    visual = inputs.visual_mask[0, 1:]
    assert visual.sum() > 0
    torch.testing.assert_close(prefill["inputs_embeds"][:-1], reference.input_embeds[0, 1:], atol=1e-4, rtol=0)
    # The memory stream of verified positions: the target's post-norm final features.
    torch.testing.assert_close(prefill["hidden_states"], reference.features[0], atol=2e-3, rtol=1e-4)

    draft = _harness_draft(name)
    check_draft_rows(draft, prefill, positions)
    check_speculative_steps(draft, prefill, steps, positions)
