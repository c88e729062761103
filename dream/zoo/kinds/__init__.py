"""Image kinds for draft-training and evaluation prompts, all made offline and reproducibly from a seeded RNG.

    IMAGE_KINDS[name].make(rng, split) -> PIL image (RGB)

`split` ("train", "dev" or "eval") only matters for kinds drawn from a fixed set of instances (photos,
easy-vqa shapes): each split has its own pool. Procedural kinds make a new picture from every draw.
HELD_OUT_KINDS never appear in draft training: they make the evaluation's unseen-kinds split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dream.zoo.kinds import charts, drawn, sampled, written


@dataclass(frozen=True)
class ImageKind:
    name: str
    thing: str       # what the picture holds, for templates: "How many {things} ...?"
    things: str
    make: Callable[[np.random.Generator, str], Image.Image]
    held_out: bool = False   # True: evaluation only (unseen kinds), never in draft training


def _procedural(draw: Callable[[np.random.Generator], Image.Image]) -> Callable[[np.random.Generator, str], Image.Image]:
    return lambda rng, split: draw(rng)


_KINDS = (
    ImageKind("shapes", "shape", "shapes", sampled.shapes),
    ImageKind("scene", "object", "objects", _procedural(drawn.scene)),
    ImageKind("flag", "stripe", "stripes", _procedural(drawn.flag)),
    ImageKind("bar_chart", "bar", "bars", _procedural(charts.bar_chart)),
    ImageKind("line_chart", "line", "lines", _procedural(charts.line_chart)),
    ImageKind("scatter_plot", "point", "points", _procedural(charts.scatter_plot)),
    ImageKind("text", "word", "words", _procedural(written.text)),
    ImageKind("document", "paragraph", "paragraphs", _procedural(written.document)),
    ImageKind("digits", "digit", "digits", _procedural(written.digits)),
    ImageKind("photo", "object", "objects", sampled.photo),
    ImageKind("texture", "pattern", "patterns", _procedural(sampled.texture)),
    # Held out: a chart type, a text layout and a drawing type the drafts never train on.
    ImageKind("pie_chart", "slice", "slices", _procedural(charts.pie_chart), held_out=True),
    ImageKind("table", "row", "rows", _procedural(written.table), held_out=True),
    ImageKind("diagram", "box", "boxes", _procedural(drawn.diagram), held_out=True),
)
IMAGE_KINDS: dict[str, ImageKind] = {kind.name: kind for kind in _KINDS}
TRAIN_KINDS = tuple(kind.name for kind in _KINDS if not kind.held_out)
HELD_OUT_KINDS = tuple(kind.name for kind in _KINDS if kind.held_out)
SPLITS = sampled.SPLITS
