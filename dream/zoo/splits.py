"""Evaluation and dev prompts for the zoo target's drafts, disjoint from draft training by construction.

  eval-seen    in-distribution: training image kinds and training templates, on pictures training never
               saw (new procedural draws; photos and easy-vqa images from pools training does not use).
  eval-unseen  leave-kind-out: only HELD_OUT_KINDS (pie charts, tables, diagrams) and only held-out
               templates, so neither the pictures' kind nor the prompts' wording was ever in training.
  dev          for tuning (e.g. the tree shape): like eval-seen (training kinds and templates), with its own
               draws and instance pools, disjoint from both evaluation splits.

Every prompt has an image (bench prompts files require one), so the multi-turn and text-only prompt kinds
are training-only. `scripts/make_prompts.py` writes these as bench prompts files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dream.zoo.draft_data import image_sample
from dream.zoo.kinds import HELD_OUT_KINDS, TRAIN_KINDS
from dream.zoo.templates import IMAGE_PROMPT_KINDS

SPLIT_SIZES = {"eval-seen": 36, "eval-unseen": 36, "dev": 20}
_STREAMS = {"eval-seen": 1, "eval-unseen": 2, "dev": 3}   # training uses default_rng(seed): other streams
_POOLS = {"eval-seen": "eval", "eval-unseen": "eval", "dev": "dev"}


@dataclass(frozen=True)
class SplitPrompt:
    split: str
    image_kind: str
    prompt_kind: str
    template: str
    prompt: str
    image: Image.Image


def split_prompts(split: str, seed: int = 0) -> list[SplitPrompt]:
    """The prompts of one split: image kinds and prompt kinds each in rotation. Their counts (3 or 11, and 8)
    are coprime, so the first 24 (or 88) prompts are all distinct (image kind, prompt kind) pairs."""
    rng = np.random.default_rng([seed, _STREAMS[split]])
    kinds = HELD_OUT_KINDS if split == "eval-unseen" else TRAIN_KINDS
    assert math.gcd(len(kinds), len(IMAGE_PROMPT_KINDS)) == 1, "the rotations would repeat pairs early"
    prompts = []
    for n in range(SPLIT_SIZES[split]):
        image_kind = kinds[n % len(kinds)]
        prompt_kind = IMAGE_PROMPT_KINDS[n % len(IMAGE_PROMPT_KINDS)]
        sample = image_sample(rng, image_kind, prompt_kind, split=_POOLS[split], held_out=split == "eval-unseen")
        (template, prompt), = sample.turns
        prompts.append(SplitPrompt(split, image_kind, prompt_kind, template, prompt, sample.image))
    return prompts
