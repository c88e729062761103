"""End to end on the tiny targets: greedy speculative output equals the target's own greedy output token
for token (the adapter's plain loop and HF generate as oracles), on every family, with several proposers
and tree shapes; metrics checked by hand; stop rules, streaming, seeded sampling and bad settings."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dream.engine import GenerationResult, generate
from dream.metrics import aggregate
from dream.pld import PromptLookupProposer
from dream.proposer import AcceptedStep, PrefillRequest, PromptState
from dream.sampling import SamplingConfig, target_probs
from dream.tree import Tree, TreeConfig, build_tree, chain_tree
from fixtures import FAMILIES, VLM_FAMILIES, stock_model, tiny_image
from proposers import TREES, OracleProposer, RandomProposer, hf_greedy

MAX_NEW = 24
PROMPTS = ("Describe it.", "one two one two one two")


pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.one_thread


def build_prompt(target, family: str, text: str):
    images = [tiny_image(0, (48, 32))] if family in VLM_FAMILIES else []
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
    return target.build_inputs([{"role": "user", "content": content}], images)


def proposers(target, future: list[int]) -> dict[str, Any]:
    vocab = target.vocab_size
    out: dict[str, Any] = {"pld": PromptLookupProposer(num_tokens=4, image_token_id=target.image_token_id),
                           "random": RandomProposer(TREES[0], vocab)}
    for i, cfg in enumerate(TREES):
        out[f"oracle{i}"] = OracleProposer(future, cfg, vocab)
        out[f"noisy{i}"] = OracleProposer(future, cfg, vocab, hit=2.5, seed=i)
    return out


@pytest.fixture(scope="module")
def greedy_reference(tiny_target, tiny_target_path):
    """(family, prompt) -> (target, inputs, plain-loop result), checked once against HF generate."""
    done: dict[tuple[str, str], tuple] = {}

    def get(family: str, text: str):
        if (family, text) not in done:
            target = tiny_target(family)
            inputs = build_prompt(target, family, text)
            plain = generate(target, inputs, max_new_tokens=MAX_NEW)
            assert plain.token_ids == hf_greedy(stock_model(tiny_target_path(family)), inputs, MAX_NEW)
            done[family, text] = target, inputs, plain
        return done[family, text]

    return get


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_speculative_equals_plain_greedy(greedy_reference, family):
    for text in PROMPTS:
        target, inputs, plain = greedy_reference(family, text)
        for name, proposer in proposers(target, plain.token_ids).items():
            result = generate(target, inputs, proposer=proposer, max_new_tokens=MAX_NEW)
            assert result.token_ids == plain.token_ids, (name, text)
            assert result.text == plain.text
            check_metric_identities(result)


def check_metric_identities(result: GenerationResult) -> None:
    m = result.metrics
    assert m.prefill_forwards == 1
    assert m.tau == pytest.approx(1 + sum(m.acceptance_by_depth))
    # The first token comes from the prefill; rounds commit `committed` tokens before truncation.
    assert m.committed >= m.num_tokens - 1 and (m.target_forwards > 0) == (m.num_tokens > 1)
    assert m.prefill_s > 0 and m.other_s >= 0
    assert (m.draft_s > 0 and m.verify_s > 0) == (m.target_forwards > 0)     # a round drafts and verifies


def test_perfect_drafter_tau_by_hand(greedy_reference):
    target, inputs, plain = greedy_reference("llava", PROMPTS[0])
    depth, rounds = 3, 5
    budget = 1 + rounds * (depth + 1)                      # the prefill's token, then full rounds
    assert len(plain.token_ids) == MAX_NEW >= budget       # no EOS early in this reference
    for cfg in (TreeConfig(depth=depth, chain=True), TreeConfig(top_k=2, depth=depth, total_tokens=6)):
        result = generate(target, inputs, proposer=OracleProposer(plain.token_ids, cfg, target.vocab_size),
                          max_new_tokens=budget)
        m = result.metrics
        assert result.token_ids == plain.token_ids[:budget]
        assert (m.target_forwards, m.committed, m.num_tokens) == (rounds, rounds * (depth + 1), budget)
        assert m.tau == depth + 1 and m.acceptance_by_depth == (1.0, 1.0, 1.0)
    # A budget that ends inside a round: the last tree is cut to what can still be emitted.
    result = generate(target, inputs, proposer=OracleProposer(plain.token_ids, TreeConfig(depth=3, chain=True),
                                                              target.vocab_size), max_new_tokens=7)
    assert result.token_ids == plain.token_ids[:7]
    assert (result.metrics.target_forwards, result.metrics.committed) == (2, 6)
    # The plain loop: one forward per token after the prefill's.
    assert (plain.metrics.target_forwards, plain.metrics.tau, plain.metrics.acceptance_by_depth) == (MAX_NEW - 1, 1.0, ())


def test_random_drafter_rejects_and_aggregate_sums(greedy_reference):
    target, inputs, plain = greedy_reference("llama", PROMPTS[1])
    results = [generate(target, inputs, proposer=RandomProposer(cfg, target.vocab_size), max_new_tokens=MAX_NEW)
               for cfg in (TreeConfig(), TreeConfig(depth=4, chain=True))]
    total = aggregate([r.metrics for r in results] + [plain.metrics])
    assert total.generations == 3 and total.num_tokens == sum(len(r.token_ids) for r in results) + MAX_NEW
    assert total.target_forwards == sum(r.metrics.target_forwards for r in results) + MAX_NEW - 1
    assert total.tau == pytest.approx(total.committed / total.target_forwards)
    assert all(r.metrics.tau < 1.5 for r in results)
    assert len(results[1].metrics.accepted_at_depth) == 4          # every tried depth reported, even at 0


class EosAt:
    """The adapter with a different EOS set: shows that runs accepted past EOS are truncated."""

    def __init__(self, target, eos: int) -> None:
        self._target, self.eos_token_ids = target, {eos}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_eos_and_stop_strings_truncate_like_plain(greedy_reference, family):
    target, inputs, plain = greedy_reference(family, PROMPTS[0])
    tokens = plain.token_ids
    eos = tokens[5]
    stopped = EosAt(target, eos)
    expected = tokens[:tokens.index(eos) + 1]
    oracle = OracleProposer(tokens, TreeConfig(depth=4, chain=True), target.vocab_size)
    assert generate(stopped, inputs, max_new_tokens=MAX_NEW).token_ids == expected
    assert generate(stopped, inputs, proposer=oracle, max_new_tokens=MAX_NEW).token_ids == expected

    stop = plain.text[len(target.tokenizer.decode(tokens[:7], skip_special_tokens=True)):][:2]
    if not stop.strip("\ufffd"):
        pytest.skip("the reference text has no clean characters to stop on")
    plain_stop = generate(target, inputs, max_new_tokens=MAX_NEW, stop_strings=[stop])
    oracle = OracleProposer(tokens, TreeConfig(depth=4, chain=True), target.vocab_size)
    spec_stop = generate(target, inputs, proposer=oracle, max_new_tokens=MAX_NEW, stop_strings=stop)
    assert spec_stop.token_ids == plain_stop.token_ids == tokens[:len(plain_stop.token_ids)]
    assert stop in plain_stop.text
    assert stop not in target.tokenizer.decode(plain_stop.token_ids[:-1], skip_special_tokens=True)


def test_streaming_reports_every_token_once(greedy_reference):
    target, inputs, plain = greedy_reference("qwen2_vl", PROMPTS[1])
    for proposer in (None, PromptLookupProposer(image_token_id=target.image_token_id)):
        chunks: list[tuple[list[int], str]] = []
        result = generate(target, inputs, proposer=proposer, max_new_tokens=MAX_NEW,
                          on_tokens=lambda ids, text: chunks.append((ids, text)))
        assert [t for ids, _ in chunks for t in ids] == result.token_ids == plain.token_ids
        assert "".join(text for _, text in chunks) == result.text
    assert any(len(ids) > 1 for ids, _ in chunks)                  # several tokens per round were streamed


@pytest.mark.parametrize("family", ["llava", "gemma3_text"])
def test_sampling_is_seeded(greedy_reference, family):
    target, inputs, _ = greedy_reference(family, PROMPTS[0])
    sampling = SamplingConfig(temperature=0.9, top_k=50, top_p=0.95)
    chain = TreeConfig(depth=3, chain=True)
    makers = {
        "plain": lambda: None,
        "pld": lambda: PromptLookupProposer(image_token_id=target.image_token_id),
        "tree": lambda: RandomProposer(TreeConfig(top_k=3, depth=3, total_tokens=8), target.vocab_size),
        "stochastic_chain": lambda: RandomProposer(chain, target.vocab_size, temperature=1.0),
    }
    for name, make in makers.items():
        runs = [generate(target, inputs, proposer=make(), sampling=sampling, max_new_tokens=12, seed=seed)
                for seed in (0, 0, 1)]
        assert runs[0].token_ids == runs[1].token_ids, name
        assert runs[0].token_ids != runs[2].token_ids, name


class TableProposer:
    """Drafts the root's children from a fixed table of logits per root token; random elsewhere."""

    def __init__(self, table: dict[int, torch.Tensor], vocab_size: int, cfg: TreeConfig, temperature: float):
        self.table, self.vocab_size, self.cfg, self.temperature = table, vocab_size, cfg, temperature
        self.generator = torch.Generator().manual_seed(0)

    def prefill_request(self) -> PrefillRequest: return PrefillRequest()

    def begin(self, prompt: PromptState) -> None: pass

    def accept(self, step: AcceptedStep) -> None: pass

    def propose(self, root_token: int) -> Tree:
        def random_logits(n: int) -> torch.Tensor:
            return torch.randn(n, self.vocab_size, generator=self.generator)

        root_logits = self.table.get(root_token, random_logits(1)[0])
        return build_tree(root_token, root_logits, lambda t, p: random_logits(t.shape[0]), self.cfg,
                          temperature=self.temperature, generator=self.generator)


