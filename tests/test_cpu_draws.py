"""dream.sampling.draw_rows and dream.serving.cpu_draws: vLLM's two speculative draws by inverse CDF are exact.

Chi-square goodness of fit over many independent draws of one row (a vocabulary of 40 with zero entries);
each test has a negative control that the same check rejects. The engine-level tests
(tests/test_vllm_sampling.py) check vLLM's emitted tokens against the target with these draws installed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare

from dream.sampling import draw_rows
from dream.serving import cpu_draws

V, N = 40, 40_000
PASS_P, FAIL_P = 1e-3, 1e-9


def _row(seed: int, zeros: tuple[int, ...] = (0, 7, 39)) -> torch.Tensor:
    probs = torch.randn(V, generator=torch.Generator().manual_seed(seed)).mul(1.5).softmax(-1)
    probs[list(zeros)] = 0
    return probs / probs.sum()


def _fit(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of the draws' counts against `probs`; a draw where probs is zero fails at once."""
    counts = torch.bincount(draws.long(), minlength=V).double()
    support = probs > 0
    assert counts[~support].sum() == 0, f"drew entries of probability zero: {counts[~support].nonzero().tolist()}"
    expected = probs[support].double() / probs[support].double().sum() * draws.numel()
    return float(chisquare(counts[support].numpy(), expected.numpy()).pvalue)


def _metadata(temperature: list[float], generators: dict | None = None) -> SimpleNamespace:
    t = torch.tensor(temperature)
    return SimpleNamespace(temperature=t, generators=generators or {}, all_greedy=bool((t < 1e-5).all()),
                           all_random=bool((t >= 1e-5).all()))


def test_draw_rows_follows_the_weights():
    torch.manual_seed(0)
    probs = _row(1)
    draws = draw_rows((probs * 3.7).expand(N, V), torch.rand(N, dtype=torch.float64))
    assert _fit(draws, probs) > PASS_P
    assert _fit(draws, _row(2)) < FAIL_P          # negative control: another distribution is rejected


def test_draw_rows_edges_of_the_unit_interval():
    weights = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0]] * 3)
    draws = draw_rows(weights, torch.tensor([0.0, 1 / 3 - 1e-12, 1 - 2 ** -53], dtype=torch.float64))
    assert draws.tolist() == [1, 1, 3]
    # The largest uniform never reaches past a row's last positive weight, whatever the row's total.
    totals = torch.rand(10_000, dtype=torch.float64) * torch.exp2(torch.randint(-40, 40, (10_000,)).double())
    rows = torch.stack([totals, torch.zeros_like(totals)], -1)
    assert draw_rows(rows, torch.full((10_000,), 1 - 2 ** -53, dtype=torch.float64)).eq(0).all()


def test_draft_draws_follow_softmax_of_logits_over_temperature():
    torch.manual_seed(0)
    logits = torch.log(_row(3)).expand(N, V).clone()          # -inf at the zero entries
    ids, probs = cpu_draws.compute_probs_and_sample_next_token(logits, _metadata([0.7] * N))
    want = torch.softmax(torch.log(_row(3)) / 0.7, -1)
    assert probs.dtype == torch.float32 and torch.allclose(probs[0], want, atol=1e-6)
    assert _fit(ids, want) > PASS_P
    assert _fit(ids, _row(3)) < FAIL_P            # negative control: the temperature matters


def test_draft_draws_keep_greedy_rows_greedy():
    logits = torch.randn(3, V)
    ids, _ = cpu_draws.compute_probs_and_sample_next_token(logits.clone(), _metadata([0.0, 1.0, 0.0]))
    assert ids[0] == logits[0].argmax() and ids[2] == logits[2].argmax()
    ids, returned = cpu_draws.compute_probs_and_sample_next_token(logits.clone(), _metadata([0.0, 0.0, 0.0]))
    assert torch.equal(ids, logits.argmax(-1)) and torch.equal(returned, logits)


def _recovered(draft_probs, target, draft_ids, metadata, num_draft_tokens):
    return cpu_draws.sample_recovered_tokens(max(num_draft_tokens), num_draft_tokens, None, draft_ids,
                                             draft_probs, target, metadata, torch.device("cpu"))


def test_recovered_tokens_follow_the_residual():
    torch.manual_seed(0)
    p, q = _row(4), _row(5, zeros=(0, 7, 11))
    ids = torch.zeros(N, dtype=torch.int32)
    drawn = _recovered(q.expand(N, V), p.expand(N, V), ids, _metadata([1.0]), [N])
    residual = (p - q).clamp(min=0)
    assert drawn.dtype == torch.int32
    assert _fit(drawn, residual / residual.sum()) > PASS_P
    assert _fit(drawn, p) < FAIL_P                # negative control: drawing from p itself is rejected


def test_recovered_tokens_without_draft_probs_remove_the_drafted_token():
    torch.manual_seed(0)
    p = _row(6)
    drafted = int(p.argmax())
    drawn = _recovered(None, p.expand(N, V), torch.full((N,), drafted, dtype=torch.int32), _metadata([1.0]), [N])
    without = p.clone()
    without[drafted] = 0
    assert _fit(drawn, without / without.sum()) > PASS_P


def test_recovered_tokens_of_equal_distributions_stay_in_the_support():
    p = _row(7)
    drawn = _recovered(p.expand(64, V), p.expand(64, V), torch.zeros(64, dtype=torch.int32), _metadata([1.0]), [64])
    assert bool((p[drawn.long()] > 0).all())


def test_recovered_tokens_of_a_seeded_request_repeat():
    p, q = _row(8).expand(6, V), _row(9).expand(6, V)
    ids = torch.zeros(6, dtype=torch.int32)

    def draw() -> list[int]:
        metadata = _metadata([1.0, 1.0], {1: torch.Generator().manual_seed(123)})
        return _recovered(q, p, ids, metadata, [2, 4]).tolist()

    first, second = draw(), draw()
    assert first[2:] == second[2:]                # request 1's four rows come from its own generator


def test_rows_that_are_not_distributions_still_draw_inside_the_vocabulary():
    # vLLM's own expand adapter (the negative control of tests/test_vllm_sampling.py) divides logits by
    # garbage temperatures: NaN rows must give some token, not one past the end that kills the engine.
    logits = torch.randn(4, V)
    logits[1, 3] = float("inf")
    ids, _ = cpu_draws.compute_probs_and_sample_next_token(logits, _metadata([1.0, 4.6e-41, 1.0, 1.6e22]))
    assert bool(((ids >= 0) & (ids < V)).all())
    nan_rows = torch.full((3, V), float("nan"))
    drawn = _recovered(nan_rows, nan_rows, torch.zeros(3, dtype=torch.int32), _metadata([1.0]), [3])
    assert bool(((drawn >= 0) & (drawn < V)).all())


def test_install_swaps_the_two_vllm_functions_and_back():
    pytest.importorskip("vllm")
    from vllm.v1.sample import rejection_sampler
    from vllm.v1.spec_decode import llm_base_proposer

    try:
        cpu_draws.install(enabled=True)
        assert rejection_sampler.sample_recovered_tokens is cpu_draws.sample_recovered_tokens
        assert llm_base_proposer.compute_probs_and_sample_next_token is cpu_draws.compute_probs_and_sample_next_token
        cpu_draws.install(enabled=False)
        assert rejection_sampler.sample_recovered_tokens is not cpu_draws.sample_recovered_tokens
        assert llm_base_proposer.compute_probs_and_sample_next_token is not \
            cpu_draws.compute_probs_and_sample_next_token
    finally:
        cpu_draws.install(enabled=cpu_draws.draws_enabled())
