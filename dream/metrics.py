"""Per-generation metrics of the decoding loop, and their aggregation over generations.

What is counted (one generation = one prompt):
  - num_tokens: tokens in the output (EOS included when it ended the generation).
  - prefill_forwards: target forwards over the prompt (1 per generation). The prefill also yields the
    first output token; it is NOT part of tau or target_forwards.
  - target_forwards: target forwards in the decode loop after the prefill: one per speculative round
    (a tree verification) or per plain autoregressive step.
  - committed: tokens those decode-loop forwards produced (accepted drafts + the bonus / recovered
    token), counted before truncation at EOS / stop string / max_new_tokens, so tau measures the
    drafter, not where the text happened to stop.
  - tau = committed / target_forwards: mean tokens per target forward ("mean acceptance length",
    bonus token included; exactly 1 for plain decoding).
  - accepted_at_depth[d]: rounds whose accepted path reached depth d + 1 (an entry exists for every depth
    a tree reached, even if nothing was accepted there). acceptance_by_depth[d] divides by all rounds,
    including a last round whose tree the engine cut to the remaining budget, so
    tau = 1 + sum(acceptance_by_depth).
  - Times (time.perf_counter; CPU torch ops are synchronous, so wall time is compute time):
    prefill_s the prompt forward; draft_s every proposer call (begin, propose, accept); verify_s the
    target's tree forwards (plain decode forwards in the baseline) plus the acceptance rule and the cache
    commit; other_s = total_s - the rest (sampling the first token, stop checks, streaming).
  - tokens_per_s = num_tokens / total_s, prefill included.
Aggregation sums the counts and times and recomputes the ratios (tau over all rounds, not a mean of taus).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class GenerationMetrics:
    num_tokens: int = 0
    prefill_forwards: int = 0
    target_forwards: int = 0
    committed: int = 0
    accepted_at_depth: tuple[int, ...] = ()   # [D] rounds whose accepted path reached depth d + 1
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    generations: int = 1

    @property
    def tau(self) -> float:
        return self.committed / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_by_depth(self) -> tuple[float, ...]:
        rounds = self.target_forwards
        return tuple(count / rounds for count in self.accepted_at_depth) if rounds else ()

    @property
    def other_s(self) -> float:
        return self.total_s - self.prefill_s - self.draft_s - self.verify_s

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.total_s if self.total_s > 0 else 0.0

    def summary(self) -> dict[str, float | int | list[float]]:
        """Flat, JSON-ready view (counts, derived ratios and the time split)."""
        return {
            "generations": self.generations, "num_tokens": self.num_tokens,
            "prefill_forwards": self.prefill_forwards, "target_forwards": self.target_forwards,
            "committed": self.committed, "tau": self.tau,
            "acceptance_by_depth": list(self.acceptance_by_depth), "tokens_per_s": self.tokens_per_s,
            "prefill_s": self.prefill_s, "draft_s": self.draft_s, "verify_s": self.verify_s,
            "other_s": self.other_s, "total_s": self.total_s,
        }


@dataclass
class MetricsRecorder:
    """Mutable counters the engine fills during one generation; `finish` freezes them."""

    target_forwards: int = 0
    committed: int = 0
    accepted_at_depth: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0

    def record_round(self, num_accepted_drafts: int, tree_depth: int) -> None:
        """One target forward over a tree of `tree_depth` that accepted `num_accepted_drafts` drafts."""
        self.target_forwards += 1
        self.committed += num_accepted_drafts + 1
        # Depths the drafter tried but never reached still get a 0 entry.
        self.accepted_at_depth.extend([0] * (tree_depth - len(self.accepted_at_depth)))
        for depth in range(num_accepted_drafts):
            self.accepted_at_depth[depth] += 1

    def finish(self, num_tokens: int, total_s: float) -> GenerationMetrics:
        return GenerationMetrics(
            num_tokens=num_tokens, prefill_forwards=1, target_forwards=self.target_forwards,
            committed=self.committed, accepted_at_depth=tuple(self.accepted_at_depth),
            prefill_s=self.prefill_s, draft_s=self.draft_s, verify_s=self.verify_s, total_s=total_s,
        )


def aggregate(metrics: Sequence[GenerationMetrics]) -> GenerationMetrics:
    """Sum over generations; ratios of the result are over all rounds and all time."""
    depth = max((len(m.accepted_at_depth) for m in metrics), default=0)
    at_depth = [sum(m.accepted_at_depth[d] for m in metrics if d < len(m.accepted_at_depth))
                for d in range(depth)]
    return GenerationMetrics(
        num_tokens=sum(m.num_tokens for m in metrics),
        prefill_forwards=sum(m.prefill_forwards for m in metrics),
        target_forwards=sum(m.target_forwards for m in metrics),
        committed=sum(m.committed for m in metrics),
        accepted_at_depth=tuple(at_depth),
        prefill_s=sum(m.prefill_s for m in metrics),
        draft_s=sum(m.draft_s for m in metrics),
        verify_s=sum(m.verify_s for m in metrics),
        total_s=sum(m.total_s for m in metrics),
        generations=sum(m.generations for m in metrics),
    )
