"""Shared test setup: offline hub, quiet transformers, and the tiny target fixtures."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: a hub lookup must never happen
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path
from typing import Callable

import pytest
import torch

from fixtures import build_tiny_target

# Test models are tiny: with 2 intra-op threads on a shared 2-core machine, OpenMP hand-offs cost more than
# the maths (the target tests ran 7x slower under load). Subprocesses are not affected.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Back to one intra-op thread for a module, whatever an earlier test (e.g. the bench CLI) set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_target_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_target_path(family) -> directory of a tiny random checkpoint (built once per session)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_target(family, tmp_path_factory.mktemp(f"tiny_{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_target(tiny_target_path: Callable[[str], Path]):
    """tiny_target(family) -> TargetAdapter (fp32) loaded from the tiny checkpoint, shared per session."""
    from dream.target import TargetAdapter

    loaded: dict[str, TargetAdapter] = {}

    def get(family: str) -> TargetAdapter:
        if family not in loaded:
            loaded[family] = TargetAdapter.from_pretrained(tiny_target_path(family))
        return loaded[family]

    return get