@torch.no_grad()
def next_logits(target, inputs, tokens: list[int]) -> torch.Tensor:
    """The target's logits after prompt + tokens, by prefill and plain one-token steps."""
    cache = target.new_cache()
    logits = target.prefill(inputs, cache).logits[0, -1]
    one, zero = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long)
    for token in tokens:
        logits = target.verify(torch.tensor([token]), one, zero, cache).logits[0, -1]
    return logits


@pytest.mark.parametrize("shape", ["tree", "stochastic_chain"])
def test_sampled_pairs_follow_the_target(greedy_reference, shape):
    """Chi-square of the first two sampled tokens through the real adapter against p(t1) p(t2 | t1)."""
    from scipy.stats import chisquare

    target, inputs, _ = greedy_reference("llava", PROMPTS[0])
    # A sharp 3-token distribution per step keeps the table small and the test sensitive.
    sampling = SamplingConfig(temperature=0.2, top_k=3)
    first = target_probs(next_logits(target, inputs, []), sampling)
    firsts = first.nonzero().flatten().tolist()
    second = {t1: target_probs(next_logits(target, inputs, [t1]), sampling) for t1 in firsts}
    # The draft knows each support but prefers the target's least likely token.
    table = {t1: torch.where(p > 0, -torch.log(p.clamp(min=1e-9)), -float("inf")) for t1, p in second.items()}
    cfg, temperature = ((TreeConfig(top_k=2, depth=2, total_tokens=4), 0.0) if shape == "tree"
                        else (TreeConfig(depth=2, chain=True), 1.0))
    proposer = TableProposer(table, target.vocab_size, cfg, temperature)
    draws = 600
    counts: dict[tuple[int, int], int] = {}
    for seed in range(draws):
        # Budget 3: the first round verifies depth-1 drafts under t1 (a budget of 2 would prune them).
        result = generate(target, inputs, proposer=proposer, sampling=sampling, max_new_tokens=3, seed=seed)
        pair = (result.token_ids[0], result.token_ids[1])
        counts[pair] = counts.get(pair, 0) + 1
    cells = [(t1, t2) for t1 in firsts for t2 in second[t1].nonzero().flatten().tolist()]
    assert set(counts) <= set(cells)
    expected = [float(first[t1] * second[t1][t2]) * draws for t1, t2 in cells]
    observed = [counts.get(cell, 0) for cell in cells]
    scale = draws / sum(expected)
    assert chisquare(observed, [e * scale for e in expected]).pvalue > 1e-3


def test_bad_settings_raise(greedy_reference):
    target, inputs, _ = greedy_reference("llama", PROMPTS[0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(target, inputs, max_new_tokens=0)
    with pytest.raises(ValueError, match="context"):
        generate(target, inputs, max_new_tokens=10_000)
    with pytest.raises(ValueError, match="stop_strings"):
        generate(target, inputs, max_new_tokens=4, stop_strings=[""])
    with pytest.raises(ValueError, match="sampling"):
        generate(target, inputs, max_new_tokens=4, sampling={"temperature": 1.0})

    class WrongRoot:
        def prefill_request(self): return PrefillRequest()
        def begin(self, prompt): pass
        def accept(self, step): pass
        def propose(self, root_token): return chain_tree(torch.tensor([root_token + 1, 5]))

    with pytest.raises(ValueError, match="root"):
        generate(target, inputs, proposer=WrongRoot(), max_new_tokens=4)
