"""easy-vqa as grounded training text: labels, pixel measurements, QA pairs and descriptions.

Every easy-vqa image holds one shape of one colour on a light background. An image's colour and
shape come from its QA answers ("what color is the shape?" -> blue, "is there a circle?" -> yes ...);
where its questions leave one open, from the pixels (the palette colour nearest the shape's pixels;
circle / rectangle / triangle from how much of its bounding box it fills). Size and position are
measured from the pixels. Descriptions are built from these facts with varied phrasings, so they
are fluent and grounded (every word about the image is true of it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
           "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42), "yellow": (255, 255, 0)}
_NEGATION = re.compile(r"\b(not|no)\b")


@dataclass(frozen=True)
class ImageFacts:
    color: str
    shape: str
    area: float                         # fraction of the image the shape covers
    cx: float                           # centroid, 0 = left edge, 1 = right edge
    cy: float                           # centroid, 0 = top, 1 = bottom
    box: tuple[int, int, int, int]      # x0, y0, x1, y1 (inclusive) of the shape's pixels
    side: int                           # image side in pixels

    def flipped(self) -> "ImageFacts":
        """The facts of the horizontally mirrored image."""
        x0, y0, x1, y1 = self.box
        return replace(self, cx=1.0 - self.cx, box=(self.side - 1 - x1, y0, self.side - 1 - x0, y1))

    @property
    def touches(self) -> tuple[str, ...]:
        x0, y0, x1, y1 = self.box
        edges = (("left", x0 == 0), ("top", y0 == 0), ("right", x1 == self.side - 1),
                 ("bottom", y1 == self.side - 1))
        return tuple(name for name, hit in edges if hit)


# ------------------------------------------------------------------------------------------- labels
def labels_from_qa(questions, answers, image_ids) -> dict[int, dict[str, str]]:
    """{image_id: {"color": c, "shape": s}} for what the QA pairs determine (one value each)."""
    seen: dict[int, dict[str, set]] = {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        facts = seen.setdefault(image_id, {"color": set(), "shape": set()})
        if answer in COLORS:
            facts["color"].add(answer)
        elif answer in SHAPES:
            facts["shape"].add(answer)
        elif answer in ("yes", "no"):
            present = (answer == "yes") != bool(_NEGATION.search(question))
            if present:
                for word in re.findall(r"[a-z]+", question):
                    if word in COLORS:
                        facts["color"].add(word)
                    elif word in SHAPES:
                        facts["shape"].add(word)
    out = {}
    for image_id, facts in seen.items():
        out[image_id] = {k: next(iter(v)) for k, v in facts.items() if len(v) == 1}
        if any(len(v) > 1 for v in facts.values()):
            raise ValueError(f"easy-vqa image {image_id}: contradictory labels {facts}")
    return out


def shape_mask(pixels: np.ndarray, threshold: int = 48) -> np.ndarray:
    """[H, W] bool: pixels that differ from the background (the most common border colour) by > threshold."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.int32)
    colors, counts = np.unique(border, axis=0, return_counts=True)
    background = colors[counts.argmax()]
    return np.abs(pixels.astype(np.int32) - background).max(-1) > threshold


def measure(pixels: np.ndarray) -> dict:
    """Pixel facts of an [H, W, 3] uint8 easy-vqa image: area, centroid, box, colour and shape guesses."""
    mask = shape_mask(pixels)
    side = pixels.shape[0]
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("no shape found in the image")
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    core = pixels[mask].astype(np.int32)
    mode = np.median(core, axis=0)
    color = min(PALETTE, key=lambda c: np.abs(np.array(PALETTE[c]) - mode).sum())
    fill = mask.sum() / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
    shape = "rectangle" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    return dict(area=float(mask.mean()), cx=float((xs.mean() + 0.5) / side), cy=float((ys.mean() + 0.5) / side),
                box=box, side=side, color=color, shape=shape, mask=mask)


def image_facts(pixels: np.ndarray, labels: dict[str, str]) -> ImageFacts:
    """Facts of one image: colour/shape from `labels` where known, else from the pixels."""
    m = measure(pixels)
    return ImageFacts(color=labels.get("color", m["color"]), shape=labels.get("shape", m["shape"]),
                      area=m["area"], cx=m["cx"], cy=m["cy"], box=m["box"], side=m["side"])


# ------------------------------------------------------------------------------------------- words
def size_word(area: float) -> str:
    return "tiny" if area < 0.025 else "small" if area < 0.06 else "medium-sized" if area < 0.12 else "large"


def _cell(f: ImageFacts) -> tuple[str, str]:
    v = "top" if f.cy < 1 / 3 else "bottom" if f.cy > 2 / 3 else "middle"
    h = "left" if f.cx < 1 / 3 else "right" if f.cx > 2 / 3 else "center"
    return v, h


