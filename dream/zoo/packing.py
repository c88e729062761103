"""Packed training sequences: one image, many (question, answer) turns, one forward.

A conversation about one image is `head + [question_k + assistant header + answer_k]` for k = 1..K,
where head = system prompt + user header + the expanded image block (a text-only conversation, pixels
None, has the head without the image block). Each turn attends to the head
and to itself only (a block-diagonal 4-D mask) and its positions continue from the end of the head,
so every turn sees exactly what the stock model sees for the single-turn chat
`[system, user(image + question_k)] -> answer_k`. `packed_loss` then applies the LM head only at
answer positions. `reference_loss` is the slow, obviously-correct version (stock forward per turn);
tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dream.zoo.spec import NEW_TOKENS

_SENTINEL = "\x00QUESTION\x00"


class Packer:
    """Tokenises turns exactly as `processor.apply_chat_template` + the processor would."""

    def __init__(self, processor):
        self.tokenizer = processor.tokenizer
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        head, tail = prompt.split(_SENTINEL)
        image_block = (processor.fake_image_token + processor.global_image_tag
                       + processor.image_token * processor.image_seq_len + processor.fake_image_token)
        self.head = self._ids(head.replace(processor.image_token, image_block))    # system + user + image
        self.text_head = self._ids(head.replace(processor.image_token, ""))         # system + user
        self.tail = self._ids(tail)                                                 # <|im_end|>\n<|im_start|>assistant\n
        self.end = self._ids("<|im_end|>")
        self.image_token_id = processor.image_token_id
        self.new_token_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in NEW_TOKENS]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def turn(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(prompt ids after the head, answer ids ending in <|im_end|>)."""
        return self._ids(question) + self.tail, self._ids(answer) + self.end


@dataclass
class PackedBatch:
    input_ids: torch.Tensor      # [B, T] long (pad = 0, masked out)
    position_ids: torch.Tensor   # [B, T] long
    mask: torch.Tensor           # [B, 1, T, T] bool, True = may attend
    pixel_values: torch.Tensor | None  # [B_img, 1, 3, S, S], the rows that have an image, in order
    pred_b: torch.Tensor         # [N] long: batch row of each predicted answer token
    pred_t: torch.Tensor         # [N] long: position whose output predicts it
    targets: torch.Tensor        # [N] long: the answer token
    turn_of: torch.Tensor        # [N] long: index of its turn in the batch (for exact-answer accuracy)
    num_turns: int


def pack(packer: Packer, conversations: list[tuple[torch.Tensor | None, list[tuple[str, str]]]]) -> PackedBatch:
    """conversations: [(pixel_values [3, S, S] or None (text only), [(question, answer), ...])] -> one batch."""
    rows, pred_b, pred_t, targets, turn_of = [], [], [], [], []
    turn_index = 0
    for b, (pixels, turns) in enumerate(conversations):
        head = packer.head if pixels is not None else packer.text_head
        ids, pos, seg = list(head), list(range(len(head))), [0] * len(head)
        for k, (question, answer) in enumerate(turns, start=1):
            prompt, reply = packer.turn(question, answer)
            start = len(ids)
            ids += prompt + reply
            pos += range(len(head), len(head) + len(prompt) + len(reply))
            seg += [k] * (len(prompt) + len(reply))
            first = start + len(prompt)                       # index of the first answer token
            for j, token in enumerate(reply):
                pred_b.append(b)
                pred_t.append(first + j - 1)
                targets.append(token)
                turn_of.append(turn_index)
            turn_index += 1
        rows.append((ids, pos, seg))
    T = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.zeros(B, T, dtype=torch.long)
    position_ids = torch.zeros(B, T, dtype=torch.long)
    segments = torch.full((B, T), -1, dtype=torch.long)
    for b, (ids, pos, seg) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        position_ids[b, :n] = torch.tensor(pos)
        segments[b, :n] = torch.tensor(seg)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]                 # [B, T, T]
    to_head = (segments[:, None, :] == 0) & (segments[:, :, None] >= 0)
    mask = causal & (same | to_head)
    mask |= torch.eye(T, dtype=torch.bool)                              # padding rows see themselves
    images = [c[0] for c in conversations if c[0] is not None]
    pixel_values = torch.stack(images)[:, None] if images else None
    return PackedBatch(input_ids, position_ids, mask[:, None], pixel_values, torch.tensor(pred_b),
                       torch.tensor(pred_t), torch.tensor(targets), torch.tensor(turn_of), turn_index)


