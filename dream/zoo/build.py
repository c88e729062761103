"""Build zoo targets into a cache directory outside git, and resolve target names to paths.

`build("smolvlm-135m")` writes a stock Idefics3 checkpoint (model, tokenizer, processor, chat
template) to `$DREAM_CACHE/zoo/smolvlm-135m` (default `~/.cache/dream/zoo/smolvlm-135m`). It is
written into a temporary sibling directory and renamed into place, so an interrupted build leaves
nothing half-written; a finished build is reused while the shipped weights' hash (and the build
recipe version) match the `dream_zoo.json` stamp inside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from dream.zoo import model as M
from dream.zoo.spec import ZooSpec

log = logging.getLogger(__name__)

ZOO = ("smolvlm-135m",)
BUILD_VERSION = 1            # bump when the recipe (not the weights) changes
STAMP = "dream_zoo.json"


def cache_root() -> Path:
    return Path(os.environ.get("DREAM_CACHE", "~/.cache/dream")).expanduser() / "zoo"


def assets_hash(name: str) -> str:
    """sha256 over the shipped files of `name` (sorted names and contents)."""
    folder = M.assets_dir(name)
    files = [M.SPEC_FILE, M.VISION_FILE, M.LM_DELTA_FILE]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"shipped weights for {name!r} are missing from {folder}: {missing}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode())
        digest.update((folder / f).read_bytes())
    return digest.hexdigest()


def _stamp(name: str) -> dict:
    return {"name": name, "assets_sha256": assets_hash(name), "build_version": BUILD_VERSION}


def is_built(path: Path, name: str) -> bool:
    try:
        found = json.loads((path / STAMP).read_text())
        return found == _stamp(name)
    except (OSError, ValueError):         # no stamp, unreadable stamp, or no shipped weights
        return False


def build(name: str = "smolvlm-135m", *, force: bool = False, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) zoo target `name`; returns the directory `from_pretrained` loads."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo target {name!r}; known: {', '.join(ZOO)}")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / name
    if not force and is_built(final, name):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    try:
        _write(name, tmp)
        _move_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.0f s -> %s", name, time.time() - t0, final)
    return final


def _write(name: str, out: Path) -> None:
    spec, vision, delta = M.load_shipped(M.assets_dir(name))
    if spec.name != name:
        raise ValueError(f"assets of {name!r} hold spec {spec.name!r}")
    stamp = _stamp(name)
    lm_state, text_config, tokenizer = M.load_smollm2(spec)
    tokenizer = M.make_tokenizer(tokenizer)
    processor = M.make_processor(spec, tokenizer)
    model = M.assemble(spec, lm_state, text_config, tokenizer)
    M.apply_shipped(model, spec, vision, delta, tokenizer)
    model.eval()
    out.mkdir(parents=True)
    with torch.no_grad():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp -> final; a stale `final` is moved aside first and removed afterwards."""
    stale = None
    if final.exists():
        stale = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, stale)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():               # a concurrent build won the race: fine if it is complete
            raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def resolve_target(name_or_path: str | os.PathLike) -> Path:
    """A zoo name -> its built directory (building if needed); an existing directory passes through."""
    if str(name_or_path) in ZOO:
        return build(str(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"unknown target {str(name_or_path)!r}: not a zoo name ({', '.join(ZOO)}) "
                     f"nor an existing directory")
