"""Prompts files and images for `dream generate`, `dream bench` and `dream demo`.

A prompts file is JSON Lines, one object a line:
    {"image": "images/evqa_12.png", "prompt": "What color is the shape?", "category": "vqa", "answer": "blue"}
  image     required, a path relative to the prompts file (absolute paths also work)
  prompt    required, the user's text; it goes through the chat template as a user message with the image
  category  optional, groups prompts in the per-category report
  answer    optional, a reference answer kept for reading the outputs; the benchmark never scores it
Blank lines are skipped; unknown keys are an error. Everything is read and checked up front (each image is
opened), so a bad file fails with its line number before a model is loaded or anything is timed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dream.chat import user_messages  # noqa: F401  (its home is dream.chat; kept importable here)
from dream.images import read_image as load_image

ASSETS_PROMPTS = Path(__file__).resolve().parents[1] / "assets" / "prompts"
HELDOUT_PROMPTS = ASSETS_PROMPTS / "heldout.jsonl"
DEMO_PROMPTS = ASSETS_PROMPTS / "demo.jsonl"

_REQUIRED = ("image", "prompt")
_OPTIONAL = ("category", "answer")


@dataclass(frozen=True)
class PromptRecord:
    line: int                  # 1-based line of the prompts file (for messages and reports)
    image_path: Path
    image: Image.Image         # loaded, RGB
    prompt: str
    category: str | None
    answer: str | None



def read_prompts(path: str | Path, *, limit: int | None = None) -> list[PromptRecord]:
    """The records of a prompts file (the first `limit` when given), images loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    # Every line is parsed (a broken file is reported whole), but only the used records open their images.
    entries = [(number, _parse_line(path, number, text))
               for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
               if text.strip()]
    if not entries:
        raise ValueError(f"{path} holds no prompts")
    return [_record(path, number, entry) for number, entry in entries[:limit]]


def _parse_line(path: Path, number: int, text: str) -> dict:
    where = f"{path}:{number}"
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (allowed: {[*_REQUIRED, *_OPTIONAL]})")
    for key in _REQUIRED:
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    for key in _OPTIONAL:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ValueError(f"{where}: {key!r} must be a string")
    return entry


def _record(path: Path, number: int, entry: dict) -> PromptRecord:
    image_path = path.parent / entry["image"]
    try:
        image = load_image(image_path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{path}:{number}: {err}") from None
    return PromptRecord(line=number, image_path=image_path, image=image, prompt=entry["prompt"],
                        category=entry.get("category"), answer=entry.get("answer"))
