"""Draft trees: the `Tree` a proposer hands to the verifier, and the EAGLE-2 dynamic tree builder.

EAGLE-2 expansion (deterministic children). Every node carries a score: the cumulative draft
log-probability of its path from the root. For `depth` levels:
  - level 1 is the root's `top_k` most likely children; they form the first frontier;
  - each later level forwards the frontier through the draft (`expand`), every frontier node proposes
    its `top_k` most likely children (all of them join the candidate pool), and the best `top_k` of
    those children by score become the next frontier. The last level is never forwarded.
Finally the `total_tokens` best candidates of the whole pool are kept. A child's score is its parent's
plus a log-probability <= 0, and ties are broken by pool order (parents are pooled before children), so
the kept set is closed under ancestors without any repair step.

A chain is the top_k = 1 case of length `depth`. A stochastic chain samples each child from
softmax(draft_logits / temperature) and records that distribution in `draft_probs`, which the
sampling verifier needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dream.sampling import sample

ExpandFn = Callable[[Tensor, Tensor], Tensor]
# expand(tokens [k] (target ids), parents [k] (ids of already-forwarded nodes)) -> draft logits [k, V_draft]
# Forwarded-node ids: the root is 0; each expand call appends its k nodes with the next consecutive ids.


@dataclass(frozen=True)
class TreeConfig:
    top_k: int = 4           # children expanded per frontier node, and frontier width
    depth: int = 4           # draft steps (max accepted drafts per round)
    total_tokens: int = 16   # draft nodes kept after reranking (root excluded)
    chain: bool = False      # a single path of length `depth` (top_k and total_tokens do not apply)

    def __post_init__(self) -> None:
        for name in ("top_k", "depth", "total_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TreeConfig.{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Tree:
    tokens: Tensor       # [N] long; node 0 is the root (the pending token)
    parents: Tensor      # [N] long; -1 for the root; parents[i] < i
    depths: Tensor       # [N] long; root 0
    ancestors: Tensor    # [N, N] bool; ancestors[i, j] iff j == i or j is an ancestor of i
    draft_probs: Tensor | None = None  # [N, V] target-vocab distribution the children of node i were
                                       # SAMPLED from (stochastic chains only; None for top-k trees)

    def __post_init__(self) -> None:
        _check_tree(self)

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[0]


def _check_tree(tree: Tree) -> None:
    """ValueError unless parents, depths and ancestors describe one rooted tree, consistently.

    A tree from a third-party proposer reaches the verifier as is, and an inconsistent one would silently
    break exactness (a node verified under the wrong prefix). Checked row by row against the parent's row,
    which by induction from the root proves the whole matrix: a few vectorised ops for a few dozen nodes.
    """
    n = tree.tokens.shape[0] if tree.tokens.dim() == 1 else -1
    if n < 1:
        raise ValueError(f"Tree.tokens must be a non-empty 1-D tensor, got shape {tuple(tree.tokens.shape)}")
    shapes = {"parents": (tree.parents, (n,)), "depths": (tree.depths, (n,)), "ancestors": (tree.ancestors, (n, n))}
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"Tree.{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tree.ancestors.dtype != torch.bool:
        raise ValueError(f"Tree.ancestors must be bool, got {tree.ancestors.dtype}")
    parents, depths = tree.parents.long(), tree.depths.long()
    index = torch.arange(n, device=parents.device)
    bad_parent = bool((parents[1:] < 0).any()) or bool((parents[1:] >= index[1:]).any())
    if int(parents[0]) != -1 or int(depths[0]) != 0 or bad_parent:
        raise ValueError(f"Tree: the root (node 0) needs parent -1 and depth 0, and 0 <= parents[i] < i: {parents.tolist()}")
    parent_rows = parents.clamp(min=0)
    if not torch.equal(depths[1:], depths[parent_rows[1:]] + 1):
        raise ValueError(f"Tree.depths must be the parent's depth + 1: {depths.tolist()}")
    expected = tree.ancestors[parent_rows] | torch.eye(n, dtype=torch.bool, device=parents.device)
    expected[0] = index == 0
    if not torch.equal(tree.ancestors, expected):
        raise ValueError("Tree.ancestors must hold exactly each node and its ancestors (the parents' rows)")
    if tree.draft_probs is not None and (tree.draft_probs.dim() != 2 or tree.draft_probs.shape[0] != n):
        raise ValueError(f"Tree.draft_probs must be [{n}, V], got {tuple(tree.draft_probs.shape)}")


def tree_from_parents(tokens: Tensor, parents: Tensor, draft_probs: Tensor | None = None) -> Tree:
    """Derive depths and the ancestor matrix from parent pointers (parents must come first)."""
    parent_list = parents.tolist()
    n = len(parent_list)
    if n == 0 or parent_list[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parent_list) if i):
        raise ValueError(f"tree parents must be -1 for the root and satisfy 0 <= parents[i] < i: {parent_list}")
    depth_list = [0] * n
    ancestors = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        depth_list[i] = depth_list[parent_list[i]] + 1
        ancestors[i] |= ancestors[parent_list[i]]
    depths = torch.tensor(depth_list, dtype=torch.long)
    return Tree(tokens.long(), parents.long(), depths, ancestors, draft_probs)


def chain_tree(tokens: Tensor, draft_probs: Tensor | None = None) -> Tree:
    """A single path: tokens [N], root first."""
    n = tokens.shape[0]
    parents = torch.arange(-1, n - 1, dtype=torch.long)
    depths = torch.arange(n, dtype=torch.long)
    ancestors = torch.ones(n, n, dtype=torch.bool).tril()
    return Tree(tokens.long(), parents, depths, ancestors, draft_probs)


def prune_depth(tree: Tree, max_depth: int) -> Tree:
    """The subtree of nodes at depth <= max_depth (still closed under ancestors, parents first)."""
    keep = tree.depths <= max_depth                                              # [N]
    new_index = keep.long().cumsum(0) - 1                                        # old node -> new node
    parents = torch.where(tree.parents[keep] >= 0, new_index[tree.parents[keep].clamp(min=0)], -1)
    draft_probs = None if tree.draft_probs is None else tree.draft_probs[keep]
    return Tree(tree.tokens[keep], parents, tree.depths[keep], tree.ancestors[keep][:, keep], draft_probs)


def build_tree(root_token: int, root_logits: Tensor, expand: ExpandFn, cfg: TreeConfig, *,
               vocab_map: Tensor | None = None, temperature: float = 0.0,
               generator: torch.Generator | None = None, vocab_size: int | None = None) -> Tree:
    """Draft a tree under `root_token` from the draft's logits for the root's children.

    root_logits [V_draft]; vocab_map [V_draft] maps draft ids to target ids (reduced draft vocabulary).
    temperature > 0 with cfg.chain samples a stochastic chain with `generator`; its `draft_probs` are
    [N, vocab_size] (vocab_size = target vocabulary; needed only when vocab_map is given).
    Otherwise children are the deterministic top-k (EAGLE-2 expansion; a chain is top_k = 1).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if cfg.chain and temperature > 0:
        return _sample_chain(root_token, root_logits, expand, cfg.depth, temperature, generator,
                             vocab_map, vocab_size)
    if cfg.chain:
        return _expand_top_k(root_token, root_logits, expand, 1, cfg.depth, cfg.depth, vocab_map)
    return _expand_top_k(root_token, root_logits, expand, cfg.top_k, cfg.depth, cfg.total_tokens, vocab_map)


