"""`dream bench --tree auto`: choose each method's tree (prompt lookup: its chain length) on this machine,
from dev prompts the evaluation never sees.

Calibration, before anything is timed for the benchmark:
  1. verify cost: verify rounds (tree forward, acceptance rule, cache rewind) over a grid of tree sizes and
     depths after a dev prompt's prefill; fitted as a plane in (nodes, depth).
  2. draft step cost: each draft's propose() timed at every (top_k, depth) shape, on a dev prompt.
  3. acceptance by depth and rank: each draft decodes every dev prompt with a large calibration tree
     (max_top_k, max_depth, calibration_nodes), at the run's temperature; every round's accepted path is
     recorded. Prompt lookup decodes them with the longest chain.
Then dream.bench.treemodel predicts each candidate shape's decode speed and the fastest is chosen. The
calibration, the fitted costs, the chosen shape and the runners-up go into the JSON (config.tune), with a
check: the predicted tokens per round of the calibration tree beside the tau it measured.

A dev set that shares an (image, prompt) pair with the evaluation prompts is refused: images are compared
by their pixels, not their paths.

`reuse_tune` takes the shapes an earlier `--tree auto` run chose (its JSON) instead of calibrating again: the
same target and the same draft checkpoints are required, and its dev prompts must still be disjoint from the
new evaluation prompts. Calibrating costs as much as a benchmark on a small CPU; one tune then serves
several evaluation runs (other splits, other temperatures), and the JSON says where its shapes came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from time import perf_counter
from typing import Sequence

import torch

from dream.bench.prompts import PromptRecord, read_prompts
from dream.bench.run import BenchSettings, build_inputs
from dream.bench.treemodel import (
    Prediction, Round, VerifyCost, acceptance_table, candidate_trees, expected_tokens, predict_chains, predict_trees,
)
from dream.engine import generate
from dream.methods import Method, make_proposer, method_config
from dream.metrics import aggregate
from dream.proposer import AcceptedStep, PrefillRequest, PromptState, Proposer
from dream.sampling import SamplingConfig, target_probs
from dream.target import TargetAdapter, TargetInputs
from dream.target.identity import check_same_target
from dream.tree import Tree, TreeConfig, tree_from_parents
from dream.verify import verify_greedy, verify_sampling


@dataclass(frozen=True)
class TuneSettings:
    max_top_k: int = 4                 # candidate top_k 1..max_top_k
    max_depth: int = 8                 # candidate depths (and prompt-lookup chain lengths) 1..max_depth
    calibration_nodes: int = 32        # total_tokens of the calibration tree; the largest candidate
    node_counts: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)   # candidate total_tokens
    verify_nodes: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32)   # draft nodes of the verify-cost grid
    verify_depths: tuple[int, ...] = (1, 2, 4, 8)                  # its depths
    timing_repeats: int = 3            # each timing is the median of this many

    def __post_init__(self) -> None:
        if max(self.node_counts) > self.calibration_nodes:
            raise ValueError("candidate node counts cannot exceed the calibration tree's")
        if max(self.verify_nodes) < max(self.node_counts):
            raise ValueError("the verify-cost grid must reach the largest candidate (no extrapolation)")


def check_disjoint(dev: Sequence[PromptRecord], evaluation: Sequence[PromptRecord], dev_file: Path) -> None:
    """ValueError when a dev prompt is an evaluation prompt (same image pixels and text)."""
    seen = {_key(record): record.line for record in evaluation}
    shared = [(record.line, seen[_key(record)]) for record in dev if _key(record) in seen]
    if shared:
        dev_line, eval_line = shared[0]
        raise ValueError(f"--dev-prompts {dev_file} overlaps the evaluation prompts: {len(shared)} share image and "
                         f"prompt (dev line {dev_line} is evaluation line {eval_line}); tune on other prompts")


def _key(record: PromptRecord) -> tuple[str, str]:
    image = record.image
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
    return digest, record.prompt.strip()


def tune_methods(target: TargetAdapter, methods: Sequence[Method], dev: Sequence[PromptRecord], dev_file: Path,
                 settings: BenchSettings, tune: TuneSettings = TuneSettings()) -> tuple[list[Method], dict]:
    """The methods with their chosen trees, and the calibration record for the JSON."""
    inputs = build_inputs(target, dev, settings.max_new_tokens)
    _say(f"timing verify rounds on a grid of tree sizes ({len(dev)} dev prompts)")
    verify, samples = _verify_cost(target, inputs[0], tune, settings.sampling)
    tuned, record = [], {}
    for method in methods:
        if method.name == "pld":
            _say("prompt lookup: decoding the dev prompts with the longest chain")
            best, record[method.name] = _tune_lookup(target, method, inputs, settings, tune, verify)
        elif method.draft is not None:
            _say(f"{method.name}: timing draft shapes, then decoding the dev prompts with the calibration tree")
            best, record[method.name] = _tune_draft(target, method, inputs, settings, tune, verify)
        else:
            tuned.append(method)
            continue
        _say(f"{method.name}: {_describe(best)}")
        tuned.append(dataclasses.replace(method, tree=best.tree))
    return tuned, {
        "dev_prompts_file": str(dev_file), "dev_prompts_sha256": hashlib.sha256(dev_file.read_bytes()).hexdigest(),
        "num_dev_prompts": len(dev), "settings": dataclasses.asdict(tune),
        "verify_cost": {**dataclasses.asdict(verify), "samples": [list(s) for s in samples]},
        "methods": record,
    }


def reuse_tune(source: Path, target: TargetAdapter, methods: Sequence[Method],
               evaluation: Sequence[PromptRecord]) -> tuple[list[Method], dict]:
    """The methods with the trees a `--tree auto` run recorded in `source` (a bench JSON), and its tune record
    plus where it came from. ValueError when that run had another target or other drafts, chose nothing for
    one of the methods, or tuned on prompts that overlap `evaluation`."""
    try:
        config = json.loads(source.read_text())["config"]
        record, trees, drafts = config["tune"], config["trees"], config["drafts"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--tree {source}: not the JSON of a dream bench run ({err})") from None
    if config.get("tree") != "auto" or not record:
        raise ValueError(f"--tree {source}: that run did not use --tree auto, so it chose no shapes")
    check_same_target(config.get("target_fingerprint") or {}, target.fingerprint(), "bench run", source)
    dev_file = Path(record["dev_prompts_file"])
    if not dev_file.is_file() or hashlib.sha256(dev_file.read_bytes()).hexdigest() != record["dev_prompts_sha256"]:
        raise ValueError(f"--tree {source}: its dev prompts {dev_file} are missing or changed since")
    check_disjoint(read_prompts(dev_file), evaluation, dev_file)
    reused = []
    for method in methods:
        if method.name == "pld":
            chosen = record["methods"].get("pld", {}).get("chosen")
            tree = None if chosen is None else TreeConfig(chosen["top_k"], chosen["depth"], chosen["total_tokens"])
        elif method.draft is not None:
            same = json.loads(json.dumps(method_config(method))) == drafts.get(method.name)
            if not same:
                raise ValueError(f"--tree {source}: {method.name} there was another draft checkpoint")
            tree = TreeConfig(**trees[method.name])
        else:
            reused.append(method)
            continue
        if tree is None:
            raise ValueError(f"--tree {source}: that run chose no shape for {method.name}")
        reused.append(dataclasses.replace(method, tree=tree))
    return reused, {**record, "reused_from": {"file": str(source), "command": config.get("command"),
                                              "sampling": config.get("sampling")}}


def _tune_draft(target: TargetAdapter, method: Method, inputs: list[TargetInputs], settings: BenchSettings,
                tune: TuneSettings, verify: VerifyCost) -> tuple[Prediction, dict]:
    shapes = [(k, d) for k in range(1, tune.max_top_k + 1) for d in range(1, tune.max_depth + 1)]
    draft_s = _draft_costs(target, method, inputs, settings, shapes, tune)
    calibration = TreeConfig(top_k=tune.max_top_k, depth=tune.max_depth, total_tokens=tune.calibration_nodes)
    run = _calibration_run(target, dataclasses.replace(method, tree=calibration), inputs, settings)
    q = acceptance_table([r.walk for r in run.rounds], tune.max_depth, tune.max_top_k)
    model_s = draft_s[calibration.top_k, calibration.depth] + run.mean_verify(verify)
    overhead = max(0.0, run.round_s - model_s)
    candidates = candidate_trees(tune.max_top_k, tune.max_depth, tune.node_counts)
    ranked = predict_trees(q, candidates, draft_s, verify, overhead)
    return ranked[0], {
        "chosen": ranked[0].to_dict(), "runners_up": [p.to_dict() for p in ranked[1:6]],
        "calibration_tree": dataclasses.asdict(calibration), "rounds": len(run.rounds), "acceptance": q,
        "draft_s": {f"{k},{d}": s for (k, d), s in draft_s.items()}, "overhead_s": overhead,
        "check": {"predicted_tokens_per_round": expected_tokens(q, calibration)[0], "measured_tau": run.tau},
    }


def _tune_lookup(target: TargetAdapter, method: Method, inputs: list[TargetInputs], settings: BenchSettings,
                 tune: TuneSettings, verify: VerifyCost) -> tuple[Prediction, dict]:
    longest = TreeConfig(top_k=1, depth=tune.max_depth, total_tokens=tune.max_depth, chain=True)
    run = _calibration_run(target, dataclasses.replace(method, tree=longest), inputs, settings)
    rounds = [(r.drafted, r.accepted) for r in run.rounds]
    overhead = max(0.0, run.round_s - run.draft_s - run.mean_verify(verify))
    ranked = predict_chains(rounds, range(1, tune.max_depth + 1), run.draft_s, verify, overhead)
    measured = predict_chains(rounds, [tune.max_depth], run.draft_s, verify, overhead)[0]
    return ranked[0], {
        "chosen": ranked[0].to_dict(), "runners_up": [p.to_dict() for p in ranked[1:6]], "rounds": len(rounds),
        "draft_s": run.draft_s, "overhead_s": overhead,
        "check": {"predicted_tokens_per_round": measured.tokens_per_round, "measured_tau": run.tau},
    }


def _describe(best: Prediction) -> str:
    shape = (f"chain of {best.tree.depth}" if best.tree.chain else
             f"top_k {best.tree.top_k}, depth {best.tree.depth}, {best.tree.total_tokens} nodes")
    return f"{shape}: predicted {best.tokens_per_round:.2f} tokens a round, {best.tokens_per_s:.1f} tokens/s decoding"


def _say(text: str) -> None:
    print(f"tune: {text}", file=sys.stderr)


# ---- measurements ----------------------------------------------------------------------------------------------
def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = perf_counter()
        fn()
        times.append(perf_counter() - start)
    return median(times)


def timing_tree(nodes: int, depth: int) -> Tree:
    """A tree of `nodes` nodes and depth `depth`: a path down to `depth`, the rest hung along it (parents first)."""
    assert nodes > depth >= 0 or nodes == 1, (nodes, depth)
    parents = [-1, *range(depth)]
    parents += [(i % depth) if depth else 0 for i in range(nodes - depth - 1)]
    tokens = torch.arange(nodes) % 97 + 3           # ordinary ids; the values do not change the cost
    return tree_from_parents(tokens, torch.tensor(parents))


@torch.no_grad()
def _verify_cost(target: TargetAdapter, inputs: TargetInputs, tune: TuneSettings,
                 sampling: SamplingConfig) -> tuple[VerifyCost, list[tuple[int, int, float]]]:
    cache = target.new_cache()
    target.prefill(inputs, cache)
    generator = torch.Generator().manual_seed(0)
    rewind = torch.zeros(0, dtype=torch.long)

    def round_over(tree: Tree) -> None:
        logits = target.verify(tree.tokens, tree.ancestors, tree.depths, cache).logits[0]
        if sampling.greedy:
            verify_greedy(tree, logits)
        else:
            verify_sampling(tree, target_probs(logits, sampling), generator)
        target.commit(cache, tree.num_nodes, rewind)        # keep nothing: the cache is the prompt's again

    grid = {(1, 0)} | {(max(n, d) + 1, d) for n in tune.verify_nodes for d in tune.verify_depths if d <= tune.max_depth}
    samples = []
    for nodes, depth in sorted(grid):
        tree = timing_tree(nodes, depth)
        round_over(tree)                                    # untimed: first use of this shape
        samples.append((nodes, depth, _timed(lambda: round_over(tree), tune.timing_repeats)))
    return VerifyCost.fit(samples), samples


class _ShapeTimer:
    """A draft's proposer that, on its first round, times propose() at every shape, then proposes as asked."""

    def __init__(self, inner: Proposer, shapes: list[tuple[int, int]], nodes: int, repeats: int) -> None:
        self.inner, self.shapes, self.nodes, self.repeats = inner, shapes, nodes, repeats
        self.costs: dict[tuple[int, int], float] = {}

    def prefill_request(self) -> PrefillRequest:
        return self.inner.prefill_request()

    def begin(self, prompt: PromptState) -> None:
        self.inner.begin(prompt)

    def propose(self, root_token: int) -> Tree:
        if not self.costs:
            asked = self.inner.tree_cfg
            self.inner.propose(root_token)      # forwards the pending tokens; later calls forward the root alone
            for k, d in self.shapes:
                self.inner.tree_cfg = TreeConfig(top_k=k, depth=d, total_tokens=self.nodes)
                self.costs[k, d] = _timed(lambda: self.inner.propose(root_token), self.repeats)
            self.inner.tree_cfg = asked
        return self.inner.propose(root_token)

    def accept(self, step: AcceptedStep) -> None:
        self.inner.accept(step)


