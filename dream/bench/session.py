"""One benchmark session: the recorded configuration, the timed run, the tables, the JSON and the plot.

The recorded configuration holds everything that decides the numbers, and how to get them again: the
command line as typed (`command`) and the code it ran (`code`: the git commit of the checkout the `dream`
package was imported from, and whether tracked files differed from it, with their paths).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch
import transformers

from dream.bench.prompts import PromptRecord
from dream.bench.plot import write_plot
from dream.bench.report import MethodSummary, Score, Summary, format_categories, format_table, json_document, summarize
from dream.bench.run import BenchResult, BenchSettings, build_inputs, run_bench
from dream.methods import Method, make_proposer, method_config
from dream.target import TargetAdapter, load_target
from dream.target.margins import mismatch_margin
from dream.settings import cpu_kind

log = logging.getLogger(__name__)


def execute(target: TargetAdapter, methods: Sequence[Method], prompts: list[PromptRecord], settings: BenchSettings,
            config: dict, *, json_out: Path | None, plot_out: Path | None,
            progress: bool = True) -> tuple[BenchResult, Summary, dict[str, list[str]]]:
    """Run, print the tables, write the JSON and plot. Returns the raw result, the summary and decoded texts."""
    load, cores = config["load_average_1m"], config["cpu_count"]
    if load is not None and cores and load > cores - 0.5:
        # Oversubscribed OpenMP threads spin and wait: timings then swing by multiples, not percent.
        log.warning("the machine is busy (load %.1f on %d cores): speeds will be noisy and low "
                    "(--threads 1 suffers least)", load, cores)
    result = run_bench(target, methods, prompts, settings, progress=progress)
    summary = with_margins(summarize(result, settings.sampling.greedy), result, target, settings, config)
    # Decoding happens here, after every timed generation.
    texts = {name: [target.tokenizer.decode(run.token_ids, skip_special_tokens=True) for run in result.first(name)]
             for name in result.runs}
    print(format_table(summary))
    for name, method in summary.methods.items():
        if method.overall.mismatches:
            parts = ", ".join(f"line {m.line} at token {m.position} (fp32 margin "
                              f"{'-' if m.fp32_margin is None else f'{m.fp32_margin:.3g}'})"
                              for m in method.overall.mismatched)
            print(f"{name} parts from {summary.reference}: {parts}")
    categories = format_categories(summary)
    if categories:
        print("\nby category")
        print(categories)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(json_document(config, summary, result, texts), indent=2) + "\n")
        print(f"wrote {json_out}", file=sys.stderr)
    if plot_out is not None:
        title = (f"{config['target']} ({config['dtype']}, T={settings.sampling.temperature:g}, {len(prompts)} prompts"
                 f" x {settings.repeats} repeats)")
        print(f"wrote {write_plot(summary, plot_out, title)}", file=sys.stderr)
    return result, summary, texts


def bench_config(target_name: str, target_path: Path, target: TargetAdapter, methods: Sequence[Method],
                 settings: BenchSettings, dtype: str, prompts_file: Path, prompts: list[PromptRecord],
                 command: Sequence[str] | None) -> dict:
    """Everything that decides the numbers: settings as resolved, the target's identity, the software."""
    pld_method = next((m for m in methods if m.name == "pld"), Method("pld"))
    pld = make_proposer(pld_method, target, settings.tree, settings.sampling, settings.seed)
    return {
        "command": None if command is None else list(command),
        "code": code_version(),
        "target": target_name,
        "target_path": str(target_path),
        "target_fingerprint": target.fingerprint(),
        "dtype": dtype,
        "batch_invariance": target.invariance.to_json(),
        "packed_linears": target.packed_linears,      # linears on prepacked weights, same bits (target.packing)
        "prompts_file": str(prompts_file),
        "prompts_sha256": hashlib.sha256(Path(prompts_file).read_bytes()).hexdigest(),
        "num_prompts": len(prompts),
        "categories": sorted({p.category for p in prompts if p.category is not None}),
        "max_new_tokens": settings.max_new_tokens,
        "sampling": dataclasses.asdict(settings.sampling),
        "tree": dataclasses.asdict(settings.tree),
        "trees": {m.name: dataclasses.asdict(m.tree or settings.tree) for m in methods if m.draft is not None},
        "pld": {"num_tokens": pld.num_tokens, "max_ngram": pld.max_ngram, "min_ngram": pld.min_ngram},
        "seed": settings.seed,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "methods": [m.name for m in methods],
        "drafts": {m.name: method_config(m) for m in methods if m.draft is not None},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_kind(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,   # before the run
        "platform": platform.platform(),
    }


def code_version() -> dict:
    """{"commit", "dirty", "dirty_paths"} of the checkout the package runs from; Nones outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = _git(root, "rev-parse", "HEAD")
        # Tracked files only, as `git describe --dirty` counts them: other work's untracked files change nothing.
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("cannot read the code's git commit (%s): recording none", err)
        return {"commit": None, "dirty": None, "dirty_paths": None}
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": head.strip(), "dirty": bool(paths), "dirty_paths": paths}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30).stdout


def with_margins(summary: Summary, result: BenchResult, target: TargetAdapter, settings: BenchSettings,
                 config: dict) -> Summary:
    """The summary with the fp32 logit margin of every greedy mismatch (dream.target.margins); a bf16 run
    loads an fp32 copy of the target for it, only when there is a mismatch."""
    wanted = sorted({(name, m.line) for name, s in summary.methods.items() for m in s.overall.mismatched or ()})
    if not wanted:
        return summary
    fp32 = target if config["dtype"] == "fp32" else load_target(config["target_path"], "fp32", target.model.device)
    index = {record.line: i for i, record in enumerate(result.prompts)}
    found = {}
    for name, line in wanted:
        i = index[line]
        inputs = build_inputs(target, [result.prompts[i]], settings.max_new_tokens)[0]
        found[name, line] = mismatch_margin(fp32, inputs, result.first(name)[i].token_ids,
                                            result.first(summary.reference)[i].token_ids)

    def fill(name: str, score: Score) -> Score:
        if score.mismatched is None:
            return score
        filled = [m if (x := found.get((name, m.line))) is None else
                  dataclasses.replace(m, fp32_margin=x.margin, fp32_token=x.fp32_token) for m in score.mismatched]
        return dataclasses.replace(score, mismatched=tuple(filled))

    methods = {name: MethodSummary(fill(name, s.overall), {c: fill(name, x) for c, x in s.categories.items()})
               for name, s in summary.methods.items()}
    return dataclasses.replace(summary, methods=methods)
