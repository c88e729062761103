"""Tiny byte-level tokenizers with each family's special tokens and a minimal chat template (tests/fixtures.py)."""

from __future__ import annotations

import transformers as tf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

MAX_POSITIONS = 256
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
_BASE_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", *CHAT_TOKENS]

# What the chat template writes where a message holds {"type": "image"}.
_IMAGE_PLACEHOLDER = {
    "llava": "<image>",
    "llava_next": "<image>",
    "pixtral": "[IMG]",
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "gemma3": "<start_of_image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}
_IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
QWEN_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
_FAMILY_SPECIALS = {
    "llava": ["<image>"],
    "llava_next": ["<image>"],
    "pixtral": ["[IMG]", "[IMG_BREAK]", "[IMG_END]"],
    "idefics3": _IDEFICS_TOKENS,
    "smolvlm": _IDEFICS_TOKENS,
    "gemma3": ["<start_of_image>", "<image_soft_token>", "<end_of_image>"],
    "qwen2_vl": QWEN_TOKENS,
    "qwen2_5_vl": QWEN_TOKENS,
}
# Ordinary (non-special) tokens matched whole. vLLM's Gemma3 processor looks up "\n" .. "\n\n\n\n" in the
# vocabulary (Gemma's tokenizer has each as one token) to merge the newlines around an image as it would.
_FAMILY_WORDS = {"gemma3": ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]}


def chat_template(image_placeholder: str | None) -> str:
    """A minimal chat template; content may be a string or a list of text / image parts."""
    image = image_placeholder or ""
    return (
        "{%- for m in messages -%}<|{{ m['role'] }}|>"
        "{%- if m['content'] is string -%}{{ m['content'] }}"
        "{%- else -%}{%- for c in m['content'] -%}"
        "{%- if c['type'] == 'image' -%}" + image + "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}<|end|>{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
    )


def build_tokenizer(family: str) -> tf.PreTrainedTokenizerFast:
    """Byte-level tokenizer without merges: every byte is a token, plus the family's special tokens."""
    specials = _BASE_SPECIALS + _FAMILY_SPECIALS.get(family, [])
    words = _FAMILY_WORDS.get(family, [])
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for word in words:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Registered on the backend too, so a reloaded tokenizer still matches them whole.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in words])
    extra = {}
    if family == "gemma3":
        # Gemma3Processor reads these names off the tokenizer.
        extra = {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        }
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
        extra_special_tokens=extra,
        model_max_length=MAX_POSITIONS,
    )
    tok.chat_template = chat_template(_IMAGE_PLACEHOLDER.get(family))
    return tok
