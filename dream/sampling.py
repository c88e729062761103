"""Target sampling distributions, computed by HF generate's own warpers, and the draw from them.

`target_probs` applies transformers' TemperatureLogitsWarper (if temperature != 1), TopKLogitsWarper (if
top_k != 0) and TopPLogitsWarper (if top_p < 1), in generate's order, then a softmax: the distribution is
generate()'s by construction, ties included.

`draw_rows` draws one index per row of unnormalised weights by inverting the CDF, one uniform per draw: on
this CPU torch.multinomial over a 49k vocabulary takes ~1 ms (and tens of ms with busy cores), the
exponential race vLLM uses (one Exp(1) per entry) 1.3 ms, the inversion ~100 us. `sample` is one draw with an
explicit generator; dream.serving.cpu_draws gives vLLM's speculative draws on CPU the same inversion.

`check_generation_config` refuses a checkpoint whose generation_config would make generate() apply a
logits processor this engine does not (repetition penalty, suppressed tokens, ...): the output would
differ from generate()'s without the user being told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0   # 0 = greedy (argmax); > 0 = sample from the warped distribution
    top_p: float = 1.0         # nucleus mass kept, in (0, 1]; 1 = off
    top_k: int = 0             # most likely tokens kept; 0 = off

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"SamplingConfig.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be an integer >= 0, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """logits [..., V] -> the target's sampling distribution [..., V] (float32)."""
    if cfg.greedy:
        raise ValueError("target_probs needs temperature > 0; greedy decoding uses the argmax")
    scores = logits.float().reshape(-1, logits.shape[-1])                        # the warpers take [B, V]
    scores = _warpers(cfg)(_NO_INPUT_IDS, scores)
    return torch.softmax(scores, -1).reshape(logits.shape)


_NO_INPUT_IDS = torch.zeros(1, 0, dtype=torch.long)   # these warpers never read the input ids


@cache
def _warpers(cfg: SamplingConfig) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if cfg.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k != 0:
        warpers.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1.0:
        warpers.append(TopPLogitsWarper(cfg.top_p))
    return warpers


# generation_config fields that make generate() change the logits beyond temperature / top-k / top-p, and
# the values that leave them off.
_NEUTRAL_GENERATION_SETTINGS: dict[str, tuple] = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None, []), "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []), "sequence_bias": (None, {}), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
    "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "typical_p": (None, 1.0), "min_p": (None,),
    "renormalize_logits": (None, False), "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
}


def check_generation_config(config: GenerationConfig | None) -> None:
    """ValueError naming each setting of the checkpoint's generation_config that this engine does not apply."""
    if config is None:
        return
    found = [f"{name}={getattr(config, name)!r}" for name, neutral in _NEUTRAL_GENERATION_SETTINGS.items()
             if getattr(config, name, None) not in neutral]
    if found:
        raise ValueError(f"the target's generation_config sets {', '.join(found)}, which dream does not apply, so "
                         f"its output would differ from generate()'s: reset them on model.generation_config "
                         f"(or in generation_config.json) to decode without them")


def draw_rows(weights: Tensor, uniforms: Tensor) -> Tensor:
    """One index per row of `weights` [n, V] (non-negative, each row with a positive sum): v with probability
    weights[i, v] / weights[i].sum(), by inverse CDF from `uniforms` [n] in [0, 1).

    v owns [C_{v-1}, C_v) of the cumulative sums C, so a zero weight is never drawn; the sums are float64,
    so over 49k entries every interval's width stays within ~1e-16 of its weight. No draw falls past the end:
    a float64 u is at most 1 - 2^-53, and u * total, rounded to nearest, stays below the total."""
    cdf = weights.to(torch.float64).cumsum(-1)
    thresholds = uniforms.to(torch.float64).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, thresholds, right=True).squeeze(-1)


def sample(weights: Tensor, generator: torch.Generator | None) -> int:
    """One draw from unnormalised weights [V] >= 0 (at least one positive)."""
    u = torch.rand(1, generator=generator)                                   # CPU generator
    return int(draw_rows(weights.unsqueeze(0), u.to(weights.device))[0])
