"""`dream bench` results: per-method summaries, the terminal tables and the JSON document (plot: .plot).

Definitions (counts and times come from dream.metrics, summed over prompts and repeats, ratios recomputed):
  tau             generated tokens per target forward in the decode loop (1.0 for ar and hf)
  tokens_per_s    the median over repeats of each repeat's tokens / seconds over the prompts, prefill
                  included; tokens_per_s_ci its 95 % interval (dream.bench.stats says how)
  speedup         tokens_per_s / that of the faster plain method (ar: the engine's own loop; hf: the model's
                  transformers generate()), on the same cells; speedup_ci its paired 95 % interval
  vs_eagle2       tokens_per_s / that of the eagle2 method (when it ran), on the same cells; vs_eagle2_ci its
                  paired 95 % interval: the DREAM-over-EAGLE-2 edge with the noise both share taken out
  mismatches      prompts whose output differs from the reference's (hf when it ran, else ar), token for
                  token, on the first repeat; only meaningful for greedy decoding (None at temperature > 0).
                  In fp32 a lossless method has 0; in bf16 a tree forward and a one-token forward can round
                  differently, so a near tie can flip an argmax. Each mismatch names its first differing
                  position, both tokens there and, once dream.bench.session has added it, the fp32 logit
                  margin between them (dream.target.margins): a few 1e-3 is a near tie, whole logits a bug.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from dream.bench.run import BenchResult, PromptRun
from dream.bench.stats import Cells, Estimate, rate_estimates
from dream.methods import PLAIN
from dream.metrics import GenerationMetrics, aggregate

EAGLE2 = "eagle2"     # the draft baseline every method's rate is also compared with


@dataclass(frozen=True)
class Mismatch:
    line: int                      # prompts-file line
    position: int                  # first generated position where the tokens differ
    expected: int | None           # the reference's token there (None: the reference had ended)
    got: int | None                # this method's token there (None: this method had ended)
    fp32_margin: float | None = None   # fp32 logit of `expected` minus that of `got` after the common prefix
    fp32_token: int | None = None      # the fp32 target's own argmax there

    def to_dict(self) -> dict:
        return {"line": self.line, "position": self.position, "expected": self.expected, "got": self.got,
                "fp32_margin": self.fp32_margin, "fp32_token": self.fp32_token}


@dataclass(frozen=True)
class Score:
    metrics: GenerationMetrics                  # pooled over every prompt and repeat
    tokens_per_s: Estimate
    speedup: Estimate
    mismatched: tuple[Mismatch, ...] | None     # None at T > 0
    vs_eagle2: Estimate | None = None           # None when eagle2 did not run

    @property
    def mismatches(self) -> int | None:
        return None if self.mismatched is None else len(self.mismatched)

    def to_dict(self) -> dict:
        m = self.metrics
        mismatched = self.mismatched
        return {
            "tau": m.tau, "tokens_per_s": self.tokens_per_s.value, "tokens_per_s_ci": self.tokens_per_s.to_list(),
            "speedup": self.speedup.value, "speedup_ci": self.speedup.to_list(),
            "vs_eagle2": None if self.vs_eagle2 is None else self.vs_eagle2.value,
            "vs_eagle2_ci": None if self.vs_eagle2 is None else self.vs_eagle2.to_list(),
            "mismatches": self.mismatches,
            "mismatched_lines": None if mismatched is None else [x.line for x in mismatched],
            "mismatch_details": None if mismatched is None else [x.to_dict() for x in mismatched],
            "acceptance_by_depth": list(m.acceptance_by_depth),
            "time_split": {"prefill_s": m.prefill_s, "draft_s": m.draft_s, "verify_s": m.verify_s,
                           "other_s": m.other_s, "total_s": m.total_s},
            "target_forwards": m.target_forwards, "num_tokens": m.num_tokens, "generations": m.generations,
        }


@dataclass(frozen=True)
class MethodSummary:
    overall: Score
    categories: dict[str, Score]               # empty when no prompt has a category


@dataclass(frozen=True)
class Summary:
    methods: dict[str, MethodSummary]
    baseline: str                              # the faster plain method over all prompts
    reference: str                             # the method mismatches are counted against


def summarize(result: BenchResult, greedy: bool) -> Summary:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(result.prompts):
        if record.category is not None:
            groups[record.category].append(index)
    plain = [name for name in PLAIN if name in result.runs]
    reference = "hf" if "hf" in result.runs else plain[0]
    every = list(range(len(result.prompts)))
    overall, baseline = _scores(result, every, plain, reference, greedy)
    by_category = {c: _scores(result, indices, plain, reference, greedy)[0] for c, indices in sorted(groups.items())}
    methods = {name: MethodSummary(overall[name], {c: scores[name] for c, scores in by_category.items()})
               for name in result.runs}
    return Summary(methods, baseline, reference)


def _scores(result: BenchResult, indices: list[int], plain: list[str], reference: str,
            greedy: bool) -> tuple[dict[str, Score], str]:
    """Every method's score on the prompts `indices`, and the faster plain method there."""
    cells = {name: _cells([runs[i] for i in indices]) for name, runs in result.runs.items()}
    estimates = rate_estimates(cells, plain, versus=EAGLE2 if EAGLE2 in cells else None)
    scores = {}
    for name, runs in result.runs.items():
        metrics = aggregate([run.metrics for i in indices for run in runs[i]])
        mismatched = None
        if greedy:
            mismatched = tuple(x for i in indices
                               if (x := _mismatch(result.prompts[i].line, runs[i][0], result.runs[reference][i][0])))
        scores[name] = Score(metrics, estimates.rates[name], estimates.speedups[name], mismatched,
                             estimates.relative.get(name))
    return scores, estimates.baseline


