"""Draft-training data in: LLaVA conversation JSON, and conversations as target sequences.

LLaVA format: a JSON list of {"id", "image" (a file name, a list of them, or absent), "conversations":
[{"from": "human" | "gpt", "value": str}, ...]}; turns alternate human / gpt, starting with human and ending
with gpt; "<image>" in the human text marks where each image goes (as many as there are images).

A whole conversation becomes ONE target sequence (`conversation_inputs`) through the target's own chat
template. Answers are located in token space: the prompt of turn t (conversation so far plus the generation
prompt) must tokenize to a prefix of the whole sequence, and the answer runs from there to the first
end-of-turn token (one of the target's EOS ids, as when the target generates the answer itself).
The datagen output format is in dream.training.shards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from dream.images import read_image
from dream.target import TargetInputs
from dream.target.inputs import PER_TOKEN_KWARGS

IMAGE_TAG = "<image>"
ROLES = ("human", "gpt")
NO_END_OF_TURN = -1                # a span's marker when the template renders no EOS id after the answer
Answer = str | Sequence[int]   # a text answer, or the token ids the target generated (without its EOS)


@dataclass(frozen=True)
class Turn:
    prompt: str          # the human text; IMAGE_TAG marks each image
    answer: str          # the dataset's gpt answer


@dataclass(frozen=True)
class Conversation:
    index: int                   # position in the JSON list
    id: str
    images: tuple[str, ...]      # image files, relative to the image folder, in placeholder order
    turns: tuple[Turn, ...]


def load_llava_json(path: str | Path) -> list[Conversation]:
    """Read and validate a LLaVA conversation file; ValueError names the first bad entry and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA conversations, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path} holds no conversations")
    return [_conversation(i, entry, path) for i, entry in enumerate(data)]


def _conversation(index: int, entry: Any, path: Path) -> Conversation:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    if "id" in entry:
        where = f"{where} (id {entry['id']!r})"
    if not isinstance(entry.get("id"), (str, int)):
        raise ValueError(f"{where}: field 'id' must be a string or integer")
    image = entry.get("image")
    images = (image,) if isinstance(image, str) else tuple(image or ())
    if image is not None and (not images or not all(isinstance(i, str) and i for i in images)):
        raise ValueError(f"{where}: field 'image' must be a file name or a non-empty list of them")
    messages = entry.get("conversations")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: field 'conversations' must be a non-empty list")
    if len(messages) % 2:
        raise ValueError(f"{where}: field 'conversations' must alternate human / gpt and end with gpt")
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise ValueError(f"{where}: conversations[{j}] must be an object with a string 'value'")
        if message.get("from") != ROLES[j % 2]:
            raise ValueError(f"{where}: conversations[{j}].from must be {ROLES[j % 2]!r}, got {message.get('from')!r}")
    turns = tuple(Turn(messages[j]["value"], messages[j + 1]["value"]) for j in range(0, len(messages), 2))
    tags = sum(turn.prompt.count(IMAGE_TAG) for turn in turns)
    if tags != len(images):
        raise ValueError(f"{where}: the human turns hold {tags} {IMAGE_TAG!r} tag(s) for {len(images)} image(s)")
    if any(IMAGE_TAG in turn.answer for turn in turns):
        raise ValueError(f"{where}: a gpt turn holds {IMAGE_TAG!r}")
    return Conversation(index, str(entry["id"]), images, turns)


def load_images(conversation: Conversation, folder: str | Path) -> list[Image.Image] | str:
    """The conversation's images as RGB, or the reason one cannot be read (the caller skips the sample)."""
    images = []
    for name in conversation.images:
        file = Path(folder) / name
        try:
            images.append(read_image(file))
        except FileNotFoundError:
            return f"image not found: {file}"
        except ValueError as err:
            return f"image unreadable: {err}"
    return images


def chat_messages(conversation: Conversation, answers: Sequence[str], num_turns: int) -> list[dict]:
    """The first `num_turns` turns as chat messages; the last user turn has no answer when
    len(answers) < num_turns. Content is always a list of parts: some templates iterate over it."""
    messages: list[dict] = []
    for t, turn in enumerate(conversation.turns[:num_turns]):
        pieces = [piece.strip() for piece in turn.prompt.split(IMAGE_TAG)]
        content: list[dict] = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
        for piece in pieces[1:]:
            content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
        messages.append({"role": "user", "content": content})
        if t < len(answers):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[t]}]})
    return messages


def images_through(conversation: Conversation, num_turns: int) -> int:
    """How many images the first `num_turns` human turns place."""
    return sum(turn.prompt.count(IMAGE_TAG) for turn in conversation.turns[:num_turns])


@dataclass
class ConversationInputs:
    inputs: TargetInputs      # [1, S]: the conversation through the last answer's end-of-turn token; for a
                              #   prompt (fewer answers than turns), through the next generation prompt
    loss_mask: Tensor         # [S] bool: position i predicts token i + 1, a response token
    eos_appended: int = 0     # answers the chat template left without an end-of-turn token: each got the
                              #   tokenizer's EOS appended, which is where the target's generation stops


