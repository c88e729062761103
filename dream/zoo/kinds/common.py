"""Shared pieces of the image-kind generators: colours, fonts, words, and the random helpers they draw with.

Every generator is a pure function of a seeded `numpy.random.Generator`, so a dataset is reproducible from
its seed. Fonts come from matplotlib's own folder (DejaVu, STIX, Computer Modern), a project dependency, so
the pictures do not depend on the fonts a machine happens to have.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import ImageFont

SIDE = 128   # pixels; the zoo target resizes to 64, a larger source keeps text and thin lines legible

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 180), "pink": (240, 130, 180), "brown": (130, 80, 40),
    "black": (20, 20, 20), "gray": (128, 128, 128), "white": (250, 250, 250), "teal": (30, 150, 150),
}
LIGHT = ("white", "yellow", "pink", "gray")      # backgrounds that dark text and shapes stand out on

WORDS = ("apple", "river", "garden", "window", "market", "planet", "silver", "morning", "yellow", "bridge",
         "coffee", "travel", "simple", "music", "forest", "summer", "winter", "office", "report", "energy",
         "history", "number", "window", "dinner", "letter", "school", "family", "health", "moment", "result",
         "open", "sale", "exit", "stop", "north", "south", "light", "water", "paper", "stone", "cloud", "green")
TOPICS = ("Sales", "Revenue", "Rainfall", "Visitors", "Temperature", "Growth", "Scores", "Costs", "Energy use",
          "Downloads", "Traffic", "Population", "Orders", "Budget")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
               "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf", "cmr10.ttf", "STIXGeneral.ttf")


@lru_cache(maxsize=None)
def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=256)
def font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_dir() / _FONT_FILES[index % len(_FONT_FILES)]), size)


def random_font(rng: np.random.Generator, low: int, high: int) -> ImageFont.FreeTypeFont:
    return font(int(rng.integers(len(_FONT_FILES))), int(rng.integers(low, high + 1)))


def pick(rng: np.random.Generator, options: tuple | list):
    """One element, drawn with the dataset's RNG (numpy's choice would turn tuples of tuples into arrays)."""
    return options[int(rng.integers(len(options)))]


def color_name(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    return pick(rng, [name for name in COLORS if name not in exclude])


def jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 20) -> tuple[int, int, int]:
    """A named colour with a little noise, so a colour name covers a range of pixel values."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def contrasting(background: str, rng: np.random.Generator) -> str:
    """A colour name that is readable on `background`."""
    dark = ("black", "blue", "purple", "brown", "red", "green", "teal")
    light = ("white", "yellow", "pink", "orange")
    return pick(rng, [c for c in (light if background in dark else dark) if c != background])


def words(rng: np.random.Generator, n: int) -> list[str]:
    return [pick(rng, WORDS) for _ in range(n)]
