"""The target adapter: one interface over stock transformers VLMs (see docs/design.md)."""

from .adapter import AttentionStats, ForwardOutput, TargetAdapter
from .attention import VERIFY_MODES, VerifyMode
from .cache import TargetCache
from .inputs import TargetInputs
from .loading import load_target, resolve_target_path

__all__ = ["VERIFY_MODES", "AttentionStats", "ForwardOutput", "TargetAdapter", "TargetCache", "TargetInputs",
           "VerifyMode", "load_target", "resolve_target_path"]