def input_embeddings(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_token_id: int,
                     new_token_ids: list[int], new_rows: torch.Tensor | None) -> torch.Tensor:
    """What Idefics3Model feeds its text model: token embeddings with the visual features scattered in.

    new_rows [len(new_token_ids), H]: trainable embeddings of the added tokens (None: the table's rows).
    """
    table = model.model.text_model.embed_tokens
    embeds = table(input_ids)                                            # [B, T, H]
    if new_rows is not None:
        for k, token_id in enumerate(new_token_ids):
            hit = (input_ids == token_id)[..., None]
            embeds = torch.where(hit, new_rows[k].to(embeds.dtype), embeds)
    if pixel_values is None:
        return embeds
    features = model.model.get_image_features(pixel_values).pooler_output  # list of [n_img_tokens, H]
    features = torch.cat(list(features), dim=0).to(embeds.dtype)
    image_mask = (input_ids == image_token_id)[..., None]
    return embeds.masked_scatter(image_mask, features)


def answer_logits(model, hidden: torch.Tensor, new_token_ids: list[int], new_rows: torch.Tensor | None):
    """lm_head on [N, H] hidden states; the tied rows of the added tokens come from `new_rows`."""
    logits = model.lm_head(hidden)                                      # [N, V]
    if new_rows is not None:
        ids = torch.tensor(new_token_ids, device=logits.device)
        logits = logits.index_copy(1, ids, hidden @ new_rows.to(hidden.dtype).t())
    return logits


def packed_loss(model, batch: PackedBatch, image_token_id: int, new_token_ids: list[int],
                new_rows: torch.Tensor | None = None):
    """Mean CE over answer tokens. Returns (loss, per-token correct [N] bool, per-turn exact [num_turns] bool)."""
    embeds = input_embeddings(model, batch.input_ids, batch.pixel_values, image_token_id, new_token_ids, new_rows)
    out = model.model.text_model(inputs_embeds=embeds, attention_mask=batch.mask,
                                 position_ids=batch.position_ids, use_cache=False)
    hidden = out.last_hidden_state[batch.pred_b, batch.pred_t]          # [N, H]
    logits = answer_logits(model, hidden, new_token_ids, new_rows).float()
    loss = F.cross_entropy(logits, batch.targets)
    correct = logits.argmax(-1) == batch.targets
    wrong_turns = torch.zeros(batch.num_turns, dtype=torch.long).index_add_(0, batch.turn_of, (~correct).long())
    return loss, correct, wrong_turns == 0


def reference_loss(model, processor, image, turns: list[tuple[str, str]]) -> torch.Tensor:
    """Slow reference: the stock model on each single-turn chat (image None: text only); mean CE."""
    total, count = 0.0, 0
    for question, answer in turns:
        content = [{"type": "text", "text": question}]
        if image is not None:
            content.insert(0, {"type": "image"})
        messages = [{"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if image is not None:
            inputs = processor(text=prompt, images=[image], return_tensors="pt")
        else:
            inputs = processor(text=prompt, return_tensors="pt")
        reply = processor.tokenizer(answer + "<|im_end|>", add_special_tokens=False, return_tensors="pt").input_ids
        input_ids = torch.cat([inputs.input_ids, reply], dim=1)
        logits = model(input_ids=input_ids, pixel_values=inputs.get("pixel_values")).logits[0]
        n = reply.shape[1]
        total = total + F.cross_entropy(logits[-n - 1:-1].float(), reply[0], reduction="sum")
        count += n
    return total / count
