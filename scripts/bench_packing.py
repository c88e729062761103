"""The harness with and without prepacked linears (dream.target.packing), in one process, passes alternating:
what packing gives plain decoding (generate() included) and every method, and that outputs stay the same.

    python scripts/bench_packing.py [--limit 8] [--max-new-tokens 64] [--repeats 2] [--batch-invariant on|off]

Loads the offline target twice in bf16, once as `dream` loads it (linears packed where the probe found the
same bits) and once with packing switched off, each with the shipped drafts; runs `dream bench`'s loop on
unseen-kind prompts for both and prints tokens/s per method, each method over its own `hf`, and every
method over the unpacked `hf` (transformers' generate() on the stock kernels). Greedy tokens are compared
with the unpacked `hf`'s: packing must change no token. Run it on a quiet machine with native bf16.
"""

from __future__ import annotations

import argparse
from statistics import median

import torch

import dream.target.packing as packing
from dream.bench.prompts import read_prompts
from dream.bench.run import BenchSettings, run_bench
from dream.methods import draft_dir, draft_spec, load_methods
from dream.settings import cpu_kind
from dream.target.loading import load_target
from dream.tree import TreeConfig

METHODS = ("hf", "ar", "eagle2", "eagle3", "dream")
PROMPTS = "dream/assets/prompts/eval-unseen.jsonl"


def load(batch_invariant: str, packed: bool):
    can_prepack = packing.can_prepack
    if not packed:
        packing.can_prepack = lambda weight: False
    try:
        target = load_target("smolvlm-135m", "bf16", batch_invariant=batch_invariant)
        drafts = [draft_spec(draft_dir(name), name) for name in METHODS if name not in ("hf", "ar")]
        return target, load_methods(target, drafts, [], torch.bfloat16, METHODS)
    finally:
        packing.can_prepack = can_prepack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    # on or off, not auto: auto may pick another attention for each (the mode costs a step differently), and
    # then the two runs would differ by more than packing.
    parser.add_argument("--batch-invariant", default="on", choices=("on", "off"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"unpacked": load(args.batch_invariant, False), "packed": load(args.batch_invariant, True)}
    print(f"{cpu_kind()}, {args.threads} threads, bf16, --batch-invariant {args.batch_invariant}; packed linears: "
          + ", ".join(f"{label} {target.packed_linears}" for label, (target, _) in runs.items()))
    prompts = read_prompts(PROMPTS, limit=args.limit)
    settings = BenchSettings(max_new_tokens=args.max_new_tokens, tree=TreeConfig(top_k=3, depth=5, total_tokens=12))
    rates: dict[tuple[str, str], list[float]] = {(label, m): [] for label in runs for m in METHODS}
    reference: list[tuple[int, ...]] | None = None
    differing = {label: 0 for label in runs}
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))   # alternate who goes first
        for label in order:
            target, methods = runs[label]
            result = run_bench(target, methods, prompts, settings, progress=False)
            for name in METHODS:
                cells = [per_prompt[0] for per_prompt in result.runs[name]]
                tokens = sum(len(c.token_ids) for c in cells)
                rates[(label, name)].append(tokens / sum(c.metrics.total_s for c in cells))
                outputs = [c.token_ids for c in cells]
                if label == "unpacked" and name == "hf" and reference is None:
                    reference = outputs
                if reference is not None:
                    differing[label] += sum(a != b for a, b in zip(outputs, reference))
    stock = median(rates[("unpacked", "hf")])
    print(f"{'':9}" + "".join(f"{m:>9}" for m in METHODS) + "   (tok/s, median of passes)")
    for label in runs:
        base = median(rates[(label, "hf")])
        print(f"{label:9}" + "".join(f"{median(rates[(label, m)]):9.1f}" for m in METHODS))
        print(f"{'  /own hf':9}" + "".join(f"{median(rates[(label, m)]) / base:8.2f}x" for m in METHODS))
        print(f"{'  /stock':9}" + "".join(f"{median(rates[(label, m)]) / stock:8.2f}x" for m in METHODS))
    print("outputs differing from the unpacked hf's (prompt runs): "
          + ", ".join(f"{label} {count}" for label, count in differing.items()))


if __name__ == "__main__":
    main()
