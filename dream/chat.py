"""The one user turn every caller builds: the user's text with at most one image, the image first (the SmolVLM /
LLaVA convention). The target adapter's chat template reads `user_messages`; dream.serving.engine derives vLLM's
format from `user_turn` (its image part carries the image itself)."""

from __future__ import annotations

from typing import Any

IMAGE_PART: dict[str, Any] = {"type": "image"}  # the chat templates' image placeholder part


def user_turn(prompt: str, image_part: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One user message: `image_part` (if any), then the text."""
    content: list[dict[str, Any]] = [] if image_part is None else [dict(image_part)]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def user_messages(prompt: str, with_image: bool) -> list[dict[str, Any]]:
    """The chat the target sees: one user message, the image first."""
    return user_turn(prompt, IMAGE_PART if with_image else None)
