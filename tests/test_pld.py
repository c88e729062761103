"""Prompt-lookup proposer: n-gram matching, fallbacks, and never proposing visual tokens."""

from __future__ import annotations

import pytest
import torch

from dream.pld import PromptLookupProposer
from dream.proposer import AcceptedStep, PromptState
from fixtures import VLM_FAMILIES, tiny_image

IMG = 99


def prompt_state(ids: list[int], visual: list[int] = ()) -> PromptState:
    n = len(ids)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[list(visual)] = True
    return PromptState(torch.tensor(ids), mask, torch.zeros(n, 4), torch.zeros(n, 4), None)


def proposed(pld: PromptLookupProposer, ids: list[int], root: int, visual: list[int] = ()) -> list[int]:
    pld.begin(prompt_state(ids, visual))
    tree = pld.propose(root)
    assert tree.parents.tolist() == list(range(-1, tree.num_nodes - 1))      # always a chain
    assert tree.draft_probs is None and int(tree.tokens[0]) == root
    return tree.tokens[1:].tolist()


def test_longest_ngram_match_is_copied():
    assert proposed(PromptLookupProposer(num_tokens=3), [1, 2, 3, 4, 5, 6, 2], 3) == [4, 5, 6]


def test_falls_back_to_shorter_ngrams():
    # [9, 2, 3] never occurred, [2, 3] did.
    assert proposed(PromptLookupProposer(num_tokens=2), [2, 3, 7, 8, 9, 2], 3) == [7, 8]
    # Only the root itself matches.
    assert proposed(PromptLookupProposer(num_tokens=2), [3, 5, 6, 1], 3) == [5, 6]
    # min_ngram=2 refuses the unigram match.
    assert proposed(PromptLookupProposer(num_tokens=2, min_ngram=2), [3, 5, 6, 1], 3) == []


def test_no_match_gives_the_root_alone():
    assert proposed(PromptLookupProposer(), [1, 2, 3], 4) == []
    assert proposed(PromptLookupProposer(), [], 4) == []


def test_continuation_is_cut_at_the_end_of_the_context():
    assert proposed(PromptLookupProposer(num_tokens=5), [1, 2, 1], 2) == [1, 2]


def test_prefers_the_longest_then_the_most_recent_continuation():
    # In a repeated run the most recent match overlaps the suffix; an older one offers the full length.
    assert proposed(PromptLookupProposer(num_tokens=3, max_ngram=2), [5, 5, 5, 5, 5], 5) == [5, 5, 5]
    # Two complete continuations: the most recent wins.
    assert proposed(PromptLookupProposer(num_tokens=2, max_ngram=1), [1, 7, 7, 1, 8, 8, 0], 1) == [8, 8]


def test_accept_extends_the_context():
    pld = PromptLookupProposer(num_tokens=2, max_ngram=2)
    pld.begin(prompt_state([1, 2]))
    assert pld.propose(3).num_nodes == 1
    pld.accept(AcceptedStep(torch.tensor([3, 4, 5]), torch.zeros(3, 4), next_token=3))
    assert pld.propose(3).tokens.tolist() == [3, 4, 5]


def test_never_copies_visual_positions():
    # The text before the image block matches the context's end: its continuation is image tokens.
    ids = [10, 11, IMG, IMG, IMG, IMG, 12, 10]
    visual = [2, 3, 4, 5]
    assert proposed(PromptLookupProposer(num_tokens=2), ids, 11, visual) == []
    # Without the image information the same lookup would copy the placeholders.
    assert proposed(PromptLookupProposer(num_tokens=2), ids, 11) == [IMG, IMG]
    # The image token id alone is enough, even where the visual mask is not set.
    assert proposed(PromptLookupProposer(num_tokens=2, image_token_id=IMG), ids, 11) == []
    # A clean older match is used instead of the visual one.
    clean = [10, 11, 20, 21, 5, *ids]
    assert proposed(PromptLookupProposer(num_tokens=2), clean, 11, [v + 5 for v in visual]) == [20, 21]


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_real_prompt_never_proposes_image_tokens(tiny_target, family):
    target = tiny_target(family)
    inputs = target.build_inputs([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                                 [tiny_image(0)])
    ids, visual = inputs.input_ids[0], inputs.visual_mask[0]
    visual_ids = set(ids[visual].tolist())
    features = torch.zeros(len(ids), 1)
    # Root = the token right before the image block, so the lookup lands on image tokens.
    root = int(ids[int(visual.nonzero()[0]) - 1])
    blind = PromptLookupProposer(num_tokens=3, max_ngram=1)
    blind.begin(PromptState(ids, torch.zeros_like(visual), features, features, None))
    assert visual_ids & set(blind.propose(root).tokens[1:].tolist())             # the trap is real
    pld = PromptLookupProposer(num_tokens=3, max_ngram=1, image_token_id=target.image_token_id)
    pld.begin(PromptState(ids, visual, features, features, None))
    assert not visual_ids & set(pld.propose(root).tokens[1:].tolist())


@pytest.mark.parametrize("kwargs", [dict(num_tokens=0), dict(min_ngram=0), dict(min_ngram=3, max_ngram=2)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        PromptLookupProposer(**kwargs)
