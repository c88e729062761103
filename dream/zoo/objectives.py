"""What `train_vision` optimises and measures: stage-1 tower heads and losses, stage-2 evaluations.

Validation "exact" is greedy-exact by construction: an answer counts when the argmax at every answer
position (its <|im_end|> included) is the answer token, which is what greedy decoding would emit.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dream.zoo import data as D
from dream.zoo.packing import Packer, pack, packed_loss
from dream.zoo.train_data import Images


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------------------------------- stage 1
class VisionHeads(nn.Module):
    """Supervision heads on the tower (not shipped): colour, shape, per-patch coverage, geometry."""

    def __init__(self, hidden: int):
        super().__init__()
        self.color = nn.Linear(hidden, len(D.COLORS))
        self.shape = nn.Linear(hidden, len(D.SHAPES))
        self.coverage = nn.Linear(hidden, 1)
        self.geometry = nn.Linear(hidden, 3)

    def forward(self, features):                       # [B, P, H]
        pooled = features.mean(1)
        return (self.color(pooled), self.shape(pooled), self.coverage(features).squeeze(-1),
                self.geometry(pooled))


def vision_losses(tower, heads, images: Images, rows, flips, patch: int):
    pixels = images.pixel_values[rows]
    masks = images.masks[rows]
    geometry = images.geometry[rows].clone()
    if flips.any():
        pixels[flips] = pixels[flips].flip(-1)
        masks[flips] = masks[flips].flip(-1)
        geometry[flips, 0] = 1.0 - geometry[flips, 0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = tower(pixel_values=pixels).last_hidden_state
        color, shape, coverage, geo = heads(features)
    coverage_target = F.avg_pool2d(masks[:, None], patch).flatten(1)          # [B, P] fraction covered
    losses = dict(
        color=F.cross_entropy(color.float(), images.color[rows]),
        shape=F.cross_entropy(shape.float(), images.shape[rows]),
        coverage=F.binary_cross_entropy_with_logits(coverage.float(), coverage_target),
        geometry=10 * F.mse_loss(geo.float(), geometry),
    )
    acc = dict(color=(color.argmax(-1) == images.color[rows]).float().mean().item(),
               shape=(shape.argmax(-1) == images.shape[rows]).float().mean().item())
    return losses, acc


@torch.no_grad()
def eval_vision(tower, heads, images: Images, patch: int) -> dict:
    rows = torch.tensor(images.val_rows)
    _, acc = vision_losses(tower, heads, images, rows, torch.zeros(len(rows), dtype=torch.bool), patch)
    return acc


# ---------------------------------------------------------------------------------------- stage 2
@torch.no_grad()
def distill_text(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str | None]:
    """The model's greedy replies to text-only prompts (None where it did not finish)."""
    tokenizer.padding_side = "left"
    replies: list[str | None] = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts[start:start + batch_size]]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        for row in out[:, inputs.input_ids.shape[1]:].tolist():
            finished = tokenizer.eos_token_id in row
            text = tokenizer.decode(row[: row.index(tokenizer.eos_token_id)] if finished else row)
            replies.append(text.strip() if finished and text.strip() else None)
        log(f"text distillation: {min(start + batch_size, len(prompts))}/{len(prompts)} prompts")
    return replies


@torch.no_grad()
def eval_text(model, packer: Packer, pairs: list[tuple[str, str]], new_rows) -> float:
    """Teacher-forced token accuracy on held-out (prompt, SmolLM2 reply) pairs."""
    correct, total = 0, 0
    for start in range(0, len(pairs), 4):
        batch = pack(packer, [(None, pairs[start:start + 4])])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, hit, _ = packed_loss(model, batch, packer.image_token_id, packer.new_token_ids, new_rows)
        correct += int(hit.sum())
        total += hit.numel()
    return correct / total


@torch.no_grad()
def eval_lm(model, packer: Packer, images: Images, new_rows, num_images: int) -> dict:
    """Greedy-exact accuracy on the held-out images' easy-vqa questions (+ description token accuracy)."""
    rows = images.val_rows[:num_images]
    exact, total, desc_correct, desc_total = 0, 0, 0, 0
    by_kind = {"yes/no": [0, 0], "color": [0, 0], "shape": [0, 0]}
    rng = np.random.default_rng(12345)
    for start in range(0, len(rows), 4):
        convs, kinds = [], []
        for row in rows[start:start + 4]:
            qa = images.qa(row)
            turns = [(q, D.answer_text(a)) for q, a in qa]
            kinds += ["yes/no" if a in ("yes", "no") else "color" if a in D.COLORS else "shape" for _, a in qa]
            turns.append(("Describe this image.", D.describe(images.facts(row, False), rng)))
            kinds.append("describe")
            convs.append((images.pixel_values[row], turns))
        batch = pack(packer, convs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, correct, turn_exact = packed_loss(model, batch, packer.image_token_id, packer.new_token_ids, new_rows)
        for t, kind in enumerate(kinds):
            if kind == "describe":
                hit = correct[batch.turn_of == t]
                desc_correct += hit.sum().item()
                desc_total += hit.numel()
            else:
                by_kind[kind][0] += int(turn_exact[t])
                by_kind[kind][1] += 1
                exact += int(turn_exact[t])
                total += 1
    out = {"exact": exact / total, "describe_token_acc": desc_correct / desc_total}
    out.update({k: v[0] / max(v[1], 1) for k, v in by_kind.items()})
    return out
