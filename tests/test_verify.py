"""Verifier: hand-built cases with exact answers, seeded determinism, and chi-square goodness of fit of
the emitted tokens against the target distribution (with a negative control that must fail)."""

from __future__ import annotations


import dataclasses
from collections import Counter
from typing import Callable
import zlib

import pytest
import torch
from scipy.stats import chisquare

from dream.tree import Tree, TreeConfig, build_tree, chain_tree, tree_from_parents
from dream.verify import VerifyResult, verify_greedy, verify_sampling

V = 6
# root 5 -> {node 1: token 1, node 2: token 2}; node 1 -> node 3: token 3; node 2 -> node 4: token 4
TREE = tree_from_parents(torch.tensor([5, 1, 2, 3, 4]), torch.tensor([-1, 0, 0, 1, 2]))


def one_hot_logits(choices: list[int]) -> torch.Tensor:
    """[N, V] logits whose argmax at node i is choices[i]."""
    logits = torch.randn(len(choices), V, generator=torch.Generator().manual_seed(0))
    logits[torch.arange(len(choices)), torch.tensor(choices)] = 10.0
    return logits


def one_hot_probs(choices: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(choices), V).float()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.one_thread


# ----------------------------------------------------------------------------------------- greedy

def test_greedy_reject_at_first_node():
    result = verify_greedy(TREE, one_hot_logits([0, 3, 4, 0, 0]))
    assert result.accepted.tolist() == [0] and result.next_token == 0


def test_greedy_all_accepted_plus_bonus():
    chain = chain_tree(torch.tensor([5, 1, 3]))
    result = verify_greedy(chain, one_hot_logits([1, 3, 2]))
    assert result.accepted.tolist() == [0, 1, 2] and result.next_token == 2


def test_greedy_branching_pick():
    result = verify_greedy(TREE, one_hot_logits([2, 3, 4, 1, 0]))
    assert result.accepted.tolist() == [0, 2, 4] and result.next_token == 0
    # The first branch is right at depth 1 only: its child is wrong.
    result = verify_greedy(TREE, one_hot_logits([1, 0, 4, 1, 0]))
    assert result.accepted.tolist() == [0, 1] and result.next_token == 0


def greedy_walk(tree: Tree, target_logits: torch.Tensor) -> tuple[list[int], int]:
    """Reference: from the root, step to the child holding the target's argmax until none does."""
    path = [0]
    while True:
        choice = int(target_logits[path[-1]].argmax())
        match = [c for c in range(tree.num_nodes) if tree.parents[c] == path[-1] and tree.tokens[c] == choice]
        if not match:
            return path, choice
        path.append(match[0])


@pytest.mark.parametrize("seed", range(20))
def test_greedy_matches_reference_walk(seed):
    g = gen(seed)
    tree = build_tree(0, torch.randn(V, generator=g), lambda t, p: torch.randn(t.shape[0], V, generator=g),
                      TreeConfig(top_k=3, depth=4, total_tokens=12))
    target_logits = torch.randn(tree.num_nodes, V, generator=g)        # V = 6: matches are frequent
    result = verify_greedy(tree, target_logits)
    assert (result.accepted.tolist(), result.next_token) == greedy_walk(tree, target_logits)


def test_greedy_root_only_tree():
    result = verify_greedy(chain_tree(torch.tensor([3])), one_hot_logits([4]))
    assert result.accepted.tolist() == [0] and result.next_token == 4


# --------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("seed", range(5))
def test_sampling_reject_at_first_node(seed):
    # The target gives the drafted tokens 1 and 2 no mass: both rejected, next token from the residual.
    target_probs = torch.softmax(torch.randn(5, V), -1)
    target_probs[0] = torch.tensor([0.5, 0.0, 0.0, 0.25, 0.25, 0.0])
    result = verify_sampling(TREE, target_probs, gen(seed))
    assert result.accepted.tolist() == [0] and result.next_token in (0, 3, 4)


@pytest.mark.parametrize("seed", range(5))
def test_sampling_all_accepted_plus_bonus(seed):
    result = verify_sampling(TREE, one_hot_probs([2, 3, 4, 1, 5]), gen(seed))
    assert result.accepted.tolist() == [0, 2, 4] and result.next_token == 5
    chain = chain_tree(torch.tensor([5, 1, 3]), draft_probs=torch.rand(3, V))
    result = verify_sampling(chain, one_hot_probs([1, 3, 0]), gen(seed))
    assert result.accepted.tolist() == [0, 1, 2] and result.next_token == 0


