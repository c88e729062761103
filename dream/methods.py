"""What `generate`, `bench` and `demo` share: method names, targets, drafts and the proposer of each method.

Methods: `ar` (plain autoregressive decoding through the engine), `hf` (the same loaded model's own
transformers `generate()`, dream.bench.hf; bench and demo only), `pld` (prompt lookup, model-free), and one
per draft: `eagle2`, `eagle3`, `dream`, and ablations `dream-<what>` (a differently trained DREAM draft, or the DREAM
draft run at another visual keep ratio, `dream-keep50`). A method's name fixes the draft architecture it
needs, so a mislabelled checkpoint is refused before anything runs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from dream.draft import DraftCheckpoint, DraftProposer, load_draft, read_draft_config
from dream.method_names import BASELINES, DRAFT_NAMES, PLAIN
from dream.pld import PromptLookupProposer
from dream.proposer import Proposer
from dream.sampling import SamplingConfig
from dream.target import TargetAdapter
from dream.target.loading import is_zoo_name  # noqa: F401  (its home is the zoo resolver; kept importable here)
from dream.tree import TreeConfig

log = logging.getLogger(__name__)

SHIPPED_DRAFTS = Path(__file__).resolve().parent / "assets" / "drafts"
_DRAFT_METHOD = re.compile(r"(eagle2|eagle3|dream|dream-[a-z0-9][a-z0-9._-]*)")


@dataclass(frozen=True)
class DraftSpec:
    name: str          # the method name
    path: Path         # checkpoint directory


@dataclass(frozen=True)
class Method:
    name: str
    draft: DraftCheckpoint | None = None   # None for ar and pld
    draft_path: Path | None = None
    keep_ratio: float | None = None        # None: the ratio the draft was trained with
    tree: TreeConfig | None = None         # None: the run's tree; pld reads only its depth (the chain length)


def draft_architecture(name: str) -> str:
    """The architecture a draft method needs; ValueError for a name that is not a draft method."""
    if name in BASELINES:
        raise ValueError(f"{name!r} names a method without a draft; it cannot name a draft")
    if not _DRAFT_METHOD.fullmatch(name):
        raise ValueError(f"unknown method name {name!r}: drafts are named eagle2, eagle3, dream or "
                         f"dream-<ablation> (lower case letters, digits, '.', '_', '-')")
    return name if name in DRAFT_NAMES else "dream"


def draft_spec(path: Path, name: str | None = None) -> DraftSpec:
    """A draft directory under a method name (default: its architecture), config read and checked."""
    path = path.expanduser()
    config = read_draft_config(path)
    name = name or config["architecture"]
    needed = draft_architecture(name)
    if config["architecture"] != needed:
        raise ValueError(f"draft {name!r} at {path} is a {config['architecture']} checkpoint; "
                         f"the name {name!r} needs a {needed} draft")
    return DraftSpec(name, path)


def draft_dir(draft: str) -> Path:
    """A shipped draft's directory for its name (one of DRAFT_NAMES), else the argument as a path."""
    return SHIPPED_DRAFTS / draft if draft in DRAFT_NAMES else Path(draft)


def shipped_drafts(selected: Sequence[str] | None = None) -> list[DraftSpec]:
    """The shipped drafts (for the zoo target) that exist. A missing one is skipped with a logged warning,
    or is a ValueError where `selected` names it."""
    found = []
    for name in DRAFT_NAMES:
        path = SHIPPED_DRAFTS / name
        if (path / "config.json").is_file():
            found.append(DraftSpec(name, path))
        elif selected is not None and name in selected:
            raise ValueError(f"no shipped {name} draft at {path}: give one with --draft {name}=DIR")
        else:
            log.warning("shipped %s draft not found at %s: skipping it", name, path)
    return found


def keep_ratio_name(ratio: float) -> str:
    return f"dream-keep{round(ratio * 100)}"


