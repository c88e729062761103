"""`dream bench` results: per-method summaries, the terminal tables, the JSON document and the plot.

Definitions (counts and times come from dream.metrics, summed over prompts, ratios recomputed):
  tau          generated tokens per target forward in the decode loop (1.0 for ar)
  tokens_per_s generated tokens / generation time, prefill included
  speedup      tokens_per_s / ar's tokens_per_s, on the same prompts in the same process
  mismatches   prompts whose output differs from ar's, token for token; only meaningful for greedy
               decoding (None at temperature > 0). In fp32 a lossless method has 0; in bf16 a tree
               forward and a one-token forward round differently, so a near tie can flip an argmax.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dream.bench.run import BenchResult, PromptRun
from dream.metrics import GenerationMetrics, aggregate


@dataclass(frozen=True)
class Score:
    metrics: GenerationMetrics
    speedup: float
    mismatched_lines: tuple[int, ...] | None   # prompts-file lines whose output differs from ar's; None at T > 0

    @property
    def mismatches(self) -> int | None:
        return None if self.mismatched_lines is None else len(self.mismatched_lines)

    def to_dict(self) -> dict:
        m = self.metrics
        return {
            "tau": m.tau, "tokens_per_s": m.tokens_per_s, "speedup": self.speedup, "mismatches": self.mismatches,
            "mismatched_lines": None if self.mismatched_lines is None else list(self.mismatched_lines),
            "acceptance_by_depth": list(m.acceptance_by_depth),
            "time_split": {"prefill_s": m.prefill_s, "draft_s": m.draft_s, "verify_s": m.verify_s,
                           "other_s": m.other_s, "total_s": m.total_s},
            "target_forwards": m.target_forwards, "num_tokens": m.num_tokens, "generations": m.generations,
        }


@dataclass(frozen=True)
class MethodSummary:
    overall: Score
    categories: dict[str, Score]               # empty when no prompt has a category


def summarize(result: BenchResult, greedy: bool) -> dict[str, MethodSummary]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(result.prompts):
        if record.category is not None:
            groups[record.category].append(index)
    every = list(range(len(result.prompts)))
    reference = result.runs["ar"]
    summaries = {}
    for name, runs in result.runs.items():
        categories = {c: _score(runs, reference, indices, result, greedy) for c, indices in sorted(groups.items())}
        summaries[name] = MethodSummary(_score(runs, reference, every, result, greedy), categories)
    return summaries


def _score(runs: list[PromptRun], reference: list[PromptRun], indices: list[int], result: BenchResult,
           greedy: bool) -> Score:
    metrics = aggregate([runs[i].metrics for i in indices])
    baseline = aggregate([reference[i].metrics for i in indices])
    speedup = metrics.tokens_per_s / baseline.tokens_per_s if baseline.tokens_per_s > 0 else 0.0
    mismatched = None
    if greedy:
        mismatched = tuple(result.prompts[i].line for i in indices if runs[i].token_ids != reference[i].token_ids)
    return Score(metrics, speedup, mismatched)


def format_table(summaries: dict[str, MethodSummary]) -> str:
    depth = max((len(s.overall.metrics.acceptance_by_depth) for s in summaries.values()), default=0)
    name_width = max(len("method"), *(len(name) for name in summaries))
    header = [f"{'method':<{name_width}}", f"{'tau':>5}", *(f"{'acc@' + str(d + 1):>6}" for d in range(depth)),
              f"{'tok/s':>7}", f"{'speedup':>7}", f"{'mismatch':>8}"]
    lines = ["  ".join(header)]
    for name, summary in summaries.items():
        score = summary.overall
        accept = score.metrics.acceptance_by_depth
        cells = [f"{name:<{name_width}}", f"{score.metrics.tau:5.2f}",
                 *(f"{accept[d]:6.2f}" if d < len(accept) else f"{'-':>6}" for d in range(depth)),
                 f"{score.metrics.tokens_per_s:7.1f}", f"{score.speedup:6.2f}x",
                 f"{'-' if score.mismatches is None else score.mismatches:>8}"]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def format_categories(summaries: dict[str, MethodSummary]) -> str | None:
    """Per-category tau and speedup (None when the prompts have no categories)."""
    first = next(iter(summaries.values()))
    categories = list(first.categories)
    if not categories:
        return None
    titles = [f"{c} ({first.categories[c].metrics.generations})" for c in categories]   # with prompt counts
    name_width = max(len("method"), *(len(name) for name in summaries))
    widths = [max(len(t), len("tau / speedup")) for t in titles]
    header = f"{'method':<{name_width}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths))
    sub = f"{'':<{name_width}}  " + "  ".join(f"{'tau / speedup':>{w}}" for w in widths)
    lines = [header, sub]
    for name, summary in summaries.items():
        cells = []
        for category, width in zip(categories, widths):
            score = summary.categories[category]
            cells.append(f"{f'{score.metrics.tau:.2f} / {score.speedup:.2f}x':>{width}}")
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    return "\n".join(lines)


def json_document(config: dict, summaries: dict[str, MethodSummary], result: BenchResult,
                  texts: dict[str, list[str]]) -> dict:
    """{"config", "methods", "prompts"}: settings, per-method scores, and per-prompt outputs."""
    methods = {}
    for name, summary in summaries.items():
        entry = summary.overall.to_dict()
        entry["categories"] = {c: score.to_dict() for c, score in summary.categories.items()}
        methods[name] = entry
    prompts = []
    for i, record in enumerate(result.prompts):
        prompts.append({
            "line": record.line, "image": str(record.image_path), "prompt": record.prompt,
            "category": record.category, "answer": record.answer, "prompt_tokens": result.prompt_lengths[i],
            "outputs": {name: {"text": texts[name][i], "num_tokens": runs[i].metrics.num_tokens,
                               "tau": runs[i].metrics.tau, "tokens_per_s": runs[i].metrics.tokens_per_s}
                        for name, runs in result.runs.items()},
        })
    return {"config": config, "methods": methods, "prompts": prompts}


def write_plot(summaries: dict[str, MethodSummary], path: str | Path, title: str) -> Path:
    """Bars of speedup (left) and tau (right) by method; per category as well when there are categories."""
    import matplotlib

    matplotlib.use("Agg")   # no display here; and a file is all that is wanted
    import matplotlib.pyplot as plt

    names = list(summaries)
    groups = ["all", *next(iter(summaries.values())).categories]
    width = 0.8 / len(groups)
    panel_width = max(4.5, (0.6 + 0.25 * len(groups)) * len(names))
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_width, 4.2))
    for ax, label, value in ((axes[0], "speedup over ar", lambda s: s.speedup),
                             (axes[1], "tau (tokens per target forward)", lambda s: s.metrics.tau)):
        for g, group in enumerate(groups):
            scores = [summaries[n].overall if group == "all" else summaries[n].categories[group] for n in names]
            xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
            bars = ax.bar(xs, [value(s) for s in scores], width, label=group)
            if group == "all":
                ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel(label)
        if len(groups) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