def _draft_costs(target: TargetAdapter, method: Method, inputs: list[TargetInputs], settings: BenchSettings,
                 shapes: list[tuple[int, int]], tune: TuneSettings) -> dict[tuple[int, int], float]:
    for i, prompt_inputs in enumerate(inputs):
        inner = make_proposer(method, target, settings.tree, settings.sampling, settings.seed + i)
        timer = _ShapeTimer(inner, shapes, tune.calibration_nodes, tune.timing_repeats)
        # Two tokens: the prefill's and one round, the round that runs the timings.
        generate(target, prompt_inputs, proposer=timer, sampling=settings.sampling, max_new_tokens=2,
                 seed=settings.seed + i)
        if timer.costs:
            return timer.costs
    raise ValueError("every dev prompt ended at its first token: no draft round to time; use other dev prompts")


@dataclass(frozen=True)
class CalibrationRound:
    walk: Round           # the accepted path, for acceptance by depth and rank
    drafted: int          # draft nodes verified
    accepted: int         # drafts accepted
    depth: int            # depth of the verified tree


class _Recorder:
    """Passes a proposer's calls through and keeps each round's tree and accepted tokens (references only:
    the walk is done after the run, outside the timed region)."""

    def __init__(self, inner: Proposer, max_new_tokens: int) -> None:
        self.inner, self.max_new_tokens = inner, max_new_tokens
        self.seen: list[tuple[Tree, list[int], int]] = []   # (tree, accepted drafts, deepest depth verified)
        self._tree: Tree | None = None
        self._emitted = 0

    def prefill_request(self) -> PrefillRequest:
        return self.inner.prefill_request()

    def begin(self, prompt: PromptState) -> None:
        self._emitted = 1                                   # the prefill's token
        self.inner.begin(prompt)

    def propose(self, root_token: int) -> Tree:
        self._tree = self.inner.propose(root_token)
        return self._tree

    def accept(self, step: AcceptedStep) -> None:
        # The engine cut the tree to depth < the tokens left (dream.engine._fit_budget).
        self.seen.append((self._tree, step.token_ids[1:].tolist(), self.max_new_tokens - self._emitted - 1))
        self._emitted += step.token_ids.shape[0]            # accepted drafts, then the bonus token
        self.inner.accept(step)


