"""Reading user images: RGB, with one-line errors for missing, unreadable or oversized files."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# PIL's own decompression-bomb threshold (~89 MP, 0.27 GB as RGB); above it PIL warns, above twice it raises.
# Rejecting here, before decoding, gives one clear message instead of a warning or a traceback.
MAX_IMAGE_PIXELS = 89_478_485


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB; FileNotFoundError / ValueError with a one-line message naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)      # checked just below
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path} is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit: "
                                 f"downscale it first")
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path} is too large to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError) as err:
        # UnidentifiedImageError is what PIL raises for a non-image; OSError covers directories and truncation.
        reason = "not an image PIL can read" if isinstance(err, UnidentifiedImageError) else str(err).splitlines()[0]
        raise ValueError(f"{path} is not a readable image file ({reason})") from None