def _cells(runs: list[tuple[PromptRun, ...]]) -> Cells:
    tokens = np.array([[run.metrics.num_tokens for run in cells] for cells in runs], dtype=float)
    seconds = np.array([[run.metrics.total_s for run in cells] for cells in runs], dtype=float)
    return Cells(tokens, seconds)


def _mismatch(line: int, run: PromptRun, reference: PromptRun) -> Mismatch | None:
    got, expected = run.token_ids, reference.token_ids
    if got == expected:
        return None
    position = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return Mismatch(line, position, expected[position] if position < len(expected) else None,
                    got[position] if position < len(got) else None)


def _ratio(estimate: Estimate | None) -> str:
    return "-" if estimate is None else f"{estimate.value:.2f}x [{estimate.low:.2f}, {estimate.high:.2f}]"


def format_table(summary: Summary) -> str:
    methods = summary.methods
    depth = max((len(s.overall.metrics.acceptance_by_depth) for s in methods.values()), default=0)
    name_width = max(len("method"), *(len(name) for name in methods))
    header = [f"{'method':<{name_width}}", f"{'tau':>5}", *(f"{'acc@' + str(d + 1):>6}" for d in range(depth)),
              f"{'tok/s [95% CI]':>20}", f"{'speedup [95% CI]':>21}", f"{'vs eagle2 [95% CI]':>21}",
              f"{'mismatch':>8}"]
    lines = ["  ".join(header)]
    for name, method in methods.items():
        score = method.overall
        accept = score.metrics.acceptance_by_depth
        rate, speedup = score.tokens_per_s, score.speedup
        cells = [f"{name:<{name_width}}", f"{score.metrics.tau:5.2f}",
                 *(f"{accept[d]:6.2f}" if d < len(accept) else f"{'-':>6}" for d in range(depth)),
                 f"{f'{rate.value:.1f} [{rate.low:.1f}, {rate.high:.1f}]':>20}",
                 f"{f'{speedup.value:.2f}x [{speedup.low:.2f}, {speedup.high:.2f}]':>21}",
                 f"{_ratio(score.vs_eagle2):>21}",
                 f"{'-' if score.mismatches is None else score.mismatches:>8}"]
        lines.append("  ".join(cells))
    lines.append(f"(speedup over {summary.baseline}, the faster plain method; mismatches against "
                 f"{summary.reference})")
    return "\n".join(lines)


def format_categories(summary: Summary) -> str | None:
    """Per-category tau and speedup (None when the prompts have no categories)."""
    methods = summary.methods
    first = next(iter(methods.values()))
    categories = list(first.categories)
    if not categories:
        return None
    titles = [f"{c} ({first.categories[c].metrics.generations})" for c in categories]   # with run counts
    name_width = max(len("method"), *(len(name) for name in methods))
    widths = [max(len(t), len("tau / speedup")) for t in titles]
    header = f"{'method':<{name_width}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths))
    sub = f"{'':<{name_width}}  " + "  ".join(f"{'tau / speedup':>{w}}" for w in widths)
    lines = [header, sub]
    for name, method in methods.items():
        cells = []
        for category, width in zip(categories, widths):
            score = method.categories[category]
            cells.append(f"{f'{score.metrics.tau:.2f} / {score.speedup.value:.2f}x':>{width}}")
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    return "\n".join(lines)


def json_document(config: dict, summary: Summary, result: BenchResult, texts: dict[str, list[str]]) -> dict:
    """{"config", "speedup_baseline", "mismatch_reference", "methods", "prompts"}: settings, per-method
    scores, and per-prompt outputs (text and token ids of the first repeat, every repeat's timing)."""
    methods = {}
    for name, method in summary.methods.items():
        entry = method.overall.to_dict()
        entry["categories"] = {c: score.to_dict() for c, score in method.categories.items()}
        methods[name] = entry
    prompts = []
    for i, record in enumerate(result.prompts):
        prompts.append({
            "line": record.line, "image": str(record.image_path), "prompt": record.prompt,
            "category": record.category, "answer": record.answer, "prompt_tokens": result.prompt_lengths[i],
            "outputs": {name: _output(runs[i], texts[name][i]) for name, runs in result.runs.items()},
        })
    return {"config": config, "speedup_baseline": summary.baseline, "mismatch_reference": summary.reference,
            "methods": methods, "prompts": prompts}


def _output(cells: tuple[PromptRun, ...], text: str) -> dict:
    first = cells[0]
    return {"text": text, "token_ids": list(first.token_ids), "num_tokens": first.metrics.num_tokens,
            "tau": first.metrics.tau, "tokens_per_s": first.metrics.tokens_per_s,
            "repeats": [{"num_tokens": run.metrics.num_tokens, "total_s": run.metrics.total_s,
                         "tau": run.metrics.tau} for run in cells]}
