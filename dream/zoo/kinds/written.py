"""Pictures of writing, drawn with PIL: signs and labels, document pages, tables, and digits."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dream.zoo.kinds.common import (COLORS, LIGHT, MONTHS, SIDE, color_name, contrasting, jitter, pick, random_font,
                                    words)


def text(rng: np.random.Generator) -> Image.Image:
    """One to four short lines in one font, centred, like a sign, a label or a poster."""
    background = color_name(rng)
    image = Image.new("RGB", (SIDE, SIDE), jitter(COLORS[background], rng, 10))
    draw = ImageDraw.Draw(image)
    lines = [" ".join(words(rng, int(rng.integers(1, 3)))) for _ in range(int(rng.integers(1, 5)))]
    if rng.random() < 0.5:
        lines = [line.upper() for line in lines]
    size = int(min(30, 190 / max(len(line) for line in lines), 100 / len(lines)))   # fits the width
    face = random_font(rng, max(9, size - 3), max(9, size))
    ink = COLORS[contrasting(background, rng)]
    height = SIDE / (len(lines) + 1)
    for k, line in enumerate(lines):
        draw.text((SIDE / 2, height * (k + 1)), line, fill=ink, font=face, anchor="mm")
    if rng.random() < 0.3:
        draw.rectangle((3, 3, SIDE - 4, SIDE - 4), outline=ink, width=2)
    return image


def document(rng: np.random.Generator) -> Image.Image:
    """A page: a heading, then paragraphs or a bulleted list of small dark text on a light background."""
    image = Image.new("RGB", (SIDE, SIDE), jitter((245, 245, 240), rng, 8))
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), " ".join(words(rng, 2)).title(), fill=(10, 10, 10), font=random_font(rng, 12, 15))
    body = random_font(rng, 7, 8)
    bullets = rng.random() < 0.35
    y = 24
    while y < SIDE - 10:
        line = " ".join(words(rng, int(rng.integers(2, 5))))
        draw.text((6, y), ("\u2022 " if bullets else "") + line, fill=(30, 30, 30), font=body)
        y += 10 + (4 if bullets or rng.random() < 0.15 else 0)   # a wider gap between items or paragraphs
    return image


def table(rng: np.random.Generator) -> Image.Image:
    """A grid with a header row: names in the first column, numbers in the others."""
    rows, columns = int(rng.integers(3, 7)), int(rng.integers(2, 4))
    image = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    face = random_font(rng, 7, 9)
    header = pick(rng, ("blue", "gray", "green", "orange", "teal"))
    top, left, cell_h = 6, 4, min(18, (SIDE - 12) // rows)
    widths = [48] + [(SIDE - 8 - 48) // (columns - 1)] * (columns - 1)
    names = ["Item", *(pick(rng, MONTHS) if rng.random() < 0.5 else w.capitalize() for w in words(rng, columns - 1))]
    for r in range(rows):
        x = left
        if r == 0:
            draw.rectangle((left, top, SIDE - 4, top + cell_h), fill=jitter(COLORS[header], rng))
        for c, width in enumerate(widths):
            value = names[c] if r == 0 else (pick(rng, ("tea", "milk", "bread", "rice", "eggs", "apples", "fish",
                                                        "oil", "salt", "beans")) if c == 0 else str(rng.integers(1, 999)))
            draw.rectangle((x, top + r * cell_h, x + width, top + (r + 1) * cell_h), outline=(60, 60, 60))
            draw.text((x + 3, top + r * cell_h + cell_h / 2), value, fill=(0, 0, 0), font=face, anchor="lm")
            x += width
    return image


def digits(rng: np.random.Generator) -> Image.Image:
    """One to six digits, one large digit or a number, in varied fonts, tilted and scattered a little."""
    background = pick(rng, LIGHT) if rng.random() < 0.6 else "black"
    image = Image.new("RGB", (SIDE, SIDE), jitter(COLORS[background], rng, 10))
    count = int(rng.integers(1, 7))
    size = int(min(90, 220 / (count + 1)))
    for k in range(count):
        glyph = Image.new("L", (size + 10, size + 10), 0)
        ImageDraw.Draw(glyph).text(((size + 10) / 2, (size + 10) / 2), str(int(rng.integers(10))), fill=255,
                                   font=random_font(rng, size - 4, size), anchor="mm")
        glyph = glyph.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
        x = int((k + 0.5) * SIDE / count - glyph.width / 2 + rng.integers(-3, 4))
        y = int(SIDE / 2 - glyph.height / 2 + rng.integers(-SIDE // 5, SIDE // 5 + 1) * (count > 1))
        ink = Image.new("RGB", glyph.size, jitter(COLORS[contrasting(background, rng)], rng))
        image.paste(ink, (x, y), glyph)
    return image
