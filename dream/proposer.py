"""The seam between the generation loop and anything that drafts tokens.

A proposer learns the prompt once (`begin`), drafts a tree under the pending root token (`propose`),
and is told what the target committed after each verification (`accept`). The engine never looks
inside a proposer, and the tree builder and verifier never import one.

Optional: a proposer class may set `needs_visual_scores = True` to ask the engine to compute
`PromptState.visual_scores` at prefill (it costs an eager last layer, so it is off by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from dream.tree import Tree


@dataclass(frozen=True)
class PromptState:
    """What a proposer learns once, after the prefill."""

    input_ids: Tensor              # [S] long, the target's prompt (image placeholders expanded)
    visual_mask: Tensor            # [S] bool, True at visual-token positions
    input_embeds: Tensor           # [S, H] merged input embeddings the language model received
    features: Tensor               # [S, H] target final-layer hidden states after the final norm
    visual_scores: Tensor | None   # [S_vis] last-layer attention each visual token receives


@dataclass(frozen=True)
class AcceptedStep:
    """What the engine tells a proposer after each verification."""

    token_ids: Tensor              # [k] long, tokens now committed (the tree root first)
    features: Tensor               # [k, H] the target's features at those tokens
    next_token: int                # the bonus / resampled token: the next root, not yet committed


class Proposer(Protocol):
    def begin(self, prompt: PromptState) -> None:
        """Start a generation; forget any previous one."""

    def propose(self, root_token: int) -> Tree:
        """Draft a tree whose node 0 is `root_token`, the pending token at position len(committed)."""

    def accept(self, step: AcceptedStep) -> None:
        """Record the tokens the target committed; the next `propose` gets `step.next_token`."""