def test_sampling_zero_draft_probability():
    target_probs = torch.full((2, V), 1.0 / V)
    target_probs[0] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    draft_one_hot = torch.zeros(2, V)
    draft_one_hot[0, 1] = 1.0
    chain = chain_tree(torch.tensor([5, 1]), draft_probs=draft_one_hot)
    outcomes = [verify_sampling(chain, target_probs, gen(s)) for s in range(200)]
    rejected = [r for r in outcomes if r.accepted.tolist() == [0]]
    # Accepted with min(1, 0.5 / 1); a rejection must emit token 0, the only token with
    # target_probs > draft_probs (token 0 has zero draft probability).
    assert 60 < len(rejected) < 140
    assert all(r.next_token == 0 for r in rejected)
    # A drafted token with zero draft probability but target mass is always accepted (ratio = inf).
    zero_draft = chain_tree(torch.tensor([5, 0]), draft_probs=draft_one_hot)
    assert all(verify_sampling(zero_draft, target_probs, gen(s)).accepted.tolist() == [0, 1] for s in range(20))
    # A drafted token without target mass is never accepted, in either kind of tree.
    no_target = chain_tree(torch.tensor([5, 3]), draft_probs=torch.full((2, V), 1.0 / V))
    assert all(verify_sampling(no_target, target_probs, gen(s)).next_token in (0, 1) for s in range(20))
    deterministic = chain_tree(torch.tensor([5, 3]))
    assert all(verify_sampling(deterministic, target_probs, gen(s)).accepted.tolist() == [0] for s in range(20))


def test_sampling_seeded_determinism():
    target_probs = torch.softmax(torch.randn(5, V, generator=gen(3)), -1)
    first = [verify_sampling(TREE, target_probs, gen(s)) for s in range(30)]
    again = [verify_sampling(TREE, target_probs, gen(s)) for s in range(30)]
    assert [(r.accepted.tolist(), r.next_token) for r in first] == [(r.accepted.tolist(), r.next_token) for r in again]
    assert len({(tuple(r.accepted.tolist()), r.next_token) for r in first}) > 3    # seeds do matter


def test_sampling_chain_with_siblings_is_rejected():
    with pytest.raises(ValueError, match="chain"):
        verify_sampling(dataclasses.replace(TREE, draft_probs=torch.rand(5, V)), torch.rand(5, V), gen())


# ------------------------------------------------------------------------------ goodness of fit

VOCAB = 8


