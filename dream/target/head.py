"""The target's final-logit soft-capping, the one place it is written (target, harness drafts, vLLM drafts)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def final_softcap(config: Any) -> float | None:
    """The cap a stock class applies to its logits, read off the config that class reads it from.

    Pass the top-level config of a transformers model: stock Gemma3ForCausalLM soft-caps its logits,
    Gemma3ForConditionalGeneration (whose text config also carries the field) does not. vLLM's language models
    read it off their text config, so pass that one there.
    """
    return getattr(config, "final_logit_softcapping", None)


def soft_cap(logits: Tensor, cap: float | None) -> Tensor:
    """Gemma-style final-logit soft-capping, cap * tanh(logits / cap); no-op without a cap."""
    return logits if cap is None else torch.tanh(logits / cap) * cap
