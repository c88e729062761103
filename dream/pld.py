"""Prompt-lookup decoding: a model-free proposer that copies text already in the context.

The context is the prompt, the committed tokens and the pending root. For n from `max_ngram` down to
`min_ngram`, find earlier occurrences of the context's last n tokens and propose the (up to
`num_tokens`) tokens that followed one of them (the longest such continuation, then the most recent),
as a deterministic chain. A match whose continuation
touches a visual position (or the image token id) is skipped: image placeholders are never proposed.
If nothing matches, the tree is the root alone and the round is a plain decoding step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dream.proposer import AcceptedStep, PrefillRequest, PromptState
from dream.tree import Tree, chain_tree


class PromptLookupProposer:
    def __init__(self, num_tokens: int = 4, max_ngram: int = 3, min_ngram: int = 1,
                 image_token_id: int | None = None) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.image_token_id = image_token_id
        self._ids = torch.zeros(0, dtype=torch.long)        # [L] committed context
        self._blocked = torch.zeros(0, dtype=torch.bool)    # [L] True where a token must not be copied

    def prefill_request(self) -> PrefillRequest:
        return PrefillRequest()                 # the prompt's token ids are all it reads

    def begin(self, prompt: PromptState) -> None:
        self._ids = prompt.input_ids.long().cpu()
        self._blocked = prompt.visual_mask.bool().cpu() | self._is_image_token(self._ids)

    def accept(self, step: AcceptedStep) -> None:
        ids = step.token_ids.long().cpu()
        self._ids = torch.cat([self._ids, ids])
        self._blocked = torch.cat([self._blocked, self._is_image_token(ids)])

    def propose(self, root_token: int) -> Tree:
        root = torch.tensor([root_token])
        context = torch.cat([self._ids, root])                                   # [L]
        blocked = torch.cat([self._blocked, self._is_image_token(root)])
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            continuation = self._lookup(context, blocked, n)
            if continuation is not None:
                return chain_tree(torch.cat([root, continuation]))
        return chain_tree(root)

    def _is_image_token(self, ids: Tensor) -> Tensor:
        if self.image_token_id is None:
            return torch.zeros_like(ids, dtype=torch.bool)
        return ids == self.image_token_id

    def _lookup(self, context: Tensor, blocked: Tensor, n: int) -> Tensor | None:
        """The continuation of the best earlier match of the last n tokens, or None.

        Best = the longest continuation (at most num_tokens), then the most recent: inside a repeated
        run the most recent match overlaps the suffix and could offer a single token.
        """
        length = context.shape[0]
        if length <= n:
            return None
        # Windows start at 0 .. length-1-n: the suffix itself is excluded and each match has at least
        # one token after it.
        windows = context[:-1].unfold(0, n, 1)                                   # [length - n, n]
        starts = (windows == context[-n:]).all(-1).nonzero().flatten()          # [M]
        begin = starts + n
        end = (begin + self.num_tokens).clamp(max=length)
        blocked_before = torch.cat([torch.zeros(1, dtype=torch.long), blocked.long().cumsum(0)])
        clean = blocked_before[end] == blocked_before[begin]                     # no visual token copied
        if not bool(clean.any()):
            return None
        rank = torch.where(clean, (end - begin) * length + starts, -1)
        best = int(rank.argmax())
        return context[int(begin[best]):int(end[best])]