# (vertical, horizontal) -> (region noun phrase, where-phrase)
_PLACES = {
    ("top", "left"): ("upper left part", "near the top left corner"),
    ("top", "center"): ("top part", "near the top, roughly in the middle"),
    ("top", "right"): ("upper right part", "near the top right corner"),
    ("middle", "left"): ("left part", "on the left side"),
    ("middle", "center"): ("center", "right in the middle"),
    ("middle", "right"): ("right part", "on the right side"),
    ("bottom", "left"): ("lower left part", "near the bottom left corner"),
    ("bottom", "center"): ("bottom part", "near the bottom, roughly in the middle"),
    ("bottom", "right"): ("lower right part", "near the bottom right corner"),
}


def place(f: ImageFacts) -> tuple[str, str]:
    return _PLACES[_cell(f)]


def percent(area: float) -> str:
    pct = round(area * 100)
    return "less than one percent" if pct < 1 else "about one percent" if pct == 1 else f"about {pct} percent"


def _shape_detail(f: ImageFacts) -> str | None:
    x0, y0, x1, y1 = f.box
    if f.shape == "circle":
        return "It is perfectly round."
    if f.shape == "triangle":
        return "It points upwards, with a flat base at the bottom."
    ratio = (x1 - x0 + 1) / (y1 - y0 + 1)
    return ("It is wider than it is tall." if ratio > 1.3 else "It is taller than it is wide." if ratio < 0.77
            else "It is almost a square.")


def describe(f: ImageFacts, rng: np.random.Generator) -> str:
    """A 3-5 sentence description, phrasings drawn from `rng`."""
    c, s, size = f.color, f.shape, size_word(f.area)
    region, where = place(f)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    opening = pick([
        f"The image shows a {size} {c} {s} on a plain, light background.",
        f"This is a simple picture of a {size} {c} {s}.",
        f"In this image there is a single {c} {s}.",
        f"A {size} {c} {s} is drawn on an almost white background.",
        f"The picture contains one {c} {s} on a light, empty background.",
        f"This image shows a {c} {s}.",
    ])
    location = pick([
        f"It is located in the {region} of the image.",
        f"The {s} sits {where}.",
        f"You can see it {where} of the picture." if "side" in where else f"You can see it {where}.",
        f"It is placed in the {region} of the frame.",
    ])
    extent = pick([
        f"It covers {percent(f.area)} of the image.",
        f"The {s} is {size}, taking up {percent(f.area)} of the picture.",
        f"It fills {percent(f.area)} of the frame.",
    ])
    sentences = [opening] + ([location, extent] if rng.random() < 0.5 else [extent, location])
    detail = _shape_detail(f)
    if detail and rng.random() < 0.6:
        sentences.insert(1 + int(rng.integers(len(sentences))), detail)
    if f.touches and rng.random() < 0.8:
        edge = " and ".join(f.touches)
        sentences.append(pick([f"Part of it touches the {edge} edge of the image.",
                               f"It reaches the {edge} edge of the picture."]))
    sentences.append(pick([
        "There is nothing else in the image.",
        f"Apart from the {s}, the image is empty.",
        "The rest of the image is empty.",
        f"The {c} color stands out clearly against the pale background.",
    ]))
    return " ".join(sentences)


DESCRIBE_PROMPTS = (
    "Describe this image.", "Describe the image.", "Describe this image in detail.",
    "What do you see in this image?", "What is in this picture?", "Can you describe this picture?",
    "Tell me about this image.", "Give a short description of the image.", "What does this image show?",
)


def extra_qa(f: ImageFacts, rng: np.random.Generator) -> tuple[str, str]:
    """One grounded question beyond easy-vqa's: position, size, colour + shape or count."""
    c, s, size = f.color, f.shape, size_word(f.area)
    region, where = place(f)
    kind = int(rng.integers(4))
    pick = lambda options: options[int(rng.integers(len(options)))]     # noqa: E731
    if kind == 0:
        q = pick(["Where is the shape?", f"Where is the {c} {s}?", f"Where in the image is the {s}?"])
        a = pick([f"The {c} {s} is {where}.", f"It is in the {region} of the image."])
    elif kind == 1:
        q = pick(["How big is the shape?", f"How large is the {s}?", "Is the shape big or small?"])
        a = f"The {s} is {size}. It covers {percent(f.area)} of the image."
    elif kind == 2:
        q = pick(["What color and shape is the object in the image?", "Name the color and the shape of the object.",
                  "What kind of shape is shown, and what color is it?"])
        a = pick([f"It is a {c} {s}.", f"The image shows a {c} {s}."])
    else:
        q = pick(["How many shapes are in the image?", "How many objects are there?"])
        a = pick([f"There is only one shape in the image: a {c} {s}.", f"There is exactly one, a {c} {s}."])
    return q, a


# easy-vqa's own yes/no phrasings ({} = a colour + " shape", or a shape name)
_YES_NO = ("is there a {}?", "is there a {} in the image?", "does the image contain a {}?", "is a {} present?")
_YES_NO_NEGATED = ("is there not a {}?", "is there not a {} in the image?", "does the image not contain a {}?",
                   "is no {} present?")


