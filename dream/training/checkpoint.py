"""Training checkpoints: everything needed to continue a run exactly, written so none is ever half-written.

A checkpoint is a directory `OUT/checkpoints/step-XXXXXXXX/` holding `state.pt` (torch.save of the model,
optimizer, scheduler, RNG states, step and settings) and `meta.json` (step, byte count and sha256 of
state.pt). It is written under a temporary name and renamed into place, so a killed run leaves either the
whole checkpoint or none; a file damaged afterwards (truncated copy, bad disk) fails the size / hash check
with a ValueError instead of loading garbage. The newest `KEEP` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

FORMAT = "dream-train-checkpoint"
DIRECTORY = "checkpoints"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
KEEP = 2          # an older one survives if the newest turns out damaged (resume it with --resume PATH)
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(out: str | Path, step: int) -> Path:
    return Path(out) / DIRECTORY / f"step-{step:08d}"


def list_checkpoints(out: str | Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (temporaries are ignored)."""
    root = Path(out) / DIRECTORY
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))


def save_checkpoint(out: str | Path, step: int, payload: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    final = checkpoint_dir(out, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / STATE_FILE, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    meta = {"format": FORMAT, "step": step, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():                    # a rerun of the same step: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(out)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a checkpoint directory; ValueError when it is missing, truncated or corrupted."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        data = (path / STATE_FILE).read_bytes()
    except FileNotFoundError as err:
        raise ValueError(f"{path} is not a complete training checkpoint: {err.filename} is missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path} is corrupted: {META_FILE} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path / META_FILE} is not a {FORMAT} file")
    if len(data) != meta.get("bytes"):
        raise ValueError(f"checkpoint {path} is truncated: {STATE_FILE} has {len(data)} bytes, "
                         f"{meta.get('bytes')} were written")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise ValueError(f"checkpoint {path} is corrupted: {STATE_FILE} does not match its sha256")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # the hash matched, so this is a foreign or incompatible file
        raise ValueError(f"checkpoint {path} cannot be loaded: {err}") from None