def walk(tree: Tree, accepted: list[int], max_depth: int) -> CalibrationRound:
    """The round's accepted path through the tree's nodes up to max_depth; children in the draft's rank order."""
    parents, tokens, depths = tree.parents.tolist(), tree.tokens.tolist(), tree.depths.tolist()
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(parents):
        if parent >= 0 and depths[node] <= max_depth:
            children.setdefault(parent, []).append(node)
    steps, node = [], 0
    for token in [*accepted, None]:
        kids = children.get(node, [])
        if not kids:
            break
        rank = next((r for r, child in enumerate(kids) if tokens[child] == token), None)
        steps.append((len(kids), rank))
        if rank is None:
            break
        node = kids[rank]
    verified = [d for d in depths if d <= max_depth]
    return CalibrationRound(tuple(steps), len(verified) - 1, len(accepted), max(verified))


@dataclass(frozen=True)
class _Calibration:
    rounds: list[CalibrationRound]
    round_s: float        # measured decode time per round (prefill excluded)
    draft_s: float        # measured proposer time per round
    tau: float

    def mean_verify(self, verify: VerifyCost) -> float:
        return sum(verify(r.drafted + 1, r.depth) for r in self.rounds) / len(self.rounds)


def _calibration_run(target: TargetAdapter, method: Method, inputs: list[TargetInputs],
                     settings: BenchSettings) -> _Calibration:
    recorders, metrics = [], []
    for i, prompt_inputs in enumerate(inputs):
        recorder = _Recorder(make_proposer(method, target, settings.tree, settings.sampling, settings.seed + i),
                             settings.max_new_tokens)
        result = generate(target, prompt_inputs, proposer=recorder, sampling=settings.sampling,
                          max_new_tokens=settings.max_new_tokens, seed=settings.seed + i)
        recorders.append(recorder)
        metrics.append(result.metrics)
    total = aggregate(metrics)
    rounds = [walk(tree, accepted, depth) for r in recorders for tree, accepted, depth in r.seen]
    if not rounds or not total.target_forwards:
        raise ValueError("the dev prompts gave no speculative round to calibrate on: use longer or more dev prompts")
    decode_s = total.total_s - total.prefill_s
    return _Calibration(rounds, decode_s / total.target_forwards, total.draft_s / total.target_forwards, total.tau)
