"""Prompt templates by prompt kind, each split into training templates and held-out ones.

A template is a format string over slots filled per sample: {thing} / {things} (what the image kind holds,
e.g. "bar" / "bars"), {color}, and for text-only prompts {topic}, {activity}, {country}, {a}, {b}.
`held_out` templates never appear in draft training; the unseen-kinds evaluation split uses only them
(with held-out image kinds), so it tests phrasings the draft has not seen as well as pictures.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from dream.zoo.kinds.common import COLORS, pick


@dataclass(frozen=True)
class Templates:
    train: tuple[str, ...]
    held_out: tuple[str, ...]
    with_image: bool = True    # False: a text-only first turn (no image in the conversation)


PROMPT_KINDS: dict[str, Templates] = {
    "describe": Templates(
        ("Describe this image.", "Describe the image in a few sentences.", "What do you see in this picture?",
         "Give a short description of this image.", "What is shown here?", "Tell me about this image.",
         "Write a caption for this image.", "Describe the {things} in this image."),
        ("Paint a picture with words of what this image contains.",
         "If you had to explain this image over the phone, what would you say?",
         "Give a detailed account of everything visible here.")),
    "count": Templates(
        ("How many {things} are in the image?", "Count the {things} in this picture.", "How many {things} can you see?",
         "What is the number of {things} shown?"),
        ("Tally up the {things} you can spot and give me the total.",
         "Are there more than three {things} here? Give the exact number.")),
    "locate": Templates(
        ("Where is the {color} {thing}?", "Where is the largest {thing} in the image?",
         "Which part of the image is the brightest?", "What is in the top left corner of the image?"),
        ("Point out the position of the {thing} closest to the center.",
         "Which corner of the picture is the most empty?")),
    "compare": Templates(
        ("Which {thing} is the largest?", "Compare the left and right halves of the image.",
         "Are the {things} the same color?", "What is the difference between the top and the bottom of the image?"),
        ("Rank the {things} from smallest to largest.", "Which two {things} look the most alike, and why?")),
    "read": Templates(
        ("What does the text say?", "Read the text in this image.", "What is written in the image?",
         "What is the title?"),
        ("Transcribe every word you can make out, line by line.", "Which word in the image is the longest?")),
    "yesno": Templates(
        ("Is there a {color} {thing} in the image?", "Is this a photograph?", "Does the image contain any text?",
         "Is the background {color}?", "Are there more than two {things}?"),
        ("Would you say this picture is mostly {color}? Answer yes or no.",
         "Can you see any {things} overlapping each other?")),
    "reasoning": Templates(
        ("What might this image be used for?", "Why do you think the image looks like this?",
         "What can you infer from this image?", "What would happen if one of the {things} were removed?"),
        ("Imagine you are a teacher: what lesson could this picture illustrate?",
         "What is the most surprising detail here, and what explains it?")),
    "instruction": Templates(
        ("List three things you notice in this image.", "Write a short story inspired by this image.",
         "Write one sentence about this picture.", "Describe this image in exactly two sentences.",
         "Give this image a title."),
        ("Compose a four-line poem about this picture.",
         "Write a product description as if this image were for sale.")),
    "follow_up": Templates(   # a second, text-only turn of a multi-turn conversation about an image
        ("Can you say more?", "Why do you think so?", "Summarize that in one sentence.", "What else do you notice?",
         "What colors stand out?"),
        ("Rewrite your answer as a bulleted list.", "Explain that to a five-year-old.")),
    "text_only": Templates(
        ("What is {a} plus {b}?", "Write a short poem about {topic}.", "Explain what {topic} is in two sentences.",
         "Give three tips for {activity}.", "What is the capital of {country}?", "Tell me a fun fact about {topic}.",
         "How do I get better at {activity}?"),
        ("Write a limerick about {topic}.", "Argue for and against {activity} in three sentences."),
        with_image=False),
}
IMAGE_PROMPT_KINDS = tuple(k for k in PROMPT_KINDS if PROMPT_KINDS[k].with_image and k != "follow_up")

_TOPICS = ("the moon", "rain", "volcanoes", "bees", "the ocean", "trains", "clouds", "chess", "bread", "music",
           "gravity", "forests", "penguins", "libraries")
_ACTIVITIES = ("running", "cooking", "learning a language", "drawing", "saving money", "sleeping well",
               "gardening", "public speaking")
_COUNTRIES = ("France", "Japan", "Canada", "Brazil", "Kenya", "Italy", "Norway", "Egypt", "Mexico", "India")


def render(template: str, rng: np.random.Generator, thing: str = "object", things: str = "objects") -> str:
    """Fill the template's slots; only the slots it names draw from the RNG (a stable draw order)."""
    values: dict[str, str] = {}
    for slot in _slots(template):
        if slot == "thing":
            values[slot] = thing
        elif slot == "things":
            values[slot] = things
        elif slot == "color":
            values[slot] = pick(rng, tuple(COLORS))
        elif slot in ("a", "b"):
            values[slot] = str(int(rng.integers(2, 100)))
        else:
            values[slot] = pick(rng, {"topic": _TOPICS, "activity": _ACTIVITIES, "country": _COUNTRIES}[slot])
    return template.format(**values)


def _slots(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def matches(template: str, text: str) -> bool:
    """Whether `text` could have been rendered from `template` (any slot values)."""
    pattern = "".join(re.escape(literal) + (".+?" if field else "")
                      for literal, field, _, _ in string.Formatter().parse(template))
    return re.fullmatch(pattern, text) is not None
