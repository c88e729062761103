"""`dream doctor`: what this machine does to a target's numerics and to the price of a tree verify.

Three findings, each measured here, none assumed:
  1. numerics: the batch-invariant probe (which linear shapes are padded, what that costs a decoding step),
     and the diagnosis of the row-wise operations and the exact path's attention calls (dream.target.diagnose);
  2. exactness: greedy tokens of every method against the same model's generate() on a few dev prompts;
  3. verify cost: a tree verify of N nodes (1..max_nodes; N = 1 is one decoding step) as a multiple of a
     decoding step, each the fastest of a few rounds (other load only ever adds time).
From them it recommends a dtype and the largest tree whose verify stays within VERIFY_BUDGET decoding steps;
`dream bench --tree auto` picks a tree from measured acceptance as well.
"""

from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass, field
from time import perf_counter
from typing import Sequence

import torch

from dream.bench.hf import hf_generate
from dream.bench.tune import timing_tree
from dream.engine import generate
from dream.methods import Method, make_proposer
from dream.sampling import SamplingConfig
from dream.settings import cpu_kind, dtype_name, resolve_dtype_name
from dream.target import TargetAdapter, TargetInputs
from dream.target.diagnose import Finding, attention_findings, rowwise_findings
from dream.tree import TreeConfig

VERIFY_BUDGET = 1.5  # a tree may cost this many decoding steps to verify: tau well above it still pays
TREE_DEPTH = 5  # depth of the timed trees (the command line's default tree)


@dataclass(frozen=True)
class VerifyPoint:
    nodes: int
    depth: int
    seconds: float
    steps: float  # seconds over one decoding step's (the fastest rounds of each)
    median_steps: float  # the same for the median rounds: apart from `steps` where the machine's speed swings


@dataclass
class DoctorReport:
    machine: dict
    invariance: dict
    findings: list[Finding]
    mismatches: dict[str, int]  # method -> prompts whose greedy tokens differ from generate()'s
    prompts: int
    curve: list[VerifyPoint] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not any(self.mismatches.values())

    def recommendation(self) -> tuple[str, TreeConfig | None]:
        """(dtype, tree): the dtype `auto` picks here, and the largest timed tree within VERIFY_BUDGET steps
        (None: no tree pays, decode plainly)."""
        fitting = [p for p in self.curve if p.nodes > 1 and p.steps <= VERIFY_BUDGET]
        if not fitting:
            return resolve_dtype_name("auto"), None
        best = max(fitting, key=lambda p: p.nodes)
        depth = min(best.depth, best.nodes - 1)
        return resolve_dtype_name("auto"), TreeConfig(top_k=3, depth=depth, total_tokens=best.nodes - 1)

    def to_json(self) -> dict:
        dtype, tree = self.recommendation()
        return {"machine": self.machine, "batch_invariance": self.invariance,
                "findings": [vars(f) for f in self.findings], "mismatches": self.mismatches,
                "prompts": self.prompts, "exact": self.exact, "verify_curve": [vars(p) for p in self.curve],
                "recommended": {"dtype": dtype, "tree": None if tree is None else vars(tree)}}


