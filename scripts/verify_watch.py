"""Watch a decoding step and an N-node tree verify over time, in one process: does this machine's speed swing,
and which forwards does it hit? (On the 2-core AVX-512-BF16 VM the one-row step holds still while a 12-node
verify switches between two speeds; README, "What a verify costs".)

    python scripts/verify_watch.py [--seconds 150] [--threads 2] [--nodes 12] [--dtype bf16]

Every second or so it prints the median milliseconds of 8 steps and 8 verifies (the cache rewound after each)
after the first unseen-kind prompt, and their ratio; at the end, the spread of both. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time
from statistics import median, quantiles

import torch

from dream.bench.prompts import read_prompts
from dream.bench.run import build_inputs
from dream.bench.tune import timing_tree
from dream.target import TargetAdapter, load_target

PROMPTS = "dream/assets/prompts/eval-unseen.jsonl"


def timer(target: TargetAdapter, cache, tree):
    keep_nothing = torch.zeros(0, dtype=torch.long)

    def milliseconds() -> float:
        start = time.perf_counter()
        target.verify(tree.tokens, tree.ancestors, tree.depths, cache)
        elapsed = time.perf_counter() - start
        target.commit(cache, tree.num_nodes, keep_nothing)
        return elapsed * 1e3
    return milliseconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smolvlm-135m")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.target, args.dtype, batch_invariant="on")
    inputs = build_inputs(target, read_prompts(PROMPTS, limit=1), 64)[0]
    cache = target.new_cache()
    target.prefill(inputs, cache)
    step = timer(target, cache, timing_tree(1, 0))
    verify = timer(target, cache, timing_tree(args.nodes, min(args.nodes - 1, 5)))
    for _ in range(3):  # warm-up
        step()
        verify()
    steps, verifies = [], []
    end = time.time() + args.seconds
    while time.time() < end:
        s, v = median(step() for _ in range(8)), median(verify() for _ in range(8))
        steps.append(s)
        verifies.append(v)
        print(f"{time.strftime('%H:%M:%S')}  step {s:6.2f} ms  {args.nodes} nodes {v:6.2f} ms  ratio {v / s:.2f}",
              flush=True)
    for name, values in (("step", steps), (f"{args.nodes} nodes", verifies)):
        if len(values) >= 2:
            deciles = quantiles(values, n=10)
            p10, p90 = deciles[0], deciles[-1]
            print(f"{name:>9}: p10 {p10:6.2f}  median {median(values):6.2f}  p90 {p90:6.2f} ms")


if __name__ == "__main__":
    main()
