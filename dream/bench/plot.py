"""The `dream bench` plot: speedup with its 95 % interval (left) and tau (right), by method and category."""

from __future__ import annotations

from pathlib import Path

from dream.bench.report import Score, Summary


def supported_suffixes() -> set[str]:
    """File name endings the plot can be written as ('.png', '.pdf', ...)."""
    from matplotlib.figure import Figure

    return {f".{kind}" for kind in Figure().canvas.get_supported_filetypes()}


def write_plot(summary: Summary, path: str | Path, title: str) -> Path:
    """Bars of speedup (error bars: its interval) and tau by method; per category too when there are some."""
    import matplotlib

    matplotlib.use("Agg")   # no display here; and a file is all that is wanted
    import matplotlib.pyplot as plt

    methods = summary.methods
    names = list(methods)
    groups = ["all", *next(iter(methods.values())).categories]
    width = 0.8 / len(groups)
    panel_width = max(4.5, (0.6 + 0.25 * len(groups)) * len(names))
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_width, 4.2))
    for g, group in enumerate(groups):
        scores = [methods[n].overall if group == "all" else methods[n].categories[group] for n in names]
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
        _speedup_bars(axes[0], xs, scores, width, group)
        bars = axes[1].bar(xs, [s.metrics.tau for s in scores], width, label=group)
        if group == "all":
            axes[1].bar_label(bars, fmt="%.2f", fontsize=8)
    for ax, label in ((axes[0], f"speedup over {summary.baseline} (95% CI)"),
                      (axes[1], "tau (tokens per target forward)")):
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


def _speedup_bars(ax, xs: list[float], scores: list[Score], width: float, group: str) -> None:
    values = [s.speedup.value for s in scores]
    # A percentile interval need not contain the point estimate: clip, matplotlib refuses negative bars.
    errors = [[max(0.0, v - s.speedup.low) for v, s in zip(values, scores)],
              [max(0.0, s.speedup.high - v) for v, s in zip(values, scores)]]
    bars = ax.bar(xs, values, width, yerr=errors, capsize=2, label=group)
    if group == "all":
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=6)
