"""Arguments every verb spells the same way (dream.settings holds the values and defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dream.method_names import canonical
from dream.methods import CPU_TREE, DraftSpec, draft_spec
from dream.settings import DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_MAX_NEW_TOKENS, DEVICES, resolve_dtype_name
from dream.target.invariance import POLICIES
from dream.tree import TreeConfig


def add_target_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="checkpoint directory or zoo name (smolvlm-135m)")


def add_dtype_argument(parser: argparse.ArgumentParser, what: str = "target compute dtype") -> None:
    # Resolved while parsing, so every verb sees bf16 or fp32 and records what it ran.
    parser.add_argument("--dtype", type=resolve_dtype_name, default=DEFAULT_DTYPE, metavar="{auto,bf16,fp32}",
                        help=f"{what}; auto (default): bf16 where this machine runs bf16 matmuls natively "
                             f"(CUDA, AVX-512 BF16, AMX), else fp32")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE,
                        help="auto: the GPU when there is one (this rank's under torchrun), else the CPU")


def add_batch_invariant_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-invariant", choices=POLICIES, default="auto",
                        help="pad the target's linear calls whose row count takes another CPU kernel, so a tree "
                             "verify rounds as a decoding step does (dream.target.invariance); auto (default): "
                             "where that makes a decoding step at most 5 %% slower")


def add_max_new_tokens_argument(parser: argparse.ArgumentParser, what: str = "per answer") -> None:
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"new tokens {what} (default {DEFAULT_MAX_NEW_TOKENS})")


def add_tree_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CPU_TREE
    parser.add_argument("--tree-top-k", type=int, default=defaults.top_k,
                        help=f"children per frontier node and frontier width (default {defaults.top_k})")
    parser.add_argument("--depth", type=int, default=defaults.depth,
                        help=f"draft steps per round; also pld's chain length (default {defaults.depth})")
    parser.add_argument("--total-tokens", type=int, default=defaults.total_tokens,
                        help=f"draft nodes kept per tree (default {defaults.total_tokens})")


def tree_from_args(args: argparse.Namespace) -> TreeConfig:
    return TreeConfig(top_k=args.tree_top_k, depth=args.depth, total_tokens=args.total_tokens)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


# ---- flag strings -> library values --------------------------------------------------------------------------
def parse_draft_arg(text: str) -> DraftSpec:
    """`NAME=DIR`, or a bare `DIR` named after its architecture; the config is read and checked here."""
    name, sep, path = text.partition("=")
    if not sep or "/" in name:          # a bare directory whose path happens to contain "="
        name, path = "", text
    return draft_spec(Path(path), name or None)


def parse_keep_ratios(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        ratios = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--keep-ratios must be comma-separated numbers, got {text!r}") from None
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if bad:
        raise ValueError(f"keep ratios must be in (0, 1], got {bad}")
    return ratios


def parse_methods(text: str | None) -> list[str] | None:
    """`--methods ar,hf,dream` -> the names (None when not given); the former vLLM names base / ngram are
    read as ar / pld (dream.method_names)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ValueError(f"--methods must be comma-separated method names, got {text!r}")
    return [canonical(name) for name in names]
