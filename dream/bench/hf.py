"""The `hf` method: plain transformers `generate()` of the very model the engine drives.

Same loaded model (the TargetAdapter's `.model`), same TargetInputs (input_ids plus the model kwargs:
pixel values and the like), same token budget, the adapter's EOS ids, and the bench's sampling settings
(greedy at T=0; otherwise do_sample with the same temperature / top-k / top-p, seeded through torch's
global generator). The checkpoint's own generation config is swapped out for the call, so nothing
(a repetition penalty, a default top-k of 50) is applied that the engine does not apply.

Timing: total_s spans the generate() call; prefill_s ends when the first logits reach the logits
processors (a no-op processor notes the time), and the rest of the call is counted as verify_s, the
decode forwards, as for `ar`. tau is 1 by definition: one token per forward.
"""

from __future__ import annotations

from time import perf_counter

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from dream.metrics import GenerationMetrics
from dream.sampling import SamplingConfig
from dream.target import TargetAdapter, TargetInputs


class _FirstLogits(LogitsProcessor):
    """Notes when generate() first has logits (the prefill is done); changes nothing."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.at is None:
            self.at = perf_counter()
        return scores


def generation_config(target: TargetAdapter, sampling: SamplingConfig, max_new_tokens: int) -> GenerationConfig:
    """The generate() settings that decode as the engine does."""
    eos = sorted(target.eos_token_ids)
    pad = target.tokenizer.pad_token_id
    common = {"max_new_tokens": max_new_tokens, "eos_token_id": eos, "num_beams": 1,
              "pad_token_id": eos[0] if pad is None else pad}
    if sampling.greedy:
        return GenerationConfig(do_sample=False, **common)
    # top_k 0 and top_p 1 switch those warpers off in generate() exactly as in dream.sampling.
    return GenerationConfig(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k,
                            top_p=sampling.top_p, **common)


@torch.no_grad()
def hf_generate(target: TargetAdapter, inputs: TargetInputs, sampling: SamplingConfig, max_new_tokens: int,
                seed: int) -> tuple[list[int], GenerationMetrics]:
    """(generated token ids, EOS included when it ended the generation; metrics)."""
    model = target.model
    device = model.device
    input_ids = inputs.input_ids.to(device)
    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.model_kwargs.items()}
    config = generation_config(target, sampling, max_new_tokens)
    clock = _FirstLogits()
    saved = model.generation_config
    # generate() fills every unset field from the model's own generation config: an empty one keeps it plain.
    model.generation_config = GenerationConfig()
    torch.manual_seed(seed)
    try:
        start = perf_counter()
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=config, logits_processor=LogitsProcessorList([clock]), **kwargs)
        total = perf_counter() - start
    finally:
        model.generation_config = saved
    tokens = output[0, input_ids.shape[1]:].tolist()
    stop = next((i for i, token in enumerate(tokens) if token in target.eos_token_ids), len(tokens) - 1)
    tokens = tokens[: stop + 1]
    prefill = (clock.at or start + total) - start
    metrics = GenerationMetrics(num_tokens=len(tokens), prefill_forwards=1, target_forwards=len(tokens) - 1,
                                committed=len(tokens) - 1, prefill_s=prefill, verify_s=total - prefill,
                                total_s=total)
    return tokens, metrics
