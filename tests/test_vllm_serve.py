"""`dream serve` end to end: vLLM's OpenAI server with the shipped DREAM draft on smolvlm-135m (fp32, eager).

A streamed chat completion with an image (data URL) returns the harness's greedy text and usage counts; a
broken image gets a 400 and the next request still succeeds; a draft for another target is refused
before vLLM starts, with one line. Skipped without vLLM (a failure under CI=true) or without the plugin's
entry point.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points

import pytest
import torch

from optional import require

require("vllm")

from dream.bench.prompts import HELDOUT_PROMPTS, read_prompts, user_messages  # noqa: E402
from dream.engine import generate  # noqa: E402
from dream.methods import SHIPPED_DRAFTS  # noqa: E402
from dream.target import TargetAdapter  # noqa: E402
from dream.zoo.build import resolve_target  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not any(ep.value.startswith("dream.serving.plugin")
                               for ep in entry_points(group="vllm.general_plugins")),
                       reason="the dream vLLM plugin entry point is not installed (pip install -e .)"),
]
MAX_TOKENS = 32
START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _chat(image: bytes, *, stream: bool) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    body = {"model": "smolvlm-135m", "temperature": 0, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": PROMPT.prompt}]}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


PROMPT = read_prompts(HELDOUT_PROMPTS, limit=1)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dream.cli", "serve", "--target", "smolvlm-135m",
                                 "--draft", "dream", "--dtype", "fp32", "--enforce-eager", "--port", str(port),
                                 "--max-model-len", "512", "--num-speculative-tokens", "3"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dream serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def harness_text():
    target = TargetAdapter.from_pretrained(str(resolve_target("smolvlm-135m")), dtype=torch.float32)
    inputs = target.build_inputs(user_messages(PROMPT.prompt, with_image=True), [PROMPT.image])
    return generate(target, inputs, max_new_tokens=MAX_TOKENS).text


def test_streamed_chat_with_an_image_returns_the_harness_text(server, harness_text):
    status, body = _post(server, _chat(PROMPT.image_path.read_bytes(), stream=True))
    assert status == 200
    events = [json.loads(line[len("data: "):]) for line in body.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert len(events) > 2                                   # streamed in pieces
    assert text == harness_text
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 64      # 64 visual tokens at least


def test_a_broken_image_is_a_400_and_the_server_keeps_serving(server, harness_text):
    status, body = _post(server, _chat(b"not an image", stream=False))
    assert status == 400, body
    status, body = _post(server, _chat(PROMPT.image_path.read_bytes(), stream=False))
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == harness_text


def test_an_over_long_request_is_a_400(server):
    body = _chat(PROMPT.image_path.read_bytes(), stream=False)
    body["messages"][0]["content"][1]["text"] = "describe " * 1000
    status, text = _post(server, body)
    assert status == 400, text


def test_a_draft_for_another_target_is_refused_with_one_line(tmp_path):
    draft = tmp_path / "draft"
    draft.mkdir()
    config = json.loads((SHIPPED_DRAFTS / "dream" / "config.json").read_text())
    config["target"]["num_layers"] = 12
    (draft / "config.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "dream.cli", "serve", "--target", "smolvlm-135m",
                           "--draft", str(draft)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "different target: num_layers: draft 12 != target 30" in lines[0]
