"""The target adapter: one interface over stock transformers VLMs (see docs/design.md)."""

from .adapter import AttentionStats, ForwardOutput, TargetAdapter
from .cache import TargetCache
from .inputs import TargetInputs
from .loading import load_target, resolve_target_path

__all__ = ["AttentionStats", "ForwardOutput", "TargetAdapter", "TargetCache", "TargetInputs", "load_target", "resolve_target_path"]
