"""Procedural pictures drawn with PIL: scenes of several objects, flags, and box-and-arrow diagrams."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from dream.zoo.kinds.common import COLORS, LIGHT, SIDE, color_name, contrasting, jitter, pick, random_font, words

SHAPES = ("circle", "square", "rectangle", "triangle", "star", "diamond", "ellipse", "cross")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular-ish polygon shape centred on (cx, cy) with radius r."""
    if shape == "triangle":
        count, radii = 3, (r,)
    elif shape == "diamond":
        count, radii = 4, (r,)
    elif shape == "star":
        count, radii = 10, (r, r * 0.45)
    else:  # cross: a 12-vertex plus sign
        a, b = r, r * 0.35
        points = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
                  (-b, b), (-b, a)]
        return [(cx + x, cy + y) for x, y in points]
    return [(cx + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / count),
             cy - radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / count)) for k in range(count)]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple,
               rng: np.random.Generator) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ellipse":
        draw.ellipse((cx - r, cy - r * 0.55, cx + r, cy + r * 0.55), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "rectangle":
        draw.rectangle((cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), fill=fill)
    else:
        angle = 0.0 if rng.random() < 0.7 else float(rng.uniform(0, math.pi))
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def scene(rng: np.random.Generator) -> Image.Image:
    """Two to seven objects of several shapes and colours, or a simple landscape."""
    return _landscape(rng) if rng.random() < 0.25 else _objects(rng)


def _objects(rng: np.random.Generator) -> Image.Image:
    background = pick(rng, LIGHT) if rng.random() < 0.7 else color_name(rng)
    image = Image.new("RGB", (SIDE, SIDE), jitter(COLORS[background], rng, 10))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 8))):
        r = float(rng.uniform(6, 26))
        cx, cy = rng.uniform(r, SIDE - r, size=2)
        fill = jitter(COLORS[color_name(rng, exclude=(background,))], rng)
        draw_shape(draw, pick(rng, SHAPES), float(cx), float(cy), r, fill, rng)
    return image


def _landscape(rng: np.random.Generator) -> Image.Image:
    """Sky, ground, a sun and some trees or houses: a scene with parts that have names."""
    image = Image.new("RGB", (SIDE, SIDE), jitter((120, 180, 240), rng))
    draw = ImageDraw.Draw(image)
    horizon = int(rng.integers(SIDE // 2, SIDE * 3 // 4))
    draw.rectangle((0, horizon, SIDE, SIDE), fill=jitter(COLORS[pick(rng, ("green", "brown", "yellow"))], rng))
    if rng.random() < 0.7:
        x, y, r = rng.integers(10, SIDE - 10), rng.integers(8, horizon // 2 + 9), rng.integers(6, 14)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=jitter(COLORS["yellow"], rng))
    for _ in range(int(rng.integers(1, 5))):
        x = float(rng.uniform(10, SIDE - 10))
        size = float(rng.uniform(8, 20))
        if rng.random() < 0.5:  # a tree: trunk and crown
            draw.rectangle((x - 2, horizon - size, x + 2, horizon + 4), fill=COLORS["brown"])
            draw.ellipse((x - size / 2, horizon - size * 1.8, x + size / 2, horizon - size * 0.8),
                         fill=jitter(COLORS["green"], rng))
        else:  # a house: walls and roof
            wall = jitter(COLORS[pick(rng, ("white", "red", "orange", "gray"))], rng)
            draw.rectangle((x - size / 2, horizon - size, x + size / 2, horizon + 4), fill=wall)
            draw.polygon([(x - size * 0.65, horizon - size), (x + size * 0.65, horizon - size),
                          (x, horizon - size * 1.6)], fill=jitter(COLORS["brown"], rng))
    return image


def flag(rng: np.random.Generator) -> Image.Image:
    """An invented flag: two to four stripes, sometimes with a cross, a disc, a star or a hoist triangle."""
    height = int(SIDE * rng.uniform(0.55, 0.75))
    canvas = Image.new("RGB", (SIDE, SIDE), jitter(COLORS[pick(rng, ("white", "gray"))], rng, 8))
    image = Image.new("RGB", (SIDE - 8, height))
    draw = ImageDraw.Draw(image)
    w, h = image.size
    stripes = [color_name(rng) for _ in range(int(rng.integers(2, 5)))]
    vertical = rng.random() < 0.4
    for k, name in enumerate(stripes):
        box = ((w * k / len(stripes), 0, w * (k + 1) / len(stripes), h) if vertical
               else (0, h * k / len(stripes), w, h * (k + 1) / len(stripes)))
        draw.rectangle(box, fill=COLORS[name])
    emblem = rng.random()
    mark = COLORS[color_name(rng, exclude=tuple(stripes))]
    if emblem < 0.25:
        draw.rectangle((w * 0.3, 0, w * 0.4, h), fill=mark)
        draw.rectangle((0, h * 0.42, w, h * 0.58), fill=mark)
    elif emblem < 0.5:
        draw_shape(draw, pick(rng, ("circle", "star")), w / 2, h / 2, h * 0.22, mark, rng)
    elif emblem < 0.7:
        draw.polygon([(0, 0), (w * 0.4, h / 2), (0, h)], fill=mark)
    canvas.paste(image, (4, (SIDE - height) // 2))
    return canvas


def diagram(rng: np.random.Generator) -> Image.Image:
    """Three to five labelled boxes joined by arrows, in a row, a column or a loop (a flowchart)."""
    image = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(3, 6))
    layout = pick(rng, ("chain", "zigzag", "loop"))
    centres = _diagram_centres(layout, count)
    box = pick(rng, ("blue", "green", "orange", "purple", "teal", "gray"))
    text_font = random_font(rng, 8, 10)
    labels = [word.capitalize() for word in words(rng, count)]
    for (ax, ay), (bx, by) in zip(centres, centres[1:] + (centres[:1] if layout == "loop" else [])):
        draw.line((ax, ay, bx, by), fill=(30, 30, 30), width=2)
        angle = math.atan2(by - ay, bx - ax)
        tip = (ax + (bx - ax) * 0.62, ay + (by - ay) * 0.62)   # arrow head between the boxes
        draw.polygon([tip, (tip[0] - 6 * math.cos(angle - 0.5), tip[1] - 6 * math.sin(angle - 0.5)),
                      (tip[0] - 6 * math.cos(angle + 0.5), tip[1] - 6 * math.sin(angle + 0.5))], fill=(30, 30, 30))
    for (cx, cy), label in zip(centres, labels):
        draw.rounded_rectangle((cx - 22, cy - 9, cx + 22, cy + 9), radius=4, fill=jitter(COLORS[box], rng),
                               outline=(20, 20, 20))
        draw.text((cx, cy), label, fill=COLORS[contrasting(box, rng)], font=text_font, anchor="mm")
    return image


def _diagram_centres(layout: str, count: int) -> list[tuple[float, float]]:
    if layout == "chain":     # top to bottom
        return [(SIDE / 2, 14 + k * (SIDE - 28) / (count - 1)) for k in range(count)]
    if layout == "zigzag":
        return [(30 + (k % 2) * 68, 14 + k * (SIDE - 28) / (count - 1)) for k in range(count)]
    return [(SIDE / 2 + 40 * math.sin(2 * math.pi * k / count), SIDE / 2 - 40 * math.cos(2 * math.pi * k / count))
            for k in range(count)]
