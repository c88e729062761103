"""Test proposers and the HF greedy oracle shared by the end-to-end tests (test_engine, test_exact).

OracleProposer knows the target's greedy continuation and drafts it (with noise at will); RandomProposer
drafts random logits; TREES are the tree shapes the lossless tests run; hf_greedy is the stock model's own
greedy generate(), the reference a speculative output must equal.
"""

from __future__ import annotations

import torch

from dream.proposer import AcceptedStep, PrefillRequest, PromptState
from dream.tree import Tree, TreeConfig, build_tree


class OracleProposer:
    """Knows the target's greedy continuation. Its draft logits put `hit` on the right next token of
    every node on the true path, over standard-normal noise: hit=100 is a perfect drafter, hit~2.5
    is right at the top sometimes, lower in the top-k at other times."""

    def __init__(self, future: list[int], cfg: TreeConfig, vocab_size: int, hit: float = 100.0, seed: int = 0):
        self.future, self.cfg, self.vocab_size, self.hit = future, cfg, vocab_size, hit
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0                                      # index in `future` of the pending root

    def prefill_request(self) -> PrefillRequest:
        return PrefillRequest()

    def begin(self, prompt: PromptState) -> None:
        self.position = 0

    def accept(self, step: AcceptedStep) -> None:
        self.position += step.token_ids.shape[0]

    def propose(self, root_token: int) -> Tree:
        assert root_token == self.future[self.position]
        paths: list[tuple[int, ...]] = [()]

        def expand(tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
            new = [paths[p] + (t,) for t, p in zip(tokens.tolist(), parents.tolist())]
            paths.extend(new)
            return torch.stack([self._logits(path) for path in new])

        return build_tree(root_token, self._logits(()), expand, self.cfg)

    def _logits(self, path: tuple[int, ...]) -> torch.Tensor:
        logits = torch.randn(self.vocab_size, generator=self.generator)
        start = self.position + 1
        if list(path) == self.future[start:start + len(path)] and start + len(path) < len(self.future):
            logits[self.future[start + len(path)]] += self.hit
        return logits


class RandomProposer(OracleProposer):
    """Random draft logits: almost everything is rejected."""

    def __init__(self, cfg: TreeConfig, vocab_size: int, seed: int = 0, temperature: float = 0.0):
        super().__init__([], cfg, vocab_size, hit=0.0, seed=seed)
        self.temperature = temperature

    def propose(self, root_token: int) -> Tree:
        def expand(tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
            return torch.randn(tokens.shape[0], self.vocab_size, generator=self.generator)

        return build_tree(root_token, torch.randn(self.vocab_size, generator=self.generator), expand, self.cfg,
                          temperature=self.temperature, generator=self.generator)


TREES = [
    TreeConfig(top_k=4, depth=4, total_tokens=16),
    TreeConfig(top_k=1, depth=3, total_tokens=3),
    TreeConfig(top_k=3, depth=1, total_tokens=2),
    TreeConfig(top_k=2, depth=5, total_tokens=3),
    TreeConfig(top_k=3, depth=4, total_tokens=60),
    TreeConfig(depth=6, chain=True),
]


def hf_greedy(model, inputs, max_new_tokens: int) -> list[int]:
    out = model.generate(input_ids=inputs.input_ids, attention_mask=torch.ones_like(inputs.input_ids),
                         **inputs.model_kwargs, do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, inputs.input_ids.shape[1]:].tolist()
