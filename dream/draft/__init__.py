"""Draft models (DREAM and the EAGLE-2 / EAGLE-3 baselines), their proposer, and their checkpoints."""

from .base import DraftModel, DraftOutput, DraftState, num_parameters
from .blocks import CrossAttentionBlock
from .checkpoint import DraftCheckpoint, build_draft, load_draft, read_draft_config, save_draft
from .config import DraftConfig
from .dream_model import DreamDraft
from .eagle3_model import Eagle3Draft
from .eagle_model import Eagle2Draft
from .head import SharedHead, frequent_vocab_map, target_head
from .proposer import DraftProposer

__all__ = [
    "CrossAttentionBlock",
    "DraftCheckpoint",
    "DraftConfig",
    "DraftModel",
    "DraftProposer",
    "DraftOutput",
    "DraftState",
    "DreamDraft",
    "Eagle2Draft",
    "Eagle3Draft",
    "SharedHead",
    "build_draft",
    "frequent_vocab_map",
    "load_draft",
    "num_parameters",
    "read_draft_config",
    "save_draft",
    "target_head",
]
