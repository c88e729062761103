"""The serve-time target check: a draft folder against a target checkpoint folder, before vLLM starts and
without building the model (the fingerprint comes from dream.target.identity.checkpoint_fingerprint)."""

from __future__ import annotations

from pathlib import Path

from dream.draft.checkpoint import read_draft_config
from dream.target.identity import check_same_target, checkpoint_fingerprint


def check_draft_for_target(draft_dir: str | Path, target_dir: str | Path) -> None:
    """ValueError naming every field where the draft's recorded target and this target differ."""
    check_same_target(read_draft_config(draft_dir)["target"], checkpoint_fingerprint(target_dir), "draft", draft_dir)
