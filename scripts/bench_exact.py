"""Time the exact verify path against the masked one: tokens/s of ar and a draft, both paths, in bf16.

    HF_HUB_OFFLINE=1 python scripts/bench_exact.py [--target smolvlm-135m] [--draft dream/assets/drafts/dream]
        [--limit 12] [--max-new-tokens 128] [--threads 2] [--clock wall|cpu]

Run it on a quiet machine. One warm-up generation per configuration, then every held-out prompt runs every
configuration once, in an order that rotates from prompt to prompt (machine drift spreads over all of them).
`hf` is the stock model's own generate(), the reference every other row's tokens are compared with.
`--clock cpu --threads 1` counts this process's CPU time instead of wall time: a rough figure when the
machine is busy (it hides waits but not cache contention).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from time import perf_counter, process_time

import torch
from transformers import AutoModelForImageTextToText

from dream.bench.prompts import HELDOUT_PROMPTS, read_prompts
from dream.chat import user_messages
from dream.draft import DraftProposer, load_draft
from dream.engine import generate
from dream.methods import CPU_TREE
from dream.target import VERIFY_MODES, VerifyMode
from dream.target.invariance import BatchInvariance
from dream.target.loading import load_target, resolve_target_path

Run = Callable[[object], tuple[list[int], float]]  # inputs -> (tokens, tau)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smolvlm-135m")
    parser.add_argument("--draft", default="dream/assets/drafts/dream")
    parser.add_argument("--limit", type=int, default=12, help="held-out prompts to run")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = resolve_target_path(args.target)
    target = load_target(path, "bf16", "cpu")
    stock = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16).eval()
    BatchInvariance(stock, "on" if target.invariance.enabled else "off")  # the reference: the same numerics
    draft = load_draft(args.draft, target, dtype=torch.bfloat16).draft
    budget = args.max_new_tokens

    def hf(inputs) -> tuple[list[int], float]:
        ids = inputs.input_ids
        with torch.no_grad():
            out = stock.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs.model_kwargs,
                                 do_sample=False, max_new_tokens=budget)
        return out[0, ids.shape[1]:].tolist(), 1.0

    def ours(mode: VerifyMode, with_draft: bool) -> Run:
        def run(inputs) -> tuple[list[int], float]:
            target.verify_mode = mode
            proposer = DraftProposer(draft, target, CPU_TREE) if with_draft else None
            result = generate(target, inputs, proposer=proposer, max_new_tokens=budget)
            return result.token_ids, result.metrics.tau
        return run

    configs: dict[str, Run] = {"hf": hf}
    for method in ("ar", "draft"):
        for mode in VERIFY_MODES:
            configs[f"{method} {mode}"] = ours(mode, method == "draft")
    prompts = [target.build_inputs(user_messages(r.prompt, True), [r.image])
               for r in read_prompts(HELDOUT_PROMPTS, limit=args.limit)]
    print(format_table(measure(configs, prompts, perf_counter if args.clock == "wall" else process_time)))


def measure(configs: dict[str, Run], prompts: list, clock: Callable[[], float]) -> dict[str, dict[str, float]]:
    """Per configuration: seconds, tokens, mean tau, and prompts whose tokens differ from hf's."""
    for run in configs.values():
        run(prompts[0])  # warm-up
    names = list(configs)
    totals = {name: {"seconds": 0.0, "tokens": 0, "tau": 0.0, "mismatches": 0} for name in names}
    for i, inputs in enumerate(prompts):
        outputs = {}
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = clock()
            outputs[name], tau = configs[name](inputs)
            totals[name]["seconds"] += clock() - start
            totals[name]["tokens"] += len(outputs[name])
            totals[name]["tau"] += tau / len(prompts)
        for name in names:
            totals[name]["mismatches"] += outputs[name] != outputs["hf"]
    return totals


def format_table(totals: dict[str, dict[str, float]]) -> str:
    hf_speed = totals["hf"]["tokens"] / totals["hf"]["seconds"]
    lines = [f"{'config':14} {'tok/s':>7} {'vs hf':>6} {'tau':>5} {'mismatches':>10}"]
    for name, t in totals.items():
        speed = t["tokens"] / t["seconds"]
        lines.append(f"{name:14} {speed:7.1f} {speed / hf_speed:5.2f}x {t['tau']:5.2f} {t['mismatches']:10d}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
