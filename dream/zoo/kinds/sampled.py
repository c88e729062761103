"""Pictures drawn from bundled image sets: scikit-image photographs (cropped and augmented), easy-vqa shapes,
and textures (procedural noise, stripes, checks, dots, and scikit-image's seeded binary blobs).

Photographs and easy-vqa images are INSTANCES shared between uses, so each split draws from its own pool:
training never sees an evaluation or dev photo, nor an easy-vqa test image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dream.zoo.kinds.common import COLORS, SIDE, color_name, jitter, pick

# skimage.data photographs that load offline, by split. The evaluation ones are also the bench's
# heldout.jsonl photos (all public domain / CC0, see skimage.data's documentation).
PHOTOS = {
    "train": ("brick", "camera", "cell", "clock", "colorwheel", "grass", "gravel", "horse", "immunohistochemistry",
              "logo", "microaneurysms", "moon", "page", "retina", "text", "shepp_logan_phantom"),
    "dev": ("cat",),
    "eval": ("astronaut", "chelsea", "coffee", "coins", "hubble_deep_field", "rocket"),
}
SPLITS = tuple(PHOTOS)


@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.dtype != np.uint8:  # boolean masks and float phantoms
        pixels = (np.clip(pixels.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def photo(rng: np.random.Generator, split: str) -> Image.Image:
    """A square crop (40-100 % of the short side) of one of the split's photos, with light augmentation."""
    source = _photo(pick(rng, PHOTOS[split]))
    side = int(min(source.size) * rng.uniform(0.4, 1.0))
    x, y = int(rng.integers(0, source.width - side + 1)), int(rng.integers(0, source.height - side + 1))
    image = source.crop((x, y, x + side, y + side)).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.75, 1.25)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.25)))
    if rng.random() < 0.15:
        image = image.convert("L").convert("RGB")
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return image


@lru_cache(maxsize=None)
def _easy_vqa_paths(split: str) -> tuple[str, ...]:
    """easy-vqa image files: train images for training; the test images split between dev (odd ids) and
    evaluation (even ids), so the two never share one."""
    import easy_vqa

    if split == "train":
        paths = easy_vqa.get_train_image_paths()
        return tuple(paths[i] for i in sorted(paths))
    paths = easy_vqa.get_test_image_paths()
    return tuple(paths[i] for i in sorted(paths) if i % 2 == (1 if split == "dev" else 0))


def shapes(rng: np.random.Generator, split: str) -> Image.Image:
    """An easy-vqa picture (one coloured shape, 64 x 64), the zoo target's own training distribution."""
    with Image.open(pick(rng, _easy_vqa_paths(split))) as image:
        return image.convert("RGB")


def texture(rng: np.random.Generator) -> Image.Image:
    """A full-frame pattern: smooth noise, stripes, checks, dots or binary blobs, in one or two colours."""
    kind = pick(rng, ("noise", "stripes", "checks", "dots", "blobs"))
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    if kind == "noise":
        mask = _smooth_noise(rng)
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
        mask = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) + 1) / 2
    elif kind == "checks":
        cell = int(rng.integers(6, 33))
        mask = ((x // cell + y // cell) % 2).astype(np.float64)
    elif kind == "dots":
        step, radius = rng.uniform(10, 26), rng.uniform(2, 6)
        mask = (np.hypot((x % step) - step / 2, (y % step) - step / 2) < radius).astype(np.float64)
    else:
        import skimage.data

        mask = skimage.data.binary_blobs(SIDE, blob_size_fraction=float(rng.uniform(0.05, 0.2)),
                                         rng=int(rng.integers(2**31))).astype(np.float64)
    first, second = color_name(rng), color_name(rng)
    a, b = (np.array(jitter(COLORS[name], rng), dtype=np.float64) for name in (first, second))
    pixels = a * (1 - mask[..., None]) + b * mask[..., None]
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled smoothly (a cloud-like texture)."""
    cells = int(rng.integers(3, 17))
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((SIDE, SIDE), Image.Resampling.BICUBIC), dtype=np.float64) / 255
