"""Draft-model configuration: one strict dataclass for every architecture (DREAM, the EAGLE-2 and EAGLE-3 baselines).

Sizes default to the target's own (a draft block is a target block's width, as in the paper); the hidden size
must equal the target's because the draft reads the target's input embeddings and features and writes into
the target's LM head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ARCHITECTURES = ("dream", "eagle2", "eagle3")
BLOCK_KINDS = ("self", "cross")
SINGLE_BLOCK = ("eagle2", "eagle3")      # the EAGLE baselines: one self-attention block


def aux_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low, middle and high target layers for an L-layer target (vLLM's choice: 2, L // 2, L - 3).

    "Layer i" is the residual stream ENTERING decoder layer i (HF's hidden_states[i]; the output of layer
    i - 1), the state vLLM collects as auxiliary. Clamped to 1..L-1 so that tiny test targets have three
    valid (possibly equal) layers. The datagen shards store these (dream.training.shards).
    """
    top = max(num_layers - 1, 1)
    return tuple(min(max(layer, 1), top) for layer in (2, num_layers // 2, num_layers - 3))  # type: ignore[return-value]


@dataclass(frozen=True)
class DraftConfig:
    architecture: str                       # "dream" | "eagle2" | "eagle3"
    hidden_size: int                        # = the target's hidden size (shared embeddings, features, head)
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int                         # the target's vocabulary size
    blocks: tuple[str, ...] = ("self", "cross", "self")   # dream: "self" / "cross" in order; eagle2/3: ("self",)
    draft_vocab_size: int | None = None     # rows of the target head the draft scores; None = full vocabulary
    keep_ratio: float = 0.75                # fraction of visual tokens in the draft's input stream (1.0 = off)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768    # only sizes rotary caches; positions beyond it still work
    hidden_act: str = "silu"
    attn_implementation: str = "sdpa"       # "sdpa" | "eager" for the self-attention blocks
    aux_layers: tuple[int, ...] = ()        # eagle3: the 3 target layers whose ENTERING residual it fuses
                                            #   (see aux_layers()); () for the other architectures

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "aux_layers", tuple(self.aux_layers))
        if not self.blocks or any(b not in BLOCK_KINDS for b in self.blocks):
            raise ValueError(f"blocks must be a non-empty sequence of {BLOCK_KINDS}, got {self.blocks}")
        if self.architecture in SINGLE_BLOCK and self.blocks != ("self",):
            raise ValueError(f"the {self.architecture} baseline has exactly one self-attention block: blocks=('self',)")
        if self.architecture == "eagle3":
            if len(self.aux_layers) != 3 or min(self.aux_layers) < 1:
                raise ValueError(f"eagle3 fuses 3 target layers, each >= 1: aux_layers={self.aux_layers}")
        elif self.aux_layers:
            raise ValueError(f"aux_layers is for eagle3 only, got {self.aux_layers} for {self.architecture}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.draft_vocab_size is not None and not 0 < self.draft_vocab_size <= self.vocab_size:
            raise ValueError(f"draft_vocab_size must be in (0, {self.vocab_size}], got {self.draft_vocab_size}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}")

    @property
    def num_self_blocks(self) -> int:
        return sum(b == "self" for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["blocks"] = list(self.blocks)
        out["aux_layers"] = list(self.aux_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DraftConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown draft config keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_text_config(cls, text_config: Any, architecture: str = "dream", **overrides: Any) -> DraftConfig:
        """Sizes from a transformers text config (the target's language model); `overrides` win."""
        heads = text_config.num_attention_heads
        derived: dict[str, Any] = dict(
            architecture=architecture,
            hidden_size=text_config.hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(text_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
            intermediate_size=text_config.intermediate_size,
            vocab_size=text_config.vocab_size,
            rms_norm_eps=getattr(text_config, "rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(text_config),
        )
        if architecture in SINGLE_BLOCK:
            # The published EAGLE baselines have one block and never prune visual tokens.
            derived.update(blocks=("self",), keep_ratio=1.0)
        if architecture == "eagle3":
            derived.update(aux_layers=aux_layers(text_config.num_hidden_layers))
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown draft config keys: {unknown}")
        derived.update(overrides)
        return cls(**derived)

    @classmethod
    def from_target(cls, target: Any, architecture: str = "dream", **overrides: Any) -> DraftConfig:
        """Sizes from a TargetAdapter (or a bare causal LM): its text config decides heads and widths."""
        model = getattr(target, "model", target)
        text_config = model.config.get_text_config(decoder=True)
        config = cls.from_text_config(text_config, architecture, **overrides)
        # A VLM may have grown its embeddings (an added image token) past the text config's vocab_size.
        head_rows = model.get_output_embeddings().weight.shape[0]
        if "vocab_size" not in overrides and head_rows != config.vocab_size:
            config = dataclasses.replace(config, vocab_size=head_rows)
        return config


def _rope_theta(text_config: Any) -> float:
    """The target's rotary base when it has a single one; the draft's positions are the target's."""
    params = getattr(text_config, "rope_parameters", None)
    if isinstance(params, dict) and isinstance(params.get("rope_theta"), (int, float)):
        return float(params["rope_theta"])
    theta = getattr(text_config, "rope_theta", None)
    return float(theta) if isinstance(theta, (int, float)) else 10000.0


@dataclass(frozen=True)
class LayerWindow:
    """The target layers that may supervise a draft's first block, per token (dream.training.entropy picks
    the argmin-entropy one); recorded in datagen manifests and draft checkpoints."""

    start: int = 0                    # first candidate layer (0-based)
    stop: int | None = None           # one past the last candidate layer; None = all layers
    static_layer: int | None = None   # set: every token uses this layer (the paper's static ablation)

    def __post_init__(self) -> None:
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ValueError(f"layer window needs 0 <= start < stop, got [{self.start}, {self.stop})")
        if self.static_layer is not None and self.static_layer < 0:
            raise ValueError(f"static_layer must be >= 0, got {self.static_layer}")

    def candidates(self, num_layers: int) -> range:
        """The layers a token may be supervised by, checked against the target's depth."""
        if self.static_layer is not None:
            if self.static_layer >= num_layers:
                raise ValueError(f"static_layer {self.static_layer} >= the target's {num_layers} layers")
            return range(self.static_layer, self.static_layer + 1)
        stop = num_layers if self.stop is None else self.stop
        if stop > num_layers:
            raise ValueError(f"layer window [{self.start}, {stop}) exceeds the target's {num_layers} layers")
        return range(self.start, stop)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LayerWindow:
        unknown = sorted(set(data) - {"start", "stop", "static_layer"})
        if unknown:
            raise ValueError(f"unknown layer window keys: {unknown}")
        return cls(**data)
