"""Is a zoo target visibly real? easy-vqa test accuracy and free-form descriptions, via the stock API.

Everything here goes through `AutoModelForImageTextToText` / `AutoProcessor` and `generate` (batched
greedy), exactly as a user of the built directory would. Accuracy is exact-answer: the generated
reply, lowercased and stripped of surrounding whitespace and a final '.', equals the easy-vqa answer.
With `n_questions` below the 9,673 test questions, the subset is fixed: a seed-0 sample without
replacement (numpy `default_rng(0).choice`), in test-file order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dream.zoo import data as D

DESCRIBE = "Describe this image."


@dataclass
class CheckResult:
    n_questions: int
    accuracy: float
    by_kind: dict[str, float]
    descriptions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def test_subset(n_questions: int | None, total: int) -> np.ndarray:
    """Indices into the easy-vqa test questions: all, or the fixed seed-0 sample of `n_questions`."""
    if n_questions is None or n_questions >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(0).choice(total, size=n_questions, replace=False))


def _prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def generate_replies(model, processor, images, questions, *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies, batched with left padding."""
    processor.tokenizer.padding_side = "left"
    replies = []
    for start in range(0, len(questions), batch_size):
        qs, ims = questions[start:start + batch_size], images[start:start + batch_size]
        inputs = processor(text=[_prompt(processor, q) for q in qs], images=[[im] for im in ims],
                           padding=True, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        replies += processor.batch_decode(new, skip_special_tokens=True)
    return replies


def natural_images() -> dict[str, "PIL.Image.Image"]:     # noqa: F821
    from PIL import Image
    from skimage import data

    return {"astronaut": Image.fromarray(data.astronaut()), "coffee": Image.fromarray(data.coffee())}


def check(name_or_path: str = "smolvlm-135m", n_questions: int | None = 1000, *, batch_size: int = 32,
          describe_test_images: int = 3, dtype: torch.dtype = torch.bfloat16, threads: int = 2,
          verbose: bool = True) -> CheckResult:
    """Print (and return) easy-vqa test exact-answer accuracy and a few "Describe this image." replies."""
    import easy_vqa
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dream.zoo.build import resolve_target

    t0 = time.time()
    torch.set_num_threads(threads)
    path = resolve_target(name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(path)
    split = D.load_split("test")
    row_of = {image_id: k for k, image_id in enumerate(split.image_ids)}
    questions, answers, image_ids = easy_vqa.get_test_questions()          # easy-vqa's own order
    image_rows = [row_of[i] for i in image_ids]
    chosen = test_subset(n_questions, len(questions))
    qs = [questions[i] for i in chosen]
    ims = [Image.fromarray(split.pixels[image_rows[i]]) for i in chosen]
    replies = generate_replies(model, processor, ims, qs, max_new_tokens=8, batch_size=batch_size)
    hits = {"yes/no": [], "color": [], "shape": []}
    for i, reply in zip(chosen, replies):
        a = answers[i]
        kind = "yes/no" if a in ("yes", "no") else "color" if a in D.COLORS else "shape"
        hits[kind].append(D.normalize_answer(reply) == a)
    all_hits = [h for v in hits.values() for h in v]
    accuracy = float(np.mean(all_hits))
    by_kind = {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    if verbose:
        print(f"easy-vqa test exact-answer accuracy: {accuracy:.4f} on {len(all_hits)} questions "
              f"({', '.join(f'{k} {v:.4f}' for k, v in by_kind.items())})")
        for q, r, i in list(zip(qs, replies, chosen))[:5]:
            print(f"  Q: {q!r} -> {r!r} (answer {answers[i]!r})")

    named = {f"test image {split.image_ids[k]}": Image.fromarray(split.pixels[k]) for k in range(describe_test_images)}
    named.update(natural_images())
    texts = generate_replies(model, processor, list(named.values()), [DESCRIBE] * len(named),
                             max_new_tokens=96, batch_size=batch_size)
    descriptions = dict(zip(named, texts))
    if verbose:
        for k in range(describe_test_images):
            f = split.facts[split.image_ids[k]]
            print(f"[{f.color} {f.shape}]", end=" ")
        print()
        for name, text in descriptions.items():
            print(f"{DESCRIBE!r} on {name}: {text!r}")
    result = CheckResult(len(all_hits), accuracy, by_kind, descriptions, time.time() - t0)
    if verbose:
        print(f"check took {result.seconds:.0f} s")
    return result