def examine(target: TargetAdapter, inputs: Sequence[TargetInputs], methods: Sequence[Method],
            max_new_tokens: int, max_nodes: int, repeats: int) -> DoctorReport:
    machine = {"cpu": cpu_kind(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "dtype": dtype_name(target.model.dtype),
               "packed_linears": target.packed_linears}
    findings = rowwise_findings(target) + attention_findings(target, inputs[0])
    mismatches = greedy_mismatches(target, inputs, methods, max_new_tokens)
    curve = verify_curve(target, inputs[0], max_nodes, repeats)
    return DoctorReport(machine, target.invariance.to_json(), findings, mismatches, len(inputs), curve)


def greedy_mismatches(target: TargetAdapter, inputs: Sequence[TargetInputs], methods: Sequence[Method],
                      max_new_tokens: int) -> dict[str, int]:
    """Per method, how many prompts' greedy tokens differ from generate()'s on the same model."""
    greedy = SamplingConfig()
    tree = TreeConfig(top_k=3, depth=TREE_DEPTH, total_tokens=12)
    counts = {method.name: 0 for method in methods}
    for prompt in inputs:
        reference, _ = hf_generate(target, prompt, greedy, max_new_tokens, seed=0)
        for method in methods:
            proposer = None if method.name == "ar" else make_proposer(method, target, tree, greedy, 0)
            tokens = generate(target, prompt, proposer=proposer, max_new_tokens=max_new_tokens).token_ids
            counts[method.name] += tokens != reference
    return counts


@torch.no_grad()
def verify_curve(target: TargetAdapter, inputs: TargetInputs, max_nodes: int, repeats: int) -> list[VerifyPoint]:
    """Seconds of a verify over N nodes (N = 1: a decoding step) after the prompt, the cache rewound after
    each; the fastest of `repeats` (and the median), rounds of all sizes interleaved so drifting load hits
    them alike."""
    cache = target.new_cache()
    target.prefill(inputs, cache)
    keep_nothing = torch.zeros(0, dtype=torch.long)
    trees = [timing_tree(n, min(n - 1, TREE_DEPTH)) for n in range(1, max_nodes + 1)]

    def round_s(tree) -> float:
        start = perf_counter()
        target.verify(tree.tokens, tree.ancestors, tree.depths, cache)
        seconds = perf_counter() - start
        target.commit(cache, tree.num_nodes, keep_nothing)
        return seconds

    for tree in trees:  # warm-up
        round_s(tree)
    rounds = [[round_s(tree) for tree in trees] for _ in range(max(repeats, 1))]
    best = [min(size) for size in zip(*rounds)]
    median = [statistics.median(size) for size in zip(*rounds)]
    return [VerifyPoint(t.num_nodes, int(t.depths.max()), s, s / best[0], m / median[0])
            for t, s, m in zip(trees, best, median)]


def format_report(report: DoctorReport) -> str:
    m = report.machine
    lines = [f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, {m['dtype']}",
             f"prepacked linears (same bits as the dense call, probed): {m.get('packed_linears', 0)}"]
    inv = report.invariance
    lines.append(f"batch-invariant mode: {'on' if inv['enabled'] else 'off'} (policy {inv['policy']}"
                 + (f", a decoding step {inv['cost']:+.0%}" if inv.get("cost") is not None else "") + ")")
    for shape in inv["shapes"]:
        pad, split = shape["pad_rows"], shape.get("split_rows")
        state = "as is" if pad == 1 else f"pad to {pad} rows" if pad else "NOT invariant at any pad"
        state += f", calls past {split} rows split into {split}-row calls" if split else ""
        lines.append(f"  linear {shape['out_features']}x{shape['in_features']} (x{shape['modules']}): {state}")
    if inv.get("attention_probed"):
        block = inv.get("attention_block")
        lines.append("  attention: " + (f"batch-invariant, keys padded to a multiple of {block}; a verify runs all "
                                        "nodes in one call per layer" if block else
                                        "batch-invariant, but left out by auto (over 5 % of a decoding step; "
                                        "--batch-invariant on takes it): sdpa, one call per depth in a verify"
                                        if inv.get("attention_left_out") else
                                        "NOT batch-invariant at any block: sdpa, one call per depth in a verify"))
    lines.append("operations (a row's bits whatever rows or masked keys come with it):")
    width = max(len(f.name) for f in report.findings)
    lines += [f"  {f.section:9} {f.name:{width}}  {'DIFFERS' if f.differs else 'same   '}  {f.detail}"
              for f in report.findings]
    verdict = "bit-exact" if report.exact else "NOT bit-exact"
    lines.append(f"greedy tokens against generate() on {report.prompts} prompts: {verdict}; "
                 + ", ".join(f"{name} {n} differ" for name, n in report.mismatches.items()))
    lines.append("verify cost, N nodes in decoding steps (N = 1 is one step: "
                 f"{report.curve[0].seconds * 1e3:.1f} ms):")
    lines.append("  fastest rounds: " + "  ".join(f"{p.nodes}:{p.steps:.2f}" for p in report.curve))
    lines.append("  median rounds:  " + "  ".join(f"{p.nodes}:{p.median_steps:.2f}" for p in report.curve))
    dtype, tree = report.recommendation()
    advice = ("no tree verifies within "
              f"{VERIFY_BUDGET} steps: decode plainly" if tree is None else
              f"trees up to {tree.total_tokens + 1} nodes verify within {VERIFY_BUDGET} decoding steps: "
              f"--tree-top-k {tree.top_k} --depth {tree.depth} --total-tokens {tree.total_tokens} "
              "(dream bench --tree auto tunes it with measured acceptance)")
    lines.append(f"recommended: --dtype {dtype}; {advice}")
    return "\n".join(lines)
