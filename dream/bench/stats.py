"""Point estimates and 95 % intervals of tokens/s and speedup over prompts x repeats.

The data of one method are cells (prompt i, repeat r): tokens[i, r] generated in seconds[i, r].

  rate       the median over repeats of each repeat's tokens/s over the prompt set
             (sum of tokens / sum of seconds over the prompts, so long answers weigh by their length).
  speedup    rate / the rate of the faster plain method (ar or hf) on the same cells.
  relative   rate / the rate of one named method (the EAGLE-2 baseline, for the drafts), on the same cells.
  interval   95 % percentile bootstrap of the same statistic, crossed over both factors: each of
             RESAMPLES draws the prompts with replacement (as many as there are) and, independently, the
             repeats with replacement, then recomputes the median-over-repeats rate. Every method uses the
             same draws, so a speedup's interval is paired: a prompt or a repeat that is slow for all
             methods moves the numerator and the denominator together. The generator is seeded (SEED),
             so the same timings always give the same interval.

Resampling prompts makes the interval cover the prompt mix as well as timing noise; resampling repeats
covers a pass that ran on a busy machine. With one repeat only the prompts vary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float                  # the statistic on the measured cells
    low: float                    # 2.5th percentile of its bootstrap distribution
    high: float                   # 97.5th percentile

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Cells:
    tokens: np.ndarray            # [n, R] tokens generated in cell (prompt i, repeat r)
    seconds: np.ndarray           # [n, R] their generation time


@dataclass(frozen=True)
class RateEstimates:
    rates: dict[str, Estimate]    # method -> tokens/s
    speedups: dict[str, Estimate] # method -> speedup over the faster plain method
    baseline: str                 # the plain method that is faster on the measured cells
    relative: dict[str, Estimate] # method -> rate over the `versus` method's (empty without one)


def _draws(num_prompts: int, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """counts [B + 1, n] (how often each prompt is drawn) and repeats [B + 1, R]; draw 0 is the data itself."""
    rng = np.random.default_rng(SEED)
    counts = rng.multinomial(num_prompts, np.full(num_prompts, 1.0 / num_prompts), size=RESAMPLES)
    picks = rng.integers(0, repeats, size=(RESAMPLES, repeats))
    counts = np.vstack([np.ones((1, num_prompts), dtype=counts.dtype), counts])
    picks = np.vstack([np.arange(repeats)[None], picks])
    return counts, picks


def _rates(cells: Cells, counts: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """[B + 1] median-over-drawn-repeats tokens/s over the drawn prompts."""
    tokens = counts @ cells.tokens                                               # [B + 1, R]
    seconds = counts @ cells.seconds                                             # [B + 1, R]
    per_repeat = np.take_along_axis(tokens, picks, 1) / np.take_along_axis(seconds, picks, 1)
    return np.median(per_repeat, axis=1)


def _estimate(samples: np.ndarray) -> Estimate:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(samples[1:], [tail, 100 - tail])
    return Estimate(float(samples[0]), float(low), float(high))


def rate_estimates(cells: Mapping[str, Cells], plain: Sequence[str], versus: str | None = None) -> RateEstimates:
    """Rates and speedups of every method; `plain` names the baseline candidates present in `cells`; with
    `versus`, every method's rate relative to that method's, paired the same way."""
    shapes = {c.tokens.shape for c in cells.values()} | {c.seconds.shape for c in cells.values()}
    assert len(shapes) == 1, f"every method needs the same prompts x repeats, got {shapes}"
    assert plain and all(name in cells for name in plain), f"plain methods {plain} missing from {list(cells)}"
    num_prompts, repeats = shapes.pop()
    counts, picks = _draws(num_prompts, repeats)
    samples = {name: _rates(c, counts, picks) for name, c in cells.items()}
    fastest = np.max(np.stack([samples[name] for name in plain]), axis=0)          # [B + 1]
    baseline = max(plain, key=lambda name: samples[name][0])
    return RateEstimates(
        rates={name: _estimate(s) for name, s in samples.items()},
        speedups={name: _estimate(s / fastest) for name, s in samples.items()},
        baseline=baseline,
        relative={} if versus is None else {name: _estimate(s / samples[versus]) for name, s in samples.items()},
    )
