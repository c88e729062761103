"""Reading the small JSON files that tag a directory's format (draft config.json, shard manifest.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_tagged_json(file: Path, format: str, kind: str, *, missing: str,
                     missing_error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in `file` whose "format" is `format`; a clear error when missing, corrupted or foreign.

    A missing file raises `missing_error` ending in `missing` (what the directory then is not).
    """
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise missing_error(f"{file} does not exist: {missing}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON (truncated or corrupted?): {err}") from None
    if not isinstance(data, dict) or data.get("format") != format:
        raise ValueError(f"{file} is not a {format} {kind}")
    return data
