"""The numbers behind the bench table: the hf method (transformers generate() of the same model, with the
bench's sampling settings), the median-over-repeats rates with paired bootstrap intervals, and the tree
model `--tree auto` predicts with, on hand-built data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from dream.bench.hf import generation_config, hf_generate
from dream.bench.stats import Cells, rate_estimates
from dream.bench.treemodel import (
    VerifyCost, acceptance_table, candidate_trees, expected_tokens, predict_chains, predict_trees,
)
from dream.engine import generate
from dream.sampling import SamplingConfig
from dream.tree import TreeConfig
from fixtures import tiny_image


@pytest.fixture(scope="module")
def vlm(tiny_target):
    target = tiny_target("idefics3")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    return target, target.build_inputs(messages, [tiny_image(3, (40, 24))])


def test_hf_greedy_is_the_engines_greedy_and_its_metrics_add_up(vlm):
    target, inputs = vlm
    saved = target.model.generation_config
    tokens, metrics = hf_generate(target, inputs, SamplingConfig(), max_new_tokens=12, seed=0)
    assert target.model.generation_config is saved              # the checkpoint's config is put back
    assert tokens == generate(target, inputs, max_new_tokens=12).token_ids
    assert metrics.num_tokens == len(tokens) and metrics.target_forwards == len(tokens) - 1 and metrics.tau == 1.0
    assert 0 < metrics.prefill_s < metrics.total_s
    assert metrics.prefill_s + metrics.verify_s == pytest.approx(metrics.total_s)


def test_hf_sampling_uses_the_bench_settings(vlm):
    target, inputs = vlm
    config = generation_config(target, SamplingConfig(temperature=0.7, top_p=0.9, top_k=5), 9)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.9, 5)
    assert config.max_new_tokens == 9 and sorted(config.eos_token_id) == sorted(target.eos_token_ids)
    assert generation_config(target, SamplingConfig(), 9).do_sample is False
    greedy = generate(target, inputs, max_new_tokens=10).token_ids
    # top_k 1 leaves one token to sample: only if top_k reaches generate() does sampling give greedy's tokens.
    assert hf_generate(target, inputs, SamplingConfig(temperature=1.0, top_k=1), 10, seed=3)[0] == greedy
    hot = SamplingConfig(temperature=5.0)
    runs = [hf_generate(target, inputs, hot, 10, seed=seed)[0] for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[0] != greedy     # seeded, and really sampled


def cells(tokens, seconds) -> Cells:
    return Cells(np.array(tokens, dtype=float), np.array(seconds, dtype=float))


def test_rates_are_medians_over_repeats_and_speedups_are_paired():
    rng = np.random.default_rng(5)
    seconds = rng.uniform(0.5, 2.0, size=(6, 3))               # noisy cells shared by every method
    tokens = np.full((6, 3), 10.0)
    data = {"ar": cells(tokens, seconds), "hf": cells(tokens, seconds * 0.8), "fast": cells(tokens, seconds / 2.5)}
    est = rate_estimates(data, ["ar", "hf"])
    per_repeat = tokens.sum(0) / seconds.sum(0)
    assert est.rates["ar"].value == pytest.approx(np.median(per_repeat))
    assert est.baseline == "hf" and est.speedups["hf"].value == pytest.approx(1.0)
    # Exactly 2x hf in every cell: a paired interval has no width, though the rates' intervals do.
    fast = est.speedups["fast"]
    assert fast.value == pytest.approx(2.0) and fast.low == pytest.approx(2.0) and fast.high == pytest.approx(2.0)
    assert est.rates["fast"].high - est.rates["fast"].low > 0.1
    assert est.speedups["ar"].high == pytest.approx(0.8)
    again = rate_estimates(data, ["ar", "hf"])
    assert again.rates["ar"] == est.rates["ar"]                  # seeded: the same timings, the same interval


def test_a_slow_repeat_widens_the_interval():
    tokens = np.full((8, 3), 20.0)
    steady = np.ones((8, 3))
    slow = steady.copy()
    slow[:, 2] = 3.0                                            # the third pass ran on a busy machine
    narrow = rate_estimates({"ar": cells(tokens, steady)}, ["ar"]).rates["ar"]
    wide = rate_estimates({"ar": cells(tokens, slow)}, ["ar"]).rates["ar"]
    assert narrow.low == narrow.high == pytest.approx(20.0)
    assert wide.value == pytest.approx(20.0) and wide.low < 10.0 and wide.high == pytest.approx(20.0)


def test_acceptance_table_counts_unseen_ranks_as_unobserved():
    # depth 1: accepted at rank 0 twice, at rank 1 once, rejected after 2 children once, and once after only
    # 1 child (that round says nothing about rank 1). depth 2: one acceptance at rank 0 out of 3 tries.
    rounds = [((2, 0), (1, 0)), ((2, 0), (2, None)), ((2, 1), (1, None)), ((2, None),), ((1, None),)]
    q = acceptance_table(rounds, depth=3, top_k=2)
    # rank 0: 2 of 5 tries; rank 1: 1 of the 2 rounds that tried it after rejecting rank 0 with 2 children.
    assert q[0] == pytest.approx([2 / 5, (3 / 5) * (1 / 2)])
    assert q[1] == pytest.approx([1 / 3, 0.0]) and q[2] == [0.0, 0.0]


def test_expected_tokens_follow_the_builders_choice():
    q = [[0.6, 0.2, 0.1], [0.5, 0.3, 0.1]]
    chain = expected_tokens(q, TreeConfig(top_k=1, depth=2, total_tokens=2))
    assert chain == pytest.approx((1 + 0.6 + 0.3, 3, 2))
    # top_k 2, 3 nodes: 0.6, 0.6*0.5 = 0.3 and 0.2 beat 0.6*0.3 = 0.18.
    assert expected_tokens(q, TreeConfig(top_k=2, depth=2, total_tokens=3)) == pytest.approx((2.1, 4, 2))
    # top_k 2, depth 2 pool: 2 + 4 nodes; all of them.
    tokens, nodes, _ = expected_tokens(q, TreeConfig(top_k=2, depth=2, total_tokens=10))
    assert nodes == 7 and tokens == pytest.approx(1 + 0.8 + 0.8 * 0.8)


def test_the_prediction_trades_acceptance_against_cost():
    q = [[0.9, 0.05], [0.9, 0.05], [0.9, 0.05], [0.9, 0.05]]
    candidates = candidate_trees(2, 4, [1, 2, 4, 8])
    assert TreeConfig(top_k=2, depth=4, total_tokens=8) in candidates
    assert all(c.total_tokens >= c.depth for c in candidates)
    draft = {(k, d): 0.01 * d for k in (1, 2) for d in range(1, 5)}
    cheap = predict_trees(q, candidates, draft, VerifyCost(0.05, 0.005, 0.0), overhead_s=0.0)
    assert cheap[0].tree == TreeConfig(top_k=1, depth=4, total_tokens=4)      # deep chains pay when q is high
    dear_steps = {(k, d): 0.2 * d for k, d in draft}
    assert predict_trees(q, candidates, dear_steps, VerifyCost(0.05, 0.005, 0.0), 0.0)[0].tree.depth == 1
    best = cheap[0]
    assert best.tokens_per_s == pytest.approx(best.tokens_per_round / (0.04 + 0.05 + 0.005 * 5))


def test_chain_lengths_replay_the_calibration_rounds():
    rounds = [(6, 6), (6, 0), (2, 2), (0, 0)]         # (proposed, accepted) with the longest chain
    verify = VerifyCost(1.0, 0.0, 0.0)
    by_length = {p.tree.depth: p for p in predict_chains(rounds, [1, 2, 6], 0.0, verify, 0.0)}
    assert by_length[1].tokens_per_round == pytest.approx(1 + (1 + 0 + 1 + 0) / 4)
    assert by_length[6].tokens_per_round == pytest.approx(1 + 8 / 4)
    assert by_length[6].tree.chain and by_length[6].round_s == pytest.approx(1.0)


def test_verify_cost_fit_recovers_a_plane():
    samples = [(n, d, 0.02 + 0.003 * n + 0.004 * d) for n in (1, 5, 9, 17) for d in (0, 1, 4) if n > d]
    fit = VerifyCost.fit(samples)
    assert (fit.base, fit.per_node, fit.per_depth) == pytest.approx((0.02, 0.003, 0.004))
    assert fit(13, 2) == pytest.approx(0.02 + 0.039 + 0.008)


def test_rates_relative_to_a_named_method_are_paired():
    rng = np.random.default_rng(7)
    seconds = rng.uniform(0.5, 2.0, size=(5, 3))
    tokens = np.full((5, 3), 10.0)
    data = {"ar": cells(tokens, seconds), "eagle2": cells(tokens, seconds / 2), "dream": cells(tokens, seconds / 2.2)}
    est = rate_estimates(data, ["ar"], versus="eagle2")
    edge = est.relative["dream"]
    assert edge.value == pytest.approx(1.1) and edge.low == pytest.approx(1.1) and edge.high == pytest.approx(1.1)
    assert est.relative["eagle2"].value == pytest.approx(1.0)
    assert rate_estimates(data, ["ar"]).relative == {}
