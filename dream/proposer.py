"""The seam between the generation loop and anything that drafts tokens.

A proposer learns the prompt once (`begin`), drafts a tree under the pending root token (`propose`),
and is told what the target committed after each verification (`accept`). The engine never looks
inside a proposer, and the tree builder and verifier never import one.

Before the prefill the engine asks `prefill_request()` what the proposer will read beyond the
always-present fields: visual scores cost extra attention work in the last layer, and layer outputs (an
EAGLE-3 draft's fused target states) are captured by hooks, so both are computed only on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from dream.tree import Tree


@dataclass(frozen=True)
class PrefillRequest:
    """What a proposer needs the prefill to compute for its `begin`."""

    visual_scores: bool = False    # PromptState.visual_scores (last-layer attention each visual token receives)
    layers: tuple[int, ...] = ()   # target layer outputs (0-based, repeats allowed) captured at the prefill AND
                                   #   at every verify: PromptState / AcceptedStep.layer_outputs


@dataclass(frozen=True)
class PromptState:
    """What a proposer learns once, after the prefill."""

    input_ids: Tensor              # [S] long, the target's prompt (image placeholders expanded)
    visual_mask: Tensor            # [S] bool, True at visual-token positions
    input_embeds: Tensor           # [S, H] merged input embeddings the language model received
    features: Tensor               # [S, H] target final-layer hidden states after the final norm
    visual_scores: Tensor | None   # [S_vis] last-layer attention each visual token receives; None unless
                                   #   the proposer's PrefillRequest asked for it
    layer_outputs: Tensor | None = None   # [S, A, H] the outputs of PrefillRequest.layers, in its order;
                                          #   None when it asked for none


@dataclass(frozen=True)
class AcceptedStep:
    """What the engine tells a proposer after each verification."""

    token_ids: Tensor              # [k] long, tokens now committed (the tree root first)
    features: Tensor               # [k, H] the target's features at those tokens
    next_token: int                # the bonus / resampled token: the next root, not yet committed
    layer_outputs: Tensor | None = None   # [k, A, H] the outputs of PrefillRequest.layers at those tokens


class Proposer(Protocol):
    def prefill_request(self) -> PrefillRequest:
        """What the prefill must compute for `begin` (asked once per generation, before the prefill)."""

    def begin(self, prompt: PromptState) -> None:
        """Start a generation; forget any previous one."""

    def propose(self, root_token: int) -> Tree:
        """Draft a tree whose node 0 is `root_token`, the pending token at position len(committed)."""

    def accept(self, step: AcceptedStep) -> None:
        """Record the tokens the target committed; the next `propose` gets `step.next_token`."""
