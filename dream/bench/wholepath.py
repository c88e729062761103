"""Section (3) of the exactness diagnosis: the whole path against the stock model.

Prefill logits (plain, all rows through the head, with visual-score statistics) against the stock model's, and
the greedy tokens of `ar` and prompt lookup on both verify modes against its generate(). It runs the engine,
so it sits above it; sections (1) and (2), the row-wise operations and the attention calls, are
`dream.target.diagnose`. `scripts/diagnose_exactness.py` prints all three (docs/exactness.md).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from dream.engine import generate
from dream.pld import PromptLookupProposer
from dream.target import VERIFY_MODES, TargetAdapter, TargetInputs
from dream.target.diagnose import Finding, diagnose, max_diff, worst_finding


def diagnose_with_model(target: TargetAdapter, inputs: TargetInputs, stock: PreTrainedModel | None = None,
                        max_new_tokens: int = 32) -> list[Finding]:
    """All three sections; the whole path only with the stock model at hand."""
    findings = diagnose(target, inputs)
    if stock is not None:
        findings += model_findings(target, stock, inputs, max_new_tokens)
    return findings


@torch.no_grad()
def model_findings(target: TargetAdapter, stock: PreTrainedModel, inputs: TargetInputs,
                   max_new_tokens: int) -> list[Finding]:
    ids, kwargs = inputs.input_ids, inputs.model_kwargs
    stock_logits = stock(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1, **kwargs).logits
    findings = []
    for name, options in {"prefill": {}, "prefill, all rows through the head": {"all_logits": True},
                          "prefill with visual-score statistics": {"visual_scores": True}}.items():
        logits = target.prefill(inputs, target.new_cache(), **options).logits[0, -1]
        worst = [(max_diff(logits, stock_logits[0, -1]), 0)]
        findings.append(worst_finding("model", f"{name} vs generate()'s", worst, "last logits"))
    reference = stock.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs, do_sample=False,
                               max_new_tokens=max_new_tokens)[0, ids.shape[1]:].tolist()
    saved = target.verify_mode
    try:
        for mode in VERIFY_MODES:
            target.verify_mode = mode
            for method in ("ar", "pld"):
                proposer = PromptLookupProposer(image_token_id=target.image_token_id) if method == "pld" else None
                tokens = generate(target, inputs, proposer=proposer, max_new_tokens=max_new_tokens).token_ids
                findings.append(_token_finding(f"{method} tokens, {mode} path", tokens, reference))
    finally:
        target.verify_mode = saved
    return findings


def _token_finding(name: str, tokens: list[int], reference: list[int]) -> Finding:
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    if first is None and len(tokens) != len(reference):
        first = min(len(tokens), len(reference))
    detail = f"equal to generate() over {len(reference)} tokens" if first is None else f"first mismatch at {first}"
    return Finding("model", name, first is not None, detail)
