"""Kernel probes, run once per machine: their results kept in $DREAM_CACHE/invariance.json.

Why: which kernel torch picks depends on the CPU, the torch version, the thread count, the device, the
shapes and the dtype, never on the values, so a probe's answer holds for every later process on the same
machine and setup. Probing the 49k-row head or the attention takes seconds; reading the answer, nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dream.settings import cache_root, cpu_kind

CACHE_FILE = "invariance.json"


def probe_key(*parts: Any) -> str:
    """A cache key for one probe: the machine and setup (CPU kind, torch, threads) and the probe's own parts."""
    return "|".join(map(str, (cpu_kind(), torch.__version__, torch.get_num_threads(), *parts)))


def cached_probe(key: str, probe: Callable[[], Any]) -> Any:
    """probe(), or its answer from an earlier run with the same key. The answer must be JSON."""
    path = cache_root() / CACHE_FILE
    known = _read_json(path)
    if key not in known:
        known[key] = probe()
        _write_json(path, {**_read_json(path), key: known[key]})  # re-read: another process may have written
    return known[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or unreadable: probe again
        return {}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=1, sort_keys=True)
    os.replace(tmp.name, path)
