"""The easy-vqa train split as tensors for `train_vision`, and the packed turns of one image."""

from __future__ import annotations

import math

import numpy as np
import torch

from dream.zoo import data as D


class Images:
    """The train split as tensors, split into train / validation ids."""

    def __init__(self, val_images: int):
        self.split = D.load_split("train")
        n = len(self.split.image_ids)
        stride = n // val_images
        val = set(range(0, n, stride)[:val_images])
        self.val_rows = sorted(val)
        self.train_rows = [r for r in range(n) if r not in val]
        pixels = torch.from_numpy(self.split.pixels).permute(0, 3, 1, 2).float()
        self.pixel_values = (pixels / 255.0 - 0.5) / 0.5                      # [N, 3, 64, 64], as the processor
        self.masks = torch.from_numpy(self.split.masks).float()               # [N, 64, 64]
        facts = [self.split.facts[i] for i in self.split.image_ids]
        self.color = torch.tensor([D.COLORS.index(f.color) for f in facts])
        self.shape = torch.tensor([D.SHAPES.index(f.shape) for f in facts])
        self.geometry = torch.tensor([[f.cx, f.cy, math.sqrt(f.area)] for f in facts])

    def facts(self, row: int, flip: bool) -> D.ImageFacts:
        f = self.split.facts[self.split.image_ids[row]]
        return f.flipped() if flip else f

    def qa(self, row: int) -> list[tuple[str, str]]:
        return self.split.qa[self.split.image_ids[row]]


def turns_for(images: Images, row: int, flip: bool, rng: np.random.Generator, max_qa: int, yes_no: int,
              own_yes_no: bool = True):
    """Up to `max_qa` easy-vqa turns of an image, `yes_no` balanced yes/no turns, a description, one more question."""
    facts = images.facts(row, flip)
    qa = [(q, a) for q, a in images.qa(row) if own_yes_no or a not in ("yes", "no")]
    rng.shuffle(qa)
    turns = [(_capitalised_half_the_time(q, rng), D.answer_text(a)) for q, a in qa[:max_qa]]
    for _ in range(yes_no):
        question, answer = D.yes_no_qa(facts, rng)
        turns.append((_capitalised_half_the_time(question, rng), D.answer_text(answer)))
    prompt = D.DESCRIBE_PROMPTS[int(rng.integers(len(D.DESCRIBE_PROMPTS)))]
    turns.append((prompt, D.describe(facts, rng)))
    turns.append(D.extra_qa(facts, rng))
    return turns


def _capitalised_half_the_time(question: str, rng: np.random.Generator) -> str:
    """easy-vqa's questions are lower case; users capitalise theirs."""
    return question[0].upper() + question[1:] if rng.random() < 0.5 else question
