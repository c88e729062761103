"""Charts rendered with matplotlib (Agg, no display): bar, line, scatter and pie charts with titles and labels."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from dream.zoo.kinds.common import COLORS, MONTHS, SIDE, TOPICS, color_name, pick, words

_DPI = 100


def _render(rng: np.random.Generator, plot: Callable[[object, np.random.Generator], None]) -> Image.Image:
    """Draw with `plot(axes, rng)` on a SIDE x SIDE figure and return it as an RGB image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 6, "axes.titlesize": 7, "axes.linewidth": 0.6}):
        figure = plt.figure(figsize=(SIDE / _DPI, SIDE / _DPI), dpi=_DPI)
        try:
            axes = figure.add_subplot(1, 1, 1)
            plot(axes, rng)
            if rng.random() < 0.8:
                axes.set_title(pick(rng, TOPICS) + (f" {int(rng.integers(2000, 2025))}" if rng.random() < 0.4 else ""))
            figure.tight_layout(pad=0.3)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=_DPI)
        finally:
            plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def _rgb(name: str) -> tuple[float, float, float]:
    return tuple(c / 255 for c in COLORS[name])


def _categories(rng: np.random.Generator, count: int) -> list[str]:
    start = int(rng.integers(0, 12 - count + 1))
    return list(MONTHS[start:start + count]) if rng.random() < 0.5 else [w[:5].capitalize() for w in words(rng, count)]


def _bars(axes, rng: np.random.Generator) -> None:
    count = int(rng.integers(2, 8))
    values = rng.integers(1, 50, size=count)
    colors = ([_rgb(color_name(rng, exclude=("white",)))] * count if rng.random() < 0.6
              else [_rgb(color_name(rng, exclude=("white",))) for _ in range(count)])
    labels = _categories(rng, count)
    if rng.random() < 0.3:
        axes.barh(labels, values, color=colors)
    else:
        axes.bar(labels, values, color=colors)
        axes.tick_params(axis="x", labelrotation=45 if count > 4 else 0)


def _lines(axes, rng: np.random.Generator) -> None:
    points = int(rng.integers(5, 13))
    x = np.arange(points)
    for _ in range(int(rng.integers(1, 4))):
        trend = rng.normal(0, 3) * x + rng.normal(0, 4, size=points).cumsum() + rng.uniform(10, 40)
        axes.plot(x, trend, color=_rgb(color_name(rng, exclude=("white",))), linewidth=1.2,
                  marker="o" if rng.random() < 0.4 else None, markersize=2)
    if rng.random() < 0.6:
        axes.set_xlabel("Month" if points <= 12 else "Day")
    if rng.random() < 0.5:
        axes.grid(linewidth=0.3)


def _scatter(axes, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 4))):
        count = int(rng.integers(8, 60))
        centre, spread = rng.uniform(-5, 5, size=2), rng.uniform(0.5, 3)
        slope = rng.normal(0, 1)
        x = rng.normal(centre[0], spread, size=count)
        y = slope * x + rng.normal(centre[1], spread, size=count)
        axes.scatter(x, y, s=4, color=_rgb(color_name(rng, exclude=("white",))))
    axes.set_xlabel(pick(rng, ("x", "Height", "Age", "Time", "Price")))
    axes.set_ylabel(pick(rng, ("y", "Weight", "Score", "Speed", "Demand")))


def _pie(axes, rng: np.random.Generator) -> None:
    count = int(rng.integers(2, 7))
    values = rng.integers(5, 60, size=count)
    names = [color_name(rng, exclude=("white",)) for _ in range(count)]
    labels = _categories(rng, count) if rng.random() < 0.7 else None
    axes.pie(values, labels=labels, colors=[_rgb(n) for n in names], startangle=float(rng.uniform(0, 360)),
             autopct="%d%%" if rng.random() < 0.4 else None, textprops={"fontsize": 5})


def bar_chart(rng: np.random.Generator) -> Image.Image:
    return _render(rng, _bars)


def line_chart(rng: np.random.Generator) -> Image.Image:
    return _render(rng, _lines)


def scatter_plot(rng: np.random.Generator) -> Image.Image:
    return _render(rng, _scatter)


def pie_chart(rng: np.random.Generator) -> Image.Image:
    return _render(rng, _pie)
