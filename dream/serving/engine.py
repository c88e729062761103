"""Building a vLLM engine for a target with one speculation method, and reading its spec-decode counters.

Methods (dream.method_names, the harness's names): `ar` (no speculation), `pld` (vLLM's n-gram prompt
lookup), and a draft: `dream` / `eagle2` / `eagle3` name the shipped drafts of a zoo target, or any dream draft
directory. Drafts go through vLLM's EAGLE proposer with the plugin's draft classes: method "eagle" for dream and
eagle2 drafts, "eagle3" for eagle3 drafts (the target's aux layers); their checkpoint is exported once
(dream.serving.export).

vLLM proposes a chain of `num_speculative_tokens` tokens per step (no tree), verified with its rejection
sampler; at temperature 0 the output is the target's greedy output. A chain schedule (`spec_schedule`,
vLLM's dynamic speculative decoding) makes the length depend on how many requests the step batches:
batched plain decoding gets cheaper per token as the batch grows, while a verify's drafted rows cost the same,
so long chains pay with few requests in flight and lose with many (docs/vllm.md, "Under load").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from PIL import Image

from dream.chat import user_turn
from dream.method_names import AR, PLD, canonical
from dream.serving.export import exported_draft, vllm_method
from dream.settings import torch_held_below_cpu

VLLM_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}   # dream.settings names -> vLLM's dtype names
_USER_BINDING = {name for name in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND") if name in os.environ}
# vLLM 0.32 saves its AOT-compiled model but cannot load it back under torch 2.13 ("'function' object has no
# attribute 'finalize_loading'"), so every engine start compiled again. Its plain torch.compile path reuses
# inductor's cache instead: engine init 16 s against 55 s, start to first request 46 s against 79 s, decoding
# equally fast (smolvlm-135m, bf16, 2-core AVX-512-BF16 EPYC). Defaults only: a user's own setting wins.
COMPILE_ENV = {"VLLM_USE_AOT_COMPILE": "0"}
OPEN_END = 1 << 20          # a schedule range's "and up" (vLLM clamps ranges to its batch limit)


@dataclass(frozen=True)
class EngineConfig:
    target: str                         # the target's checkpoint directory (stock HF layout)
    dtype: str = "bfloat16"             # "bfloat16" | "float32"
    num_speculative_tokens: int = 4     # chain length a proposer drafts per step
    enforce_eager: bool = False         # True skips torch.compile (start-up in seconds instead of minutes)
    max_model_len: int = 2048
    max_num_seqs: int = 16              # requests batched together
    tensor_parallel_size: int = 1       # ranks the target and the draft are sharded over (processes on CPU)
    memory_fraction: float = 0.3        # vLLM's gpu_memory_utilization; on CPU a share of the memory node
    in_process: bool = False            # one process (tests): the plugin is registered here, no entry point needed
    seed: int = 0
    ngram_max: int = 3                  # prompt-lookup n-gram sizes (as the harness's pld)
    ngram_min: int = 1
    # (first batch size, last batch size, chain length) ranges from batch size 1 up; empty: always
    # num_speculative_tokens. The longest chain in it must be num_speculative_tokens.
    spec_schedule: tuple[tuple[int, int, int], ...] = ()
    # How a draft picks its tokens at temperature > 0 (vLLM's draft_sample_method): "probabilistic" samples
    # each from the draft's distribution q at the request's temperature and accepts with min(1, p / q);
    # "greedy" drafts the argmax (q one-hot: accepted with probability p). Greedy requests draft the argmax
    # either way. Prompt lookup has no distribution: always greedy.
    draft_sampling: str = "probabilistic"
    extra: dict[str, Any] = field(default_factory=dict)   # further vLLM engine arguments, passed as they are

    def __post_init__(self) -> None:
        longest = max((length for _, _, length in self.spec_schedule), default=self.num_speculative_tokens)
        if longest != self.num_speculative_tokens:
            raise ValueError(f"the chain schedule's longest chain ({longest}) must be the chain length "
                             f"({self.num_speculative_tokens})")


def speculative_config(method: str, draft_dir: str | Path | None, cfg: EngineConfig) -> dict[str, Any] | None:
    """vLLM's speculative_config for a method (the former names `base` / `ngram` read as ar / pld); a draft
    method needs its checkpoint directory."""
    method = canonical(method)
    if method == AR:
        return None
    if method == PLD:
        spec: dict[str, Any] = {"method": "ngram", "prompt_lookup_max": cfg.ngram_max,
                                "prompt_lookup_min": cfg.ngram_min}
    elif draft_dir is None:
        raise ValueError(f"method {method!r} needs a draft directory")
    else:
        # use_local_argmax_reduction: greedy drafting takes the draft's own argmax over its reduced
        # vocabulary (TargetSharedIO.get_top_tokens) instead of a [T, V_target] scatter and an argmax over it.
        spec = {"method": vllm_method(draft_dir), "model": str(exported_draft(draft_dir)),
                "draft_sample_method": cfg.draft_sampling, "use_local_argmax_reduction": True}
    spec["num_speculative_tokens"] = cfg.num_speculative_tokens
    if cfg.spec_schedule:
        spec["num_speculative_tokens_per_batch_size"] = [list(entry) for entry in cfg.spec_schedule]
    return spec


def chain_length(given: int | None, schedule: tuple[tuple[int, int, int], ...], default: int) -> int:
    """The chain length a command runs: the one given, else the schedule's longest, else the default."""
    if given is not None:
        return given
    return max(length for _, _, length in schedule) if schedule else default


