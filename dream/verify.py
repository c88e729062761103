r"""Lossless verification of a draft tree against the target's outputs at every node.

Terms. The root (node 0) is the pending token, always accepted. An *accepted* node is a draft token
the target keeps; the accepted nodes form a root-to-node path. After the path the target emits one
more token: the *bonus* token if the path ends at a leaf or every child was accepted, the *recovered*
(resampled) token if a draft child was rejected. Both are returned as `next_token`.

Greedy (`verify_greedy`, target_logits [N, V]):
    a node i is correct iff tokens[i] == argmax_v target_logits[parent(i), v];
    the accepted path is the deepest node whose ancestors (and itself) are all correct;
    next_token = argmax_v target_logits[last accepted node, v].
This reproduces plain greedy decoding token for token.

Sampling (`verify_sampling`, target_probs [N, V] = the target's warped distributions at each node):
  Deterministic top-k trees (draft_probs is None), multi-candidate recursive rejection. At an accepted
  node i with children c_1, c_2, ... (in index order) carrying tokens x_1, x_2, ...:
      residual <- target_probs[i]
      for each child c_j:  draw u ~ U[0, 1);  accept c_j iff u < residual(x_j) / sum(residual)
                           on rejection:  residual(x_j) <- 0   (and renormalise)
      if no child was accepted:  next_token ~ residual / sum(residual)
  A deterministic draft is a point mass on x, so this is the standard rule below with
  draft_probs = onehot(x), applied once per sibling to the running residual.
  Stochastic chains (draft_probs given; node i's child x was sampled from draft_probs[i]):
      accept x iff u * draft_probs[i, x] < target_probs[i, x]   (i.e. with min(1, target/draft))
      on rejection:  next_token ~ norm(max(0, target_probs[i] - draft_probs[i]))
  In both cases, if the path reaches a node without children, next_token ~ target_probs[last node].
Either rule emits every token with exactly the target's distribution (Leviathan et al. 2023;
SpecInfer / EAGLE for the multi-candidate form). All randomness comes from the explicit generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dream.sampling import sample
from dream.tree import Tree


@dataclass(frozen=True)
class VerifyResult:
    accepted: Tensor     # [k] long, node indices of the accepted path, root first (root always accepted)
    next_token: int      # the target's bonus / resampled token after the path


def verify_greedy(tree: Tree, target_logits: Tensor) -> VerifyResult:
    """target_logits [N, V]: the target's logits at every tree node."""
    # One [N] transfer: the tree is a small control structure that lives on the CPU.
    target_choice = target_logits.argmax(-1).to(tree.tokens.device)              # [N]
    correct = tree.tokens == target_choice[tree.parents.clamp(min=0)]           # [N]; root reads itself
    correct[0] = True
    on_correct_path = ~(tree.ancestors & ~correct).any(-1)                      # [N]
    # Siblings carry distinct tokens in a valid tree, so the correct nodes form one path.
    last = int((tree.depths * on_correct_path).argmax())
    accepted = tree.ancestors[last].nonzero().flatten()                         # parents first = root first
    return VerifyResult(accepted, int(target_choice[last]))


def verify_sampling(tree: Tree, target_probs: Tensor, generator: torch.Generator) -> VerifyResult:
    """target_probs [N, V]: the target's sampling distribution at every tree node."""
    children = _children(tree.parents.tolist())
    tokens = tree.tokens.tolist()
    path = [0]
    while True:
        node = path[-1]
        if not children[node]:
            return _result(path, sample(target_probs[node], generator))
        if tree.draft_probs is None:
            child, residual = _try_deterministic(children[node], tokens, target_probs[node], generator)
        else:
            child, residual = _try_sampled(children[node], tokens, target_probs[node],
                                           tree.draft_probs[node].to(target_probs.device), generator)
        if child is None:
            return _result(path, sample(residual, generator))
        path.append(child)


def _try_deterministic(children: list[int], tokens: list[int], target_probs: Tensor,
                       generator: torch.Generator) -> tuple[int | None, Tensor]:
    """Try the children in order; return the accepted one, or None and the residual to sample from."""
    residual = target_probs.clone()                                              # [V]
    for child in children:
        x = tokens[child]
        if _uniform(generator) * float(residual.sum()) < float(residual[x]):
            return child, residual
        residual[x] = 0.0
    return None, residual


def _try_sampled(children: list[int], tokens: list[int], target_probs: Tensor, draft_probs: Tensor,
                 generator: torch.Generator) -> tuple[int | None, Tensor]:
    if len(children) != 1:
        raise ValueError("a tree with draft_probs must be a chain (one sampled child per node)")
    x = tokens[children[0]]
    if _uniform(generator) * float(draft_probs[x]) < float(target_probs[x]):
        return children[0], target_probs
    residual = (target_probs - draft_probs).clamp(min=0)
    # All zero only if target_probs == draft_probs up to rounding, where rejection itself is a rounding
    # artefact; the target distribution is then the exact answer.
    return None, residual if float(residual.sum()) > 0 else target_probs


def _children(parents: list[int]) -> list[list[int]]:
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents[1:], start=1):
        children[parent].append(node)
    return children


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _result(path: list[int], next_token: int) -> VerifyResult:
    return VerifyResult(torch.tensor(path, dtype=torch.long), next_token)