def yes_no_qa(f: ImageFacts, rng: np.random.Generator) -> tuple[str, str]:
    """A balanced yes/no question in easy-vqa's phrasing: half about the image's own colour / shape.

    easy-vqa's own yes/no questions mostly ask about an absent colour or shape, so "is there a X?" ->
    "no" and "is there not a X?" -> "yes" score ~82 % without looking at the image; a model trained on
    them alone learns exactly that. These questions make the image necessary.
    """
    about_color = rng.random() < 0.5
    true_value = f.color if about_color else f.shape
    values = COLORS if about_color else SHAPES
    value = true_value if rng.random() < 0.5 else [v for v in values if v != true_value][int(rng.integers(len(values) - 1))]
    negated = rng.random() < 0.5
    templates = _YES_NO_NEGATED if negated else _YES_NO
    question = templates[int(rng.integers(len(templates)))].format(f"{value} shape" if about_color else value)
    answer = "yes" if (value == true_value) != negated else "no"
    return question, answer


def answer_text(answer: str) -> str:
    """The assistant's reply to an easy-vqa question: 'blue' -> 'Blue.'"""
    return answer.capitalize() + "."


def normalize_answer(text: str) -> str:
    """The reverse, for exact-answer scoring: ' Blue.\\n' -> 'blue'."""
    return text.strip().strip(".!").strip().lower()


# ------------------------------------------------------------------------------------------ easy-vqa
@dataclass(frozen=True)
class EasyVQASplit:
    image_ids: list[int]                  # sorted
    pixels: np.ndarray                    # [N, 64, 64, 3] uint8, row i = image_ids[i]
    qa: dict[int, list[tuple[str, str]]]  # image_id -> [(question, answer word)]
    facts: dict[int, ImageFacts]
    masks: np.ndarray                     # [N, 64, 64] bool, the shape's pixels


@lru_cache(maxsize=2)
def load_split(split: str) -> EasyVQASplit:
    """'train' or 'test' from the easy-vqa package (its PNGs, questions and answers)."""
    import easy_vqa
    from PIL import Image

    if split == "train":
        questions, answers, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"unknown easy-vqa split {split!r}")
    image_ids = sorted(paths)
    pixels = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in image_ids])
    qa: dict[int, list[tuple[str, str]]] = {i: [] for i in image_ids}
    for question, answer, image_id in zip(questions, answers, ids):
        qa[image_id].append((question, answer))
    labels = labels_from_qa(questions, answers, ids)
    facts = {i: image_facts(pixels[k], labels.get(i, {})) for k, i in enumerate(image_ids)}
    masks = np.stack([shape_mask(p) for p in pixels])
    return EasyVQASplit(image_ids, pixels, qa, facts, masks)


# ------------------------------------------------------------------------------- text-only prompts
# Prompts without an image. Training also fits SmolLM2's own (LoRA-free) greedy replies to these, so the
# LoRA delta does not turn every answer into a shape description (without them, "Write a short poem about
# the sea." came back as "The sea is a vast, blue rectangle ..." after 200 steps).
_TEXT_TEMPLATES = (
    "What is {}?", "Explain {} in simple terms.", "Write a short poem about {}.", "Give me three facts about {}.",
    "Why is {} important?", "Write one sentence about {}.", "How would you describe {} to a child?",
)
_TEXT_TOPICS = (
    "the sea", "the moon", "photosynthesis", "gravity", "the internet", "coffee", "a rainbow", "volcanoes",
    "honey bees", "the Roman Empire", "music", "friendship", "electricity", "the human heart", "mountains",
    "recycling", "the solar system", "chess", "bread", "rain", "trees", "the ocean tides", "computers",
    "democracy", "dinosaurs", "the color blue", "cats", "a triangle", "circles", "exercise", "sleep", "snow",
    "deserts", "the printing press", "bicycles", "vaccines", "the Eiffel Tower", "mathematics", "birds", "a red square",
)
_TEXT_EXTRA = (
    "What is the capital of France?", "Translate 'good morning' into Spanish.", "What is 12 times 7?",
    "List three primary colors.", "Tell me a joke.", "Summarize the plot of Romeo and Juliet in two sentences.",
    "How many days are in a leap year?", "Give me a tip for learning a new language.", "What is a haiku?",
    "Suggest a name for a pet goldfish.", "What should I pack for a day at the beach?", "Hello! How are you?",
    "Describe a sunset in two sentences.", "What is the difference between a circle and a sphere?",
    "Write a short story about a yellow triangle.", "Name three shapes with straight sides.",
)


def text_prompts() -> list[str]:
    """Fixed, ordered text-only prompts (template x topic, then extras)."""
    return [t.format(topic) for topic in _TEXT_TOPICS for t in _TEXT_TEMPLATES] + list(_TEXT_EXTRA)