def parse_spec_schedule(text: str) -> tuple[tuple[int, int, int], ...]:
    """"1-4:5,5-16:2,17-:1" -> ((1, 4, 5), (5, 16, 2), (17, OPEN_END, 1)): requests in flight -> chain
    length; ranges inclusive, sorted, from 1, without gaps; an open end covers every larger batch."""
    schedule: list[tuple[int, int, int]] = []
    for part in text.split(","):
        try:
            span, length = part.strip().split(":")
            first, _, last = span.partition("-")
            entry = (int(first), int(last) if last else OPEN_END, int(length))
        except ValueError:
            raise ValueError(f"--spec-schedule {text!r}: expected ranges like 1-4:5,5-16:2,17-:1") from None
        schedule.append(entry)
    expected_first = 1
    for first, last, length in schedule:
        if first != expected_first or last < first or length < 0:
            raise ValueError(f"--spec-schedule {text!r}: ranges must run from 1 upwards without gaps or "
                             "overlaps, each chain length >= 0")
        expected_first = last + 1
    return tuple(schedule)


def build_llm(cfg: EngineConfig, method: str = AR, draft_dir: str | Path | None = None) -> Any:
    """A vllm.LLM for the target with the method's speculation (stats logging on: counters are read)."""
    for name, value in {"HF_HUB_OFFLINE": "1", **COMPILE_ENV}.items():
        os.environ.setdefault(name, value)
    if cfg.in_process and cfg.tensor_parallel_size > 1:
        raise ValueError("tensor parallelism runs one process per rank: it cannot run in process")
    os.environ.update(binding_env(cfg.tensor_parallel_size))
    if cfg.in_process:
        # Must be set before vLLM reads its environment; the executor below then runs in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    from dream.serving.plugin import register

    register()      # this process; spawned workers run the entry point themselves
    kwargs: dict[str, Any] = dict(
        model=str(cfg.target), dtype=cfg.dtype, enforce_eager=run_eager(cfg.enforce_eager),
        max_model_len=cfg.max_model_len, max_num_seqs=cfg.max_num_seqs,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.memory_fraction, seed=cfg.seed, disable_log_stats=False,
        limit_mm_per_prompt={"image": 1}, speculative_config=speculative_config(method, draft_dir, cfg),
    )
    if cfg.in_process:
        kwargs["distributed_executor_backend"] = "uni"
    kwargs.update(cfg.extra)
    return LLM(**kwargs)