class World:
    """Target and draft conditional distributions over a small vocabulary, keyed by the path so far."""

    def __init__(self, draft: str, seed: int = 0) -> None:
        self.draft, self.seed = draft, seed
        self.target_support = slice(0, VOCAB // 2) if draft == "disjoint" else slice(0, VOCAB)
        self._memo: dict[tuple, object] = {}

    def _memoised(self, key: tuple, make: Callable[[], object]):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def _logits(self, kind: str, path: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(VOCAB, generator=gen(stable_seed(self.seed, kind, *path)))

    def target_probs(self, path: tuple[int, ...]) -> torch.Tensor:
        def make() -> torch.Tensor:
            logits = torch.full((VOCAB,), -float("inf"))
            logits[self.target_support] = 0.8 * self._logits("target", path)[self.target_support]
            return torch.softmax(logits, -1)
        return self._memoised(("target", path), make)

    def draft_logits(self, path: tuple[int, ...]) -> torch.Tensor:
        def make() -> torch.Tensor:
            if self.draft == "good":
                return torch.log(self.target_probs(path)) + 0.3 * self._logits("noise", path)
            if self.draft == "bad":
                return 2.0 * self._logits("draft", path)
            logits = torch.full((VOCAB,), -float("inf"))
            logits[VOCAB // 2:] = self._logits("draft", path)[VOCAB // 2:]
            return logits
        return self._memoised(("draft", path), make)

    def draft_round(self, prefix: tuple[int, ...], cfg: TreeConfig, temperature: float,
                    generator: torch.Generator) -> tuple[Tree, torch.Tensor]:
        """A tree under the last token of `prefix`, and target_probs [N, VOCAB] at its nodes.
        Deterministic trees depend only on the prefix and are built once."""
        if temperature == 0:
            return self._memoised(("tree", prefix, cfg), lambda: self._build(prefix, cfg, 0.0, None))
        return self._build(prefix, cfg, temperature, generator)

    def _build(self, prefix, cfg, temperature, generator) -> tuple[Tree, torch.Tensor]:
        paths = [prefix]

        def expand(tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
            new = [paths[p] + (t,) for t, p in zip(tokens.tolist(), parents.tolist())]
            paths.extend(new)
            return torch.stack([self.draft_logits(path) for path in new])

        tree = build_tree(prefix[-1], self.draft_logits(prefix), expand, cfg, temperature=temperature,
                          generator=generator)
        node_paths = [prefix]
        for i in range(1, tree.num_nodes):
            node_paths.append(node_paths[int(tree.parents[i])] + (int(tree.tokens[i]),))
        return tree, torch.stack([self.target_probs(path) for path in node_paths])


VerifyFn = Callable[[Tree, torch.Tensor, torch.Generator], VerifyResult]


def emit_two(world: World, cfg: TreeConfig, temperature: float, verify: VerifyFn,
             generator: torch.Generator) -> tuple[int, int]:
    """Run rounds from the root token 0 until two tokens are emitted; return them."""
    prefix, emitted = (0,), []
    while len(emitted) < 2:
        tree, target_probs = world.draft_round(prefix, cfg, temperature, generator)
        result = verify(tree, target_probs, generator)
        new = tree.tokens[result.accepted[1:]].tolist() + [result.next_token]
        emitted += new
        prefix += tuple(new)
    return emitted[0], emitted[1]


def chi_square_p(counts: Counter, expected_probs: dict, draws: int) -> float:
    """Pearson chi-square p-value; cells expecting < 5 are pooled, zero-probability cells must be empty."""
    assert all(expected_probs.get(cell, 0.0) > 0 for cell in counts), "emitted a zero-probability token"
    observed, expected, rest_obs, rest_exp = [], [], 0, 0.0
    for cell, prob in expected_probs.items():
        if prob == 0:
            continue
        if prob * draws < 5:
            rest_obs, rest_exp = rest_obs + counts.get(cell, 0), rest_exp + prob * draws
        else:
            observed.append(counts.get(cell, 0))
            expected.append(prob * draws)
    if rest_exp > 0:
        observed.append(rest_obs)
        expected.append(rest_exp)
    scale = sum(observed) / sum(expected)               # removes float rounding of the total
    return float(chisquare(observed, [e * scale for e in expected]).pvalue)


def fit(world: World, cfg: TreeConfig, temperature: float, verify: VerifyFn, draws: int) -> tuple[float, float]:
    """p-values of the first emitted token and of the first two emitted tokens."""
    generator = gen(1234)
    samples = [emit_two(world, cfg, temperature, verify, generator) for _ in range(draws)]
    first = world.target_probs((0,))
    joint = {(a, b): float(first[a] * world.target_probs((0, a))[b])
             for a in range(VOCAB) for b in range(VOCAB)}
    p_first = chi_square_p(Counter(a for a, _ in samples), {a: float(first[a]) for a in range(VOCAB)}, draws)
    p_joint = chi_square_p(Counter(samples), joint, draws)
    return p_first, p_joint


TREE_CFG = TreeConfig(top_k=3, depth=3, total_tokens=7)
CHAIN_CFG = TreeConfig(depth=3, chain=True)
DRAWS = 6000


@pytest.mark.parametrize("draft", ["good", "bad", "disjoint"])
@pytest.mark.parametrize("shape", ["tree", "stochastic_chain"])
def test_emitted_tokens_follow_the_target(draft, shape):
    cfg, temperature = (TREE_CFG, 0.0) if shape == "tree" else (CHAIN_CFG, 1.0)
    p_first, p_joint = fit(World(draft), cfg, temperature, verify_sampling, DRAWS)
    assert p_first > 1e-3 and p_joint > 1e-3


def naive_tree_verify(tree: Tree, target_probs: torch.Tensor, generator: torch.Generator) -> VerifyResult:
    """WRONG on purpose: accepts each child with target_probs(x) without removing rejected tokens."""
    path = [0]
    while True:
        children = [c for c in range(tree.num_nodes) if int(tree.parents[c]) == path[-1]]
        accepted = [c for c in children
                    if float(torch.rand((), generator=generator)) < float(target_probs[path[-1], tree.tokens[c]])]
        if not accepted:
            return VerifyResult(torch.tensor(path), int(torch.multinomial(target_probs[path[-1]], 1, generator=generator)))
        path.append(accepted[0])


def misreported_draft_probs(tree: Tree, target_probs: torch.Tensor, generator: torch.Generator) -> VerifyResult:
    """WRONG on purpose: the verifier is told the chain was drafted from a uniform distribution."""
    uniform = torch.full_like(tree.draft_probs, 1.0 / VOCAB)
    return verify_sampling(dataclasses.replace(tree, draft_probs=uniform), target_probs, generator)


@pytest.mark.parametrize("shape,wrong", [("tree", naive_tree_verify), ("stochastic_chain", misreported_draft_probs)])
def test_negative_control_wrong_rule_fails(shape, wrong):
    cfg, temperature = (TREE_CFG, 0.0) if shape == "tree" else (CHAIN_CFG, 1.0)
    p_first, _ = fit(World("bad"), cfg, temperature, wrong, DRAWS)
    assert p_first < 1e-6


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (Python salts hash() of strings per process)."""
    return zlib.crc32(repr(parts).encode())