def conversation_inputs(target: Any, conversation: Conversation, answers: Sequence[Answer],
                        images: Sequence[Image.Image], *, expand_images: bool = True) -> ConversationInputs:
    """The conversation with `answers` as one target sequence, and its loss mask.

    With an answer for every turn: the whole conversation. With fewer: the prompt for the next answer.
    Token answers are spliced in token space where the chat template puts the answer (rendered empty), so
    the sequence holds exactly the tokens the target generated; a decode / re-encode round trip would change
    byte-level tokens that are not valid UTF-8 on their own, and special tokens. A response is the answer
    plus the template's end-of-turn token (the first EOS id after the answer); a template that renders no
    EOS id after an answer gets the tokenizer's EOS appended to it (counted in `eos_appended`).

    ValueError (the caller skips the sample) when the chat template does not render a turn's prompt as a
    prefix of the conversation, a turn has no end-of-turn token and the tokenizer no EOS, an answer holds the
    image token, or the sequence exceeds the context.
    """
    complete = len(answers) == len(conversation.turns)
    turns = len(answers) if complete else len(answers) + 1
    texts = [answer if isinstance(answer, str) else "" for answer in answers]
    render, spans = _render(target, conversation, texts, turns, images, expand_images)
    ids = render.input_ids[0].tolist()
    source: list[int] = []        # render position of each output token; -1 where an answer token is spliced in
    spliced: list[int] = []       # the token at each spliced position (0 elsewhere)
    response: list[bool] = []
    cursor = appended = 0
    for answer, (start, marker) in zip(answers, spans):
        if marker != NO_END_OF_TURN:
            end_source, end_token, next_cursor = marker, 0, marker + 1            # the template's own EOS
        elif isinstance(answer, str):
            raise ValueError("the chat template renders no end-of-turn token after a text answer")
        else:
            end_source, end_token, next_cursor = -1, _tokenizer_eos(target), start
            appended += 1
        tokens = ids[start:marker] if isinstance(answer, str) else [int(t) for t in answer]
        if target.image_token_id in tokens:
            raise ValueError("an answer holds the image token")
        source += [*range(cursor, start), *[-1] * len(tokens), end_source]
        spliced += [0] * (start - cursor) + tokens + [end_token]
        response += [False] * (start - cursor) + [True] * (len(tokens) + 1)
        cursor = next_cursor
    end = cursor if complete else len(ids)
    source += range(cursor, end)
    spliced += [0] * (end - cursor)
    response += [False] * (end - cursor)
    if len(source) > target.max_context:
        raise ValueError(f"the conversation is {len(source)} tokens, longer than the context of {target.max_context}")
    index = torch.tensor(source)
    copied = index >= 0
    index = index.clamp(min=0)
    input_ids = torch.where(copied, render.input_ids[0][index], torch.tensor(spliced))
    kwargs = {k: torch.where(copied, v[..., index], 0) if k in PER_TOKEN_KWARGS else v
              for k, v in render.model_kwargs.items()}
    inputs = TargetInputs(input_ids[None], (render.visual_mask[0][index] & copied)[None], kwargs)
    loss_mask = torch.zeros(len(source), dtype=torch.bool)
    loss_mask[:-1] = torch.tensor(response[1:], dtype=torch.bool)
    return ConversationInputs(inputs, loss_mask, appended)


def _tokenizer_eos(target: Any) -> int:
    eos = target.tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the chat template renders no end-of-turn token after an answer and the tokenizer has no EOS")
    return int(eos)


def prompt_inputs(target: Any, conversation: Conversation, answers: Sequence[Answer],
                  images: Sequence[Image.Image], *, expand_images: bool = True) -> TargetInputs:
    """The target's input for generating answer number len(answers) (the conversation so far); with
    expand_images=False, the token prompt before image expansion (for vLLM, which expands images itself)."""
    assert len(answers) < len(conversation.turns)
    return conversation_inputs(target, conversation, answers, images, expand_images=expand_images).inputs


def _render(target: Any, conversation: Conversation, texts: Sequence[str], turns: int,
            images: Sequence[Image.Image], expand_images: bool = True) -> tuple[TargetInputs, list[tuple[int, int]]]:
    """The first `turns` turns through the chat template with answers `texts`, and per answer (start, index of
    its end-of-turn token). build_inputs always ends with a generation prompt; callers cut it off."""
    def build(num_turns: int, num_answers: int) -> TargetInputs:
        messages = chat_messages(conversation, texts[:num_answers], num_turns)
        return target.build_inputs(messages, images[: images_through(conversation, num_turns)],
                                   expand_images=expand_images)

    render = build(turns, len(texts))
    ids = render.input_ids[0]
    eos = torch.tensor(sorted(target.eos_token_ids))
    spans: list[tuple[int, int]] = []
    for t in range(len(texts)):
        prefix = build(t + 1, t).input_ids[0]
        start = prefix.shape[0]
        if (spans and start <= spans[-1][1]) or not torch.equal(ids[:start], prefix):
            raise ValueError(f"the chat template does not render turn {t}'s prompt as a prefix of the conversation")
        stops = torch.isin(ids[start:], eos).nonzero().flatten()
        # -1: the template ends the answer with no EOS id; conversation_inputs appends the tokenizer's.
        spans.append((start, start + int(stops[0]) if stops.numel() else NO_END_OF_TURN))
    return render, spans