def run_eager(requested: bool) -> bool:
    """vLLM's enforce_eager: as requested, and always while torch is held below the CPU's instruction set,
    where torch.compile's code returns NaN (settings.torch_held_below_cpu)."""
    return requested or torch_held_below_cpu()


def cpu_binding(tensor_parallel_size: int = 1) -> dict[str, str]:
    """The OpenMP settings vLLM's CPU workers read: this process's cores split into one contiguous group per
    tensor-parallel rank. vLLM's own default binds one core per worker, or (auto) one NUMA node per rank,
    which a one-node machine cannot give two ranks. Empty on CUDA, where vLLM's defaults stand."""
    import torch

    if torch.cuda.is_available():
        return {}
    cores = sorted(os.sched_getaffinity(0))
    if tensor_parallel_size < 1 or len(cores) < tensor_parallel_size:
        raise ValueError(f"--tensor-parallel-size {tensor_parallel_size}: this machine gives {len(cores)} "
                         f"cores, one at least per rank")
    per_rank = len(cores) // tensor_parallel_size
    groups = [cores[rank * per_rank:(rank + 1) * per_rank] for rank in range(tensor_parallel_size)]
    return {"OMP_NUM_THREADS": str(per_rank),
            "VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, group)) for group in groups)}


def binding_env(tensor_parallel_size: int = 1) -> dict[str, str]:
    """cpu_binding's variables, less those the user set before this module loaded: set again for each engine
    or server (an earlier engine of this process may have set them for another rank count)."""
    return {k: v for k, v in cpu_binding(tensor_parallel_size).items() if k not in _USER_BINDING}


def chat_messages(prompt: str, image: Image.Image | None) -> list[dict[str, Any]]:
    """dream.chat's user turn in vLLM's format: its image part carries the image itself."""
    return user_turn(prompt, None if image is None else {"type": "image_pil", "image_pil": image})


@dataclass(frozen=True)
class SpecCounters:
    """vLLM's cumulative spec-decode counters (vllm:spec_decode_*), per engine."""

    drafts: int                         # verification steps that carried drafted tokens
    draft_tokens: int                   # tokens drafted
    accepted: int                       # drafted tokens accepted
    accepted_per_position: tuple[int, ...]   # accepted at chain position 0, 1, ...

    def minus(self, earlier: SpecCounters) -> SpecCounters:
        """The counts between two readings of the same engine."""
        per_pos = tuple(a - b for a, b in zip(self.accepted_per_position, earlier.accepted_per_position))
        return SpecCounters(self.drafts - earlier.drafts, self.draft_tokens - earlier.draft_tokens,
                            self.accepted - earlier.accepted, per_pos)

    def plus(self, other: SpecCounters) -> SpecCounters:
        """The counts of two runs together (engines with the same chain length)."""
        per_pos = tuple(a + b for a, b in zip_longest(self.accepted_per_position, other.accepted_per_position,
                                                      fillvalue=0))
        return SpecCounters(self.drafts + other.drafts, self.draft_tokens + other.draft_tokens,
                            self.accepted + other.accepted, per_pos)

    @property
    def tau(self) -> float:
        """Mean tokens emitted per verification step, the bonus token included (the harness's tau)."""
        return 1.0 + self.accepted / self.drafts if self.drafts else 1.0


def spec_counters(llm: Any) -> SpecCounters:
    """The engine's counters now (zeros for an engine without speculation)."""
    values: dict[str, Any] = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode_"):
            values[metric.name] = getattr(metric, "values", None) or getattr(metric, "value", 0)
    per_pos = values.get("vllm:spec_decode_num_accepted_tokens_per_pos", ())
    return SpecCounters(
        drafts=int(values.get("vllm:spec_decode_num_drafts", 0)),
        draft_tokens=int(values.get("vllm:spec_decode_num_draft_tokens", 0)),
        accepted=int(values.get("vllm:spec_decode_num_accepted_tokens", 0)),
        accepted_per_position=tuple(int(v) for v in per_pos),
    )


def close_llm(llm: Any) -> None:
    """Shut the engine down now (its workers, its memory reservation) rather than at garbage collection."""
    import gc

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
