"""The model `--tree auto` uses to predict how fast a tree shape decodes, from calibration data.

Acceptance (measured on the dev prompts with a large calibration tree, dream.bench.tune):
  Each verified round is walked down its accepted path. At depth d the path's node had some children in
  the tree, in the draft's rank order (the builder keeps a prefix of each node's top-k); the target took
  the child of rank r, or none of them. q[d][r] is the probability that the accepted path reaches depth
  d + 1 through the rank-r child, given it reached depth d. It is estimated rank by rank, as survival data
  (Kaplan-Meier): the hazard at rank r is (rounds accepted at rank r) / (rounds that tried rank r, i.e.
  whose node had a rank-r child and rejected ranks < r); a node with fewer children than the ranks asked
  about leaves the remaining ranks unobserved rather than counted as rejections. This matches how the
  verifier works: greedy takes the argmax child, sampling tries the children in order.

Tokens per round of a tree (top_k, depth, total_tokens):
  Assume acceptance at each depth is independent of the ranks above it, and that the draft's confidence
  orders nodes like their acceptance probability. Then the EAGLE-2 builder (dream.tree) keeps the nodes
  of highest path probability, prod_d q[d][r_d], found the way it finds them (top_k children per frontier
  node, the best top_k children become the next frontier, the best total_tokens of all are kept), and
      tokens per round = 1 + sum of the kept nodes' path probabilities
  (the bonus token plus the expected number of accepted drafts).

Time per round:
      round_s = draft_s(top_k, depth) + verify_s(nodes, depth) + overhead_s
  draft_s: the draft's propose() measured at that shape; verify_s: a least-squares plane
  a + b * nodes + c * depth through verify rounds (forward, acceptance rule, cache rewind) timed on a grid
  of tree sizes (the exact verify attends depth by depth, so depth costs apart from size); overhead_s:
  what the calibration rounds took beyond those two (engine bookkeeping, the draft's forward of the
  accepted tokens), per round.
Predicted decode speed = tokens per round / round_s. The prefill is the same for every shape and left out.

Prompt lookup proposes a chain whose length the context decides (up to its limit L). For a limit L the
calibration rounds (made with the largest L) are replayed: tokens = 1 + min(accepted, L), verify at
min(proposed, L) + 1 nodes, averaged over the rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dream.tree import TreeConfig

Round = tuple[tuple[int, int | None], ...]
# One verified round down its accepted path: per depth, (children of the path's node there, rank of the
# accepted child or None when the target took none). It ends at a rejection or at a node without children.


@dataclass(frozen=True)
class VerifyCost:
    """verify_s(nodes, depth) = base + per_node * nodes + per_depth * depth (seconds)."""

    base: float
    per_node: float
    per_depth: float

    def __call__(self, nodes: float, depth: float) -> float:
        return self.base + self.per_node * nodes + self.per_depth * depth

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, float]]) -> "VerifyCost":
        """Least squares through (nodes, depth, seconds) samples."""
        nodes, depth, seconds = (np.array(column, dtype=float) for column in zip(*samples))
        design = np.stack([np.ones_like(nodes), nodes, depth], axis=1)
        base, per_node, per_depth = np.linalg.lstsq(design, seconds, rcond=None)[0]
        return cls(float(base), float(per_node), float(per_depth))


@dataclass(frozen=True)
class Prediction:
    tree: TreeConfig
    nodes: int                     # verified nodes, root included
    tokens_per_round: float
    round_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_round / self.round_s

    def to_dict(self) -> dict:
        return {"top_k": self.tree.top_k, "depth": self.tree.depth, "total_tokens": self.tree.total_tokens,
                "nodes": self.nodes, "tokens_per_round": self.tokens_per_round, "round_s": self.round_s,
                "tokens_per_s": self.tokens_per_s}


def acceptance_table(rounds: Iterable[Round], depth: int, top_k: int) -> list[list[float]]:
    """q [depth][top_k]: P(the path goes on through the rank-r child at depth d | it reached depth d)."""
    events = np.zeros((depth, top_k))
    at_risk = np.zeros((depth, top_k))
    for walk in rounds:
        for d, (children, rank) in enumerate(walk[:depth]):
            tried = min(children if rank is None else rank + 1, top_k)
            at_risk[d, :tried] += 1
            if rank is not None and rank < top_k:
                events[d, rank] += 1
    hazard = np.divide(events, at_risk, out=np.zeros_like(events), where=at_risk > 0)
    survival = np.cumprod(1 - hazard, axis=1)
    before = np.hstack([np.ones((depth, 1)), survival[:, :-1]])                  # survived ranks < r
    return (hazard * before).tolist()


def expected_tokens(q: Sequence[Sequence[float]], tree: TreeConfig) -> tuple[float, int, int]:
    """(tokens per round, nodes with the root, deepest kept depth) of the tree the builder would keep."""
    k = tree.top_k
    assert tree.depth <= len(q) and k <= len(q[0]), f"{tree} exceeds the acceptance table {len(q)}x{len(q[0])}"
    level = [(q[0][r], 1) for r in range(k)]
    pool, frontier = list(level), level
    for d in range(1, tree.depth):
        children = [(value * q[d][r], d + 1) for value, _ in frontier for r in range(k)]
        pool += children
        frontier = sorted(children, key=lambda x: -x[0])[:k]
    # Stable sort: equal values keep pool order (parents first), as the builder breaks ties.
    kept = sorted(pool, key=lambda x: -x[0])[: tree.total_tokens]
    return 1 + sum(v for v, _ in kept), len(kept) + 1, max(d for _, d in kept)


def candidate_trees(max_top_k: int, max_depth: int, node_counts: Sequence[int]) -> list[TreeConfig]:
    """Every shape up to the limits; total_tokens from node_counts, capped at what the builder can produce."""
    shapes = set()
    for k in range(1, max_top_k + 1):
        for depth in range(1, max_depth + 1):
            pool = k + (depth - 1) * k * k
            # Fewer nodes than the depth cannot reach it: that shape is a shallower one with wasted steps.
            shapes.update((k, depth, total) for total in {min(n, pool) for n in node_counts} if total >= depth)
    return [TreeConfig(top_k=k, depth=d, total_tokens=n) for k, d, n in sorted(shapes)]


def predict_trees(q: Sequence[Sequence[float]], candidates: Iterable[TreeConfig], draft_s: dict[tuple[int, int], float],
                  verify: VerifyCost, overhead_s: float) -> list[Prediction]:
    """Every candidate's prediction, fastest first."""
    predictions = []
    for tree in candidates:
        tokens, nodes, deepest = expected_tokens(q, tree)
        round_s = draft_s[tree.top_k, tree.depth] + verify(nodes, deepest) + overhead_s
        predictions.append(Prediction(tree, nodes, tokens, round_s))
    return sorted(predictions, key=lambda p: -p.tokens_per_s)


def predict_chains(rounds: Sequence[tuple[int, int]], lengths: Iterable[int], draft_s: float, verify: VerifyCost,
                   overhead_s: float) -> list[Prediction]:
    """Prompt lookup at each chain limit, from (proposed, accepted) drafts of calibration rounds; fastest first."""
    proposed = np.array([p for p, _ in rounds], dtype=float)
    accepted = np.array([a for _, a in rounds], dtype=float)
    predictions = []
    for length in lengths:
        drafted = np.minimum(proposed, length)
        verify_s = float(np.mean([verify(n + 1, n) for n in drafted]))
        tokens = 1 + float(np.mean(np.minimum(accepted, length)))
        tree = TreeConfig(top_k=1, depth=length, total_tokens=length, chain=True)
        predictions.append(Prediction(tree, int(round(float(drafted.mean()))) + 1, tokens, draft_s + verify_s + overhead_s))
    return sorted(predictions, key=lambda p: -p.tokens_per_s)