def load_methods(target: TargetAdapter, drafts: list[DraftSpec], keep_ratios: list[float], dtype: torch.dtype,
                 selected: Sequence[str] | None = None) -> list[Method]:
    """ar, hf, pld, every draft (fingerprint-checked against `target`), then the keep-ratio runs of `dream`;
    only those in `selected` when given (a draft that is not selected is not loaded)."""
    names = plan_method_names(drafts, keep_ratios, selected)
    methods = [Method(name) for name in BASELINES if name in names]
    loaded = {spec.name: load_draft(spec.path, target, dtype=dtype) for spec in drafts
              if spec.name in names or (spec.name == "dream" and keep_ratios)}
    methods += [Method(spec.name, loaded[spec.name], spec.path) for spec in drafts if spec.name in names]
    dream = next((spec for spec in drafts if spec.name == "dream"), None)
    methods += [Method(keep_ratio_name(r), loaded["dream"], dream.path, r) for r in keep_ratios
                if keep_ratio_name(r) in names]
    return methods


def plan_method_names(drafts: list[DraftSpec], keep_ratios: list[float],
                      selected: Sequence[str] | None = None) -> list[str]:
    """The methods a run will have, in order; checked before any model is loaded. `selected` (a subset, in
    any order) keeps only those; a name that is not available is an error."""
    names = [*BASELINES, *(d.name for d in drafts)]
    if keep_ratios and "dream" not in names:
        raise ValueError("--keep-ratios runs the 'dream' draft at other ratios: give one with --draft dream=DIR")
    names += [keep_ratio_name(r) for r in keep_ratios]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"method names must be unique, got {duplicates} more than once")
    if selected is None:
        return names
    unknown = [n for n in selected if n not in names]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}: this run has {', '.join(names)}")
    if not any(n in PLAIN for n in selected):
        raise ValueError(f"the methods must include a plain baseline ({' or '.join(PLAIN)}) to measure speedups")
    return [n for n in names if n in selected]


def make_proposer(method: Method, target: TargetAdapter, tree: TreeConfig, sampling: SamplingConfig,
                  seed: int) -> Proposer | None:
    """A fresh proposer for one generation (no state carried between prompts); the method's own tree wins."""
    assert method.name != "hf", "hf decodes with transformers' generate(), not the engine"
    tree = method.tree or tree
    if method.name == "ar":
        return None
    if method.name == "pld":
        # The chain is as long as the draft trees are deep, so every method verifies at most depth drafts.
        return PromptLookupProposer(num_tokens=tree.depth, image_token_id=target.image_token_id)
    assert method.draft is not None, f"method {method.name} has no draft"
    return DraftProposer(method.draft.draft, target, tree, temperature=sampling.temperature,
                         generator=torch.Generator().manual_seed(seed), keep_ratio=method.keep_ratio)


def method_config(method: Method) -> dict:
    """The JSON-ready identity of a method's draft (empty for the baselines)."""
    if method.draft is None:
        return {}
    draft = method.draft.draft
    keep = draft.config.keep_ratio if method.keep_ratio is None else method.keep_ratio
    return {"path": str(method.draft_path), "architecture": draft.config.architecture, "keep_ratio": keep,
            "draft_config": draft.config.to_dict(), "saved_dtype": method.draft.saved_dtype,
            "training": method.draft.training}


# The command-line default tree: the best of three shapes measured with the shipped drafts on the 2-core CPU
# (bf16, T=0, 8 describe prompts; speedup over ar for eagle2 / dream): top_k 4, depth 4, 16 nodes 2.31x /
# 2.32x; top_k 4, depth 6, 24 nodes 2.57x / 2.77x; top_k 3, depth 5, 12 nodes 2.83x / 3.02x. On a CPU a
# verify forward costs ~1.2x a decode step at 8-12 nodes and ~1.9x at 32, so a narrow tree wins. Those
# prompts were evaluation prompts: `dream bench --tree auto` instead picks each method's shape on a dev
# split the evaluation never sees (dream.bench.tune).
CPU_TREE = TreeConfig(top_k=3, depth=5, total_tokens=12)
