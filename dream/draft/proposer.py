"""`DraftProposer`: the Proposer (docs/design.md) behind every draft: DREAM, the EAGLE-2 and EAGLE-3 baselines.

Per generation the draft keeps a self-attention cache and a memory (see dream.draft.base) over the
COMMITTED sequence only, with the target's entries (`DraftModel.target_entries`: its features, or the
layer outputs an EAGLE-3 draft asks the engine for through `prefill_request`); tree nodes live in them
only while a tree grows:

  begin(prompt)  the prompt, visual tokens pruned (dream.draft.compression), through the draft in one forward.
  propose(root)  one forward over the tokens committed since the last round plus the root; then
                 dream.tree.build_tree grows the tree, calling back `expand` on each frontier: a node
                 attends committed tokens and its ancestors (self-attention) and reads committed target
                 entries plus its ancestors' DRAFT feedback (memory), never a sibling's. Afterwards the
                 root and tree entries are dropped, so the caches again hold only committed tokens.
  accept(step)   the committed tokens and their target entries; forwarded in the next propose, when
                 their entries are final. (The root is forwarded again then: it was last forwarded
                 before its target entry existed, which only matters for the memory, not for it.)

The image token is never proposed: its draft logit is -inf.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dream.draft.compression import select_kept_positions
from dream.draft.base import DraftModel, DraftOutput, DraftState
from dream.draft.head import target_head
from dream.proposer import AcceptedStep, PrefillRequest, PromptState
from dream.target.head import soft_cap
from dream.target.packing import linear_fn
from dream.tree import Tree, TreeConfig, build_tree


class DraftProposer:
    def __init__(
        self,
        draft: DraftModel,
        target: Any,
        tree_cfg: TreeConfig,
        *,
        temperature: float = 0.0,             # > 0 with tree_cfg.chain: a sampled chain (needs `generator`)
        generator: torch.Generator | None = None,
        keep_ratio: float | None = None,      # visual tokens kept; None = what the draft was trained with
    ) -> None:
        # The draft may be shared (by methods, threads, a training loop): nothing here writes to it. It has
        # no dropout, so its train/eval mode does not change what it computes.
        self.draft = draft
        self.target = target
        self.tree_cfg = tree_cfg
        self.temperature = temperature
        self.generator = generator
        self.keep_ratio = draft.config.keep_ratio if keep_ratio is None else keep_ratio
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        self._head = draft.restricted_head(target_head(target))
        self._project = linear_fn(self._head.weight, self._head.bias)     # prepacked where faster (target.packing)
        self._blocked = _draft_ids(draft.vocab_map, getattr(target, "image_token_id", None))
        self._state: DraftState | None = None
        self._next_position = 0                              # target position of the pending root
        self._pending_tokens = torch.zeros(0, dtype=torch.long)
        self._pending_entries: Tensor | None = None

    def prefill_request(self) -> PrefillRequest:
        return PrefillRequest(visual_scores=self.keep_ratio < 1.0, layers=self.draft.target_layers)

    @torch.no_grad()
    def begin(self, prompt: PromptState) -> None:
        kept = self._kept_positions(prompt)
        self._state = self.draft.new_state()
        entries = self.draft.target_entries(prompt.features, prompt.layer_outputs)
        self.draft.remember(self._state, entries[kept].unsqueeze(0))
        n = kept.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        earlier = kept[None, :] < kept[:, None]             # memory: entries strictly before each position
        embeds = prompt.input_embeds[kept].unsqueeze(0)
        self.draft.forward_step(self._state, embeds, kept, causal, earlier)
        self._next_position = prompt.input_ids.shape[0]
        self._pending_tokens = torch.zeros(0, dtype=torch.long)
        self._pending_entries = None

    @torch.no_grad()
    def propose(self, root_token: int) -> Tree:
        state = self._require_state()
        out = self._forward_pending(state, root_token)          # the pending tokens then the root: [1, n, H]
        root_logits = self._logits(out.features[0, -1:])[0]
        tree_self_start = state.self_length - 1                                  # the root's cache slot
        memory_start = state.memory_length
        expander = _TreeExpander(self, state, self._next_position, self.draft.feedback(out)[:, -1:])
        tree = build_tree(
            root_token,
            root_logits,
            expander.expand,
            self.tree_cfg,
            vocab_map=self.draft.vocab_map,
            temperature=self.temperature,
            generator=self.generator,
            vocab_size=self.draft.config.vocab_size,
        )
        self.draft.truncate(state, tree_self_start, memory_start)
        return tree

    def accept(self, step: AcceptedStep) -> None:
        self._require_state()
        # Appended, not replaced: they are forwarded at the next propose, however many accepts came first.
        self._pending_tokens = torch.cat([self._pending_tokens, step.token_ids.long().cpu()])
        entries = self.draft.target_entries(step.features, step.layer_outputs)
        if self._pending_entries is not None:
            entries = torch.cat([self._pending_entries, entries.to(self._pending_entries)])
        self._pending_entries = entries
        self._next_position += step.token_ids.shape[0]

    # ---- internals ---------------------------------------------------------------------------------------
    def _require_state(self) -> DraftState:
        if self._state is None:
            raise RuntimeError("DraftProposer.begin(prompt) must be called before propose/accept")
        return self._state

    def _kept_positions(self, prompt: PromptState) -> Tensor:
        visual_mask = prompt.visual_mask.bool().cpu()
        if self.keep_ratio >= 1.0 or not bool(visual_mask.any()):
            return torch.arange(visual_mask.shape[0])
        if prompt.visual_scores is None:
            raise ValueError("keep_ratio < 1 needs PromptState.visual_scores (prefill with visual_scores=True)")
        return select_kept_positions(visual_mask, prompt.visual_scores.cpu(), self.keep_ratio)

    def _forward_pending(self, state: DraftState, root_token: int) -> DraftOutput:
        """Forward the newly committed tokens (their target entries join the memory) and the root."""
        pending = self._pending_tokens
        if self._pending_entries is not None:
            self.draft.remember(state, self._pending_entries.unsqueeze(0))
        tokens = torch.cat([pending, torch.tensor([root_token])])               # [n]
        n = tokens.shape[0]
        positions = torch.arange(self._next_position - pending.shape[0], self._next_position + 1)
        # Memory holds committed entries up to position root - 1, in order: entry t is visible to the
        # new token j iff it lies before it, i.e. t < memory_length - (n - 1 - j).
        memory_length = state.memory_length
        allowed_memory = torch.arange(memory_length)[None, :] < (memory_length - n + 1 + torch.arange(n))[:, None]
        allowed_self = torch.cat(
            [torch.ones(n, state.self_length, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()], dim=1
        )
        embeds = self.target.embed(tokens.unsqueeze(0))
        out = self.draft.forward_step(state, embeds, positions, allowed_self, allowed_memory)
        self._pending_tokens = torch.zeros(0, dtype=torch.long)
        self._pending_entries = None
        return out

    def _logits(self, features: Tensor) -> Tensor:
        """Draft features [k, H] -> float logits [k, V_draft] with the blocked ids at -inf."""
        head = self._head
        # Trees are built on the CPU (small control structures); the [k, V_draft] logits move once.
        logits = soft_cap(self._project(features.to(head.weight.dtype)), head.softcap).float().cpu()
        if self._blocked.numel():
            logits[:, self._blocked] = float("-inf")
        return logits


class _TreeExpander:
    """The ExpandFn of one tree: forwards frontier nodes under the tree mask, remembers their feedback."""

    def __init__(self, proposer: DraftProposer, state: DraftState, root_position: int, root_feedback: Tensor):
        self.proposer = proposer
        self.state = state
        self.root_position = root_position
        self.self_prefix = state.self_length - 1         # committed entries before the root's slot
        self.memory_prefix = state.memory_length         # committed target entries
        proposer.draft.remember(state, root_feedback)    # [1, 1, H]
        self.ancestors = torch.ones(1, 1, dtype=torch.bool)    # [M, M] over forwarded nodes, self included
        self.depths = torch.zeros(1, dtype=torch.long)          # [M]

    def expand(self, tokens: Tensor, parents: Tensor) -> Tensor:
        """tokens [k] target ids, parents [k] forwarded ids -> draft logits [k, V_draft]."""
        draft, state = self.proposer.draft, self.state
        k, m = tokens.shape[0], self.depths.shape[0]
        parent_rows = self.ancestors[parents]                                    # [k, M] parent and above
        own = torch.eye(k, dtype=torch.bool)
        allowed_self = torch.cat([torch.ones(k, self.self_prefix, dtype=torch.bool), parent_rows, own], dim=1)
        allowed_memory = torch.cat([torch.ones(k, self.memory_prefix, dtype=torch.bool), parent_rows], dim=1)
        depths = self.depths[parents] + 1
        embeds = self.proposer.target.embed(tokens.long().unsqueeze(0))
        out = draft.forward_step(state, embeds, self.root_position + depths, allowed_self, allowed_memory)
        # Their feedback becomes memory for their descendants, under the same ancestor rule.
        draft.remember(state, draft.feedback(out))
        self.ancestors = torch.cat(
            [torch.cat([self.ancestors, torch.zeros(m, k, dtype=torch.bool)], dim=1),
             torch.cat([parent_rows, own], dim=1)], dim=0
        )
        self.depths = torch.cat([self.depths, depths])
        return self.proposer._logits(out.features[0])


def _draft_ids(vocab_map: Tensor | None, token_id: int | None) -> Tensor:
    """Draft-vocabulary ids of a target token (none when the reduced vocabulary lacks it)."""
    if token_id is None:
        return torch.zeros(0, dtype=torch.long)
    if vocab_map is None:
        return torch.tensor([token_id])
    return (vocab_map.cpu() == token_id).nonzero().flatten()