def _to_target(draft_ids: Tensor, vocab_map: Tensor | None) -> Tensor:
    return draft_ids if vocab_map is None else vocab_map[draft_ids]


def _expand_top_k(root_token: int, root_logits: Tensor, expand: ExpandFn, top_k: int, depth: int,
                  total_tokens: int, vocab_map: Tensor | None) -> Tree:
    k = min(top_k, root_logits.shape[-1])
    scores, draft_ids = torch.log_softmax(root_logits.float(), -1).topk(k)       # [k]
    tokens = _to_target(draft_ids, vocab_map)                                    # [k] target ids
    pool_scores, pool_tokens = [scores], [tokens]
    pool_parents = [torch.full((k,), -1, dtype=torch.long)]                      # pool index; -1 = root
    frontier = torch.arange(k)                                                   # [k] pool indices
    parent_ids = torch.zeros(k, dtype=torch.long)                                # forwarded id of each parent
    pool_size, next_id = k, 1
    for _ in range(depth - 1):
        logits = expand(tokens, parent_ids)                                      # [k, V_draft]
        node_ids = torch.arange(next_id, next_id + frontier.shape[0])             # ids the frontier just got
        next_id += frontier.shape[0]
        child_scores = scores[:, None] + torch.log_softmax(logits.float(), -1)   # [k, V_draft]
        top_scores, top_ids = child_scores.topk(min(k, logits.shape[-1]), -1)     # [k, k']
        width = top_ids.shape[-1]
        all_scores, all_tokens = top_scores.flatten(), _to_target(top_ids.flatten(), vocab_map)
        pool_scores.append(all_scores)
        pool_tokens.append(all_tokens)
        pool_parents.append(frontier.repeat_interleave(width))
        # Stable sort: equal scores keep pool order, so the choice is deterministic.
        best = torch.sort(all_scores, descending=True, stable=True).indices[:k]  # next frontier
        frontier, scores, tokens = pool_size + best, all_scores[best], all_tokens[best]
        parent_ids = node_ids[best // width]
        pool_size += all_scores.shape[0]
    return _rerank(root_token, torch.cat(pool_scores), torch.cat(pool_tokens), torch.cat(pool_parents),
                   total_tokens)


def _rerank(root_token: int, scores: Tensor, tokens: Tensor, parents: Tensor, total_tokens: int) -> Tree:
    """Keep the `total_tokens` best pool nodes; order them by pool index so parents come first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = order[:total_tokens].sort().values                                    # [n]
    tree_index = torch.full((scores.shape[0] + 1,), -1, dtype=torch.long)        # pool index -> node
    tree_index[keep] = torch.arange(1, keep.shape[0] + 1)
    tree_index[-1] = 0                                                           # pool parent -1 is the root
    kept_parents = tree_index[parents[keep]]
    assert bool((kept_parents >= 0).all()), "kept set must be closed under ancestors"
    all_tokens = torch.cat([torch.tensor([root_token]), tokens[keep]])
    return tree_from_parents(all_tokens, torch.cat([torch.tensor([-1]), kept_parents]))


def _sample_chain(root_token: int, root_logits: Tensor, expand: ExpandFn, depth: int, temperature: float,
                  generator: torch.Generator | None, vocab_map: Tensor | None,
                  vocab_size: int | None) -> Tree:
    if vocab_map is not None and vocab_size is None:
        raise ValueError("a stochastic chain with vocab_map needs vocab_size (the target vocabulary)")
    width = root_logits.shape[-1] if vocab_map is None else vocab_size
    draft_probs = torch.zeros(depth + 1, width)                                  # leaf row stays 0
    tokens = [root_token]
    logits = root_logits
    for d in range(depth):
        probs = torch.softmax(logits.float() / temperature, -1)                  # [V_draft]
        draft_id = sample(probs, generator)
        if vocab_map is None:
            draft_probs[d] = probs
        else:
            draft_probs[d, vocab_map] = probs
        tokens.append(draft_id if vocab_map is None else int(vocab_map[draft_id]))
        if d < depth - 1:
            # The node just sampled is at depth d + 1; its parent was forwarded with id d.
            logits = expand(torch.tensor([tokens[-1]]), torch.tensor([d]))[0]
    return chain_tree(torch.tensor(tokens), draft_probs)
