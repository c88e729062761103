"""Where a method's greedy tokens part from the reference (generate()'s), and how close a call that was.

The exact verify path makes greedy output equal generate()'s token for token on the kernels it was checked on.
Another machine or kernel may still round one op differently; when that flips a token, the fp32 logit
margin between the two tokens at the first mismatch tells a reader whether it was a near tie (a margin of a
few 1e-3 against bf16's ~1e-2 resolution) or a real difference (a margin of whole logits means a bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .adapter import TargetAdapter
from .inputs import TargetInputs


@dataclass(frozen=True)
class Mismatch:
    position: int  # index into the generated tokens of the first difference
    token: int  # the method's token there
    reference_token: int  # the reference's token there
    margin: float  # fp32 logit of reference_token minus that of token, after prompt + the common prefix
    fp32_token: int  # the fp32 target's own argmax there


def first_mismatch(tokens: Sequence[int], reference: Sequence[int]) -> int | None:
    """Index of the first position where both lists have a token and the tokens differ; None otherwise
    (equal, or one a prefix of the other: the same greedy path cut at another length)."""
    return next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)


@torch.no_grad()
def mismatch_margin(fp32_target: TargetAdapter, inputs: TargetInputs, tokens: Sequence[int],
                    reference: Sequence[int]) -> Mismatch | None:
    """The first mismatch between `tokens` and `reference` (generated after `inputs`), with its fp32 margin.

    `fp32_target` is the same checkpoint loaded in fp32 (e.g. `load_target(path, "fp32")`); `inputs` may come
    from the bf16 adapter (its pixel values are cast). One prefill over prompt + the common prefix."""
    position = first_mismatch(tokens, reference)
    if position is None:
        return None
    extended = extend_inputs(inputs, torch.tensor(list(reference[:position]), dtype=torch.long), fp32_target)
    logits = fp32_target.prefill(extended, fp32_target.new_cache()).logits[0, -1].float()  # [V]
    token, reference_token = int(tokens[position]), int(reference[position])
    margin = float(logits[reference_token] - logits[token])
    return Mismatch(position, token, reference_token, margin, int(logits.argmax()))


def extend_inputs(inputs: TargetInputs, tokens: Tensor, target: TargetAdapter) -> TargetInputs:
    """The prompt followed by `tokens` [n] as one prefill input for `target` (its dtype for pixel values;
    per-token type ids padded with 0, as text after the image)."""
    dtype = target.model.dtype
    ids = torch.cat([inputs.input_ids, tokens[None].to(inputs.input_ids)], dim=1)
    visual = torch.cat([inputs.visual_mask, torch.zeros(1, tokens.numel(), dtype=torch.bool)], dim=1)
    kwargs = {}
    for key, value in inputs.model_kwargs.items():
        if key in ("token_type_ids", "mm_token_type_ids"):
            value = torch.nn.functional.pad(value, (0, tokens.numel()))
        elif isinstance(value, Tensor) and torch.is_floating_point(value):
            value = value.to(dtype)
        kwargs[key] = value
    return TargetInputs(ids, visual, kwargs)
