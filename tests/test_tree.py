"""Tree builder: structure invariants, the expand-callback protocol, and agreement with a slow reference."""

from __future__ import annotations

import zlib

import pytest
import torch

from dream.tree import Tree, TreeConfig, build_tree, chain_tree, prune_depth, tree_from_parents

V = 12


class PathDraft:
    """A fake draft whose logits are a fixed random function of the path below the root.

    It resolves the forwarded-node ids of the expand protocol to paths itself, so a builder that
    passes wrong parent ids gets different logits and a different tree.
    """

    def __init__(self, seed: int, vocab: int = V, vocab_map: torch.Tensor | None = None) -> None:
        self.seed, self.vocab, self.vocab_map = seed, vocab, vocab_map
        self.paths: list[tuple[int, ...]] = [()]            # forwarded id -> path of target ids
        self.calls: list[int] = []                          # rows per expand call

    def logits(self, path: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(zlib.crc32(repr((self.seed, *path)).encode()))
        return 3 * torch.randn(self.vocab, generator=gen)

    def expand(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        self.calls.append(tokens.shape[0])
        new = [self.paths[p] + (t,) for t, p in zip(tokens.tolist(), parents.tolist())]
        self.paths.extend(new)
        return torch.stack([self.logits(path) for path in new])

    def build(self, cfg: TreeConfig, **kw) -> Tree:
        return build_tree(7, self.logits(()), self.expand, cfg, vocab_map=self.vocab_map, **kw)


def node_paths(tree: Tree) -> list[tuple[int, ...]]:
    paths: list[tuple[int, ...]] = [()]
    for i in range(1, tree.num_nodes):
        paths.append(paths[int(tree.parents[i])] + (int(tree.tokens[i]),))
    return paths


def reference_paths(draft: PathDraft, top_k: int, depth: int, total: int) -> set[tuple[int, ...]]:
    """EAGLE-2 expansion written out over explicit paths, with Python sorting."""
    def children(path, score):
        logp = torch.log_softmax(draft.logits(path), -1)
        best = sorted(range(draft.vocab), key=lambda v: -float(logp[v]))[:top_k]
        return [(score + logp[v], path + (v,)) for v in best]

    frontier = children((), torch.tensor(0.0))
    pool = list(frontier)
    for _ in range(depth - 1):
        kids = [kid for score, path in frontier for kid in children(path, score)]
        pool += kids
        frontier = sorted(kids, key=lambda c: -float(c[0]))[:top_k]
    return {path for _, path in sorted(pool, key=lambda c: -float(c[0]))[:total]}


def check_structure(tree: Tree) -> None:
    n = tree.num_nodes
    assert tree.parents[0] == -1 and tree.depths[0] == 0
    for i in range(1, n):
        parent = int(tree.parents[i])
        assert 0 <= parent < i
        assert tree.depths[i] == tree.depths[parent] + 1
        expected = tree.ancestors[parent].clone()
        expected[i] = True
        assert torch.equal(tree.ancestors[i], expected)
    assert torch.equal(tree.ancestors[0], torch.arange(n) == 0)
    for i in range(n):
        siblings = [int(tree.tokens[j]) for j in range(1, n) if tree.parents[j] == i]
        assert len(siblings) == len(set(siblings))


@pytest.mark.parametrize("field", ["top_k", "depth", "total_tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_tree_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TreeConfig(**{field: value})


@pytest.mark.parametrize("top_k,depth,total", [(4, 4, 16), (3, 3, 5), (2, 5, 100), (4, 1, 2), (4, 1, 10), (1, 4, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_matches_reference(top_k, depth, total, seed):
    draft = PathDraft(seed)
    tree = draft.build(TreeConfig(top_k=top_k, depth=depth, total_tokens=total))
    check_structure(tree)
    pool = top_k + (depth - 1) * top_k * top_k
    assert tree.num_nodes == 1 + min(total, pool)
    assert set(node_paths(tree)[1:]) == reference_paths(draft, top_k, depth, total)
    assert int(tree.depths.max()) <= depth
    assert draft.calls == [top_k] * (depth - 1)          # the frontier, never the last level
    assert tree.draft_probs is None and tree.tokens[0] == 7


def test_total_tokens_larger_than_pool_keeps_everything():
    tree = PathDraft(0).build(TreeConfig(top_k=3, depth=3, total_tokens=1000))
    assert tree.num_nodes == 1 + 3 + 2 * 9
    assert torch.bincount(tree.depths).tolist() == [1, 3, 9, 9]


def test_depth_one_is_the_root_top_k():
    draft = PathDraft(1)
    tree = draft.build(TreeConfig(top_k=5, depth=1, total_tokens=3))
    assert draft.calls == []
    assert sorted(tree.tokens[1:].tolist()) == sorted(draft.logits(()).topk(3).indices.tolist())
    assert tree.parents.tolist() == [-1, 0, 0, 0]


def test_top_k_one_is_the_chain():
    top1 = PathDraft(2).build(TreeConfig(top_k=1, depth=5, total_tokens=5))
    chain = PathDraft(2).build(TreeConfig(top_k=3, depth=5, total_tokens=2, chain=True))
    for a, b in zip((top1.tokens, top1.parents, top1.depths, top1.ancestors),
                    (chain.tokens, chain.parents, chain.depths, chain.ancestors)):
        assert torch.equal(a, b)
    assert chain.parents.tolist() == [-1, 0, 1, 2, 3, 4]
    path: tuple[int, ...] = ()
    for _ in range(5):
        path += (int(PathDraft(2).logits(path).argmax()),)
    assert chain.tokens[1:].tolist() == list(path)


def test_vocab_map_translates_tokens():
    vocab_map = torch.arange(V) * 3 + 100                  # draft id -> target id
    draft = PathDraft(3, vocab_map=vocab_map)
    tree = draft.build(TreeConfig(top_k=2, depth=3, total_tokens=6))
    check_structure(tree)
    assert all(int(t) >= 100 and (int(t) - 100) % 3 == 0 for t in tree.tokens[1:])
    assert all(t >= 100 for path in draft.paths[1:] for t in path)   # expand received target ids


def test_ties_keep_the_tree_closed_under_ancestors():
    # Uniform logits: every candidate of a level ties with its cousins.
    tree = build_tree(0, torch.zeros(V), lambda t, p: torch.zeros(t.shape[0], V), TreeConfig(3, 3, 7))
    check_structure(tree)
    assert tree.depths.tolist() == [0, 1, 1, 1, 2, 2, 2, 2]

    # One finite logit per row: that child's log-prob is 0, so it ties with its parent, and the other
    # children all tie at -inf.
    def one_hot(tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.full((tokens.shape[0], V), -float("inf"))
        logits[torch.arange(tokens.shape[0]), (tokens + 1) % V] = 0.0
        return logits

    for total in (2, 3, 7, 20):
        tree = build_tree(0, one_hot(torch.tensor([0]))[0], lambda t, p: one_hot(t), TreeConfig(3, 3, total))
        check_structure(tree)
        certain_chain = [(1,), (1, 2), (1, 2, 3)][:total]                      # log-prob 0 all along
        assert set(certain_chain) <= set(node_paths(tree))


def test_stochastic_chain_records_draft_probs():
    draft = PathDraft(4)
    gen = torch.Generator().manual_seed(0)
    tree = draft.build(TreeConfig(depth=3, chain=True), temperature=0.7, generator=gen)
    check_structure(tree)
    paths = node_paths(tree)
    assert tree.draft_probs.shape == (4, V)
    for i in range(3):
        assert torch.allclose(tree.draft_probs[i], torch.softmax(draft.logits(paths[i]) / 0.7, -1))
    assert torch.equal(tree.draft_probs[3], torch.zeros(V))
    again = PathDraft(4).build(TreeConfig(depth=3, chain=True), temperature=0.7,
                               generator=torch.Generator().manual_seed(0))
    assert torch.equal(tree.tokens, again.tokens)


def test_stochastic_chain_scatters_through_vocab_map():
    vocab_map = torch.randperm(20, generator=torch.Generator().manual_seed(0))[:V]
    draft = PathDraft(5, vocab_map=vocab_map)
    with pytest.raises(ValueError, match="vocab_size"):
        draft.build(TreeConfig(depth=2, chain=True), temperature=1.0)
    tree = draft.build(TreeConfig(depth=2, chain=True), temperature=1.0, vocab_size=20,
                       generator=torch.Generator().manual_seed(1))
    assert tree.draft_probs.shape == (3, 20)
    assert torch.allclose(tree.draft_probs[0, vocab_map], torch.softmax(draft.logits(()), -1))
    assert tree.draft_probs[0].sum().item() == pytest.approx(1.0)
    assert all(int(t) in vocab_map.tolist() for t in tree.tokens[1:])


def test_negative_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        PathDraft(0).build(TreeConfig(), temperature=-1.0)


def test_tree_from_parents_validates_and_derives():
    tree = tree_from_parents(torch.tensor([5, 1, 2, 3]), torch.tensor([-1, 0, 0, 2]))
    assert tree.depths.tolist() == [0, 1, 1, 2]
    assert tree.ancestors[3].tolist() == [True, False, True, True]
    for bad in ([0, 0, 0], [-1, 1, 0], [-1, 0, 3]):
        with pytest.raises(ValueError):
            tree_from_parents(torch.tensor([1, 2, 3]), torch.tensor(bad))
    chain = chain_tree(torch.tensor([4, 5, 6]))
    reference = tree_from_parents(torch.tensor([4, 5, 6]), torch.tensor([-1, 0, 1]))
    assert torch.equal(chain.ancestors, reference.ancestors) and torch.equal(chain.depths, reference.depths)


def test_prune_depth_keeps_a_closed_subtree():
    tree = PathDraft(6).build(TreeConfig(top_k=3, depth=4, total_tokens=20))
    for max_depth in range(5):
        pruned = prune_depth(tree, max_depth)
        check_structure(pruned)
        assert node_paths(pruned) == [p for p in node_paths(tree) if len(p) <= max_depth]
    chain = PathDraft(6).build(TreeConfig(depth=4, chain=True), temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert torch.equal(prune_depth(chain, 2).draft_probs, chain.draft_probs[:3])


def test_tree_refuses_inconsistent_structure():
    good = tree_from_parents(torch.tensor([7, 8, 9, 10]), torch.tensor([-1, 0, 0, 1]))
    fields = dict(tokens=good.tokens, parents=good.parents, depths=good.depths, ancestors=good.ancestors)
    Tree(**fields)                                                         # the consistent one passes
    cases = {
        "parent": {"parents": torch.tensor([-1, 0, 3, 1])},                  # a parent after its child
        "depths": {"depths": torch.tensor([0, 1, 2, 2])},                    # node 2 hangs off the root
        "ancestors": {"ancestors": good.ancestors.clone().fill_diagonal_(False)},
        "shape": {"tokens": good.tokens[:3]},
    }
    sibling = good.ancestors.clone()
    sibling[3, 2] = True                                                   # node 3 would see its uncle
    cases["ancestors"] = {"ancestors": sibling}
    for what, change in cases.items():
        with pytest.raises(ValueError, match="Tree"):
            Tree(**{**fields, **change})
