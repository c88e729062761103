"""`dream bench`: ar, hf, pld and every draft side by side, in one process, on the same prompts.

    dream bench --target smolvlm-135m --prompts prompts.jsonl --draft dream=runs/dream \\
        --draft eagle2=runs/eagle2 [--methods ar,hf,dream] [--keep-ratios 1.0,0.5] [--temperature 0] \\
        [--max-new-tokens 128] [--repeats 3] [--tree auto --dev-prompts dev.jsonl] [--dtype bf16] \\
        [--json out.json] [--plot out.png]

Without --draft, a zoo target runs its shipped drafts (the ones that exist). `--tree auto` chooses each
method's tree shape (prompt lookup: its chain length) on the dev prompts first (dream.bench.tune). Every
user error (a bad prompts line, a missing image, an unknown method, a draft for another target, a dev set
that overlaps the evaluation prompts, an output path that cannot be written, a prompt too long for the
context) is raised before the first timed generation. The loop is dream.bench.run, the report
dream.bench.report.

`--engine vllm` runs the same prompts through vLLM (dream.serving.bench) under the same method names
(dream.method_names): ar, pld, eagle2, eagle3, dream (by default those with a draft at hand). ENGINE_FLAGS says
which engine each flag is for; a flag of one engine given to the other is a one-line error, and a flag
missing from the table fails at parser build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from dream.bench.plot import supported_suffixes
from dream.bench.prompts import ASSETS_PROMPTS, HELDOUT_PROMPTS, read_prompts
from dream.bench.run import BenchSettings
from dream.bench.session import bench_config, code_version, execute
from dream.bench.tune import check_disjoint, reuse_tune, tune_methods
from dream.commands.common import (
    add_batch_invariant_argument,
    add_device_argument,
    add_dtype_argument,
    add_max_new_tokens_argument,
    add_target_argument,
    add_threads_argument,
    add_tree_arguments,
    parse_draft_arg,
    parse_keep_ratios,
    parse_methods,
    set_threads,
)
from dream.methods import CPU_TREE, DraftSpec, is_zoo_name, load_methods, plan_method_names, shipped_drafts
from dream.sampling import SamplingConfig
from dream.settings import torch_dtype
from dream.target import load_target, resolve_target_path
from dream.tree import TreeConfig

DEV_PROMPTS = ASSETS_PROMPTS / "dev.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_argument(parser)
    parser.add_argument("--engine", choices=[HARNESS, VLLM], default=HARNESS,
                        help="harness: this project's engine (methods ar, hf, pld, drafts, trees); vllm: vLLM with "
                             "the dream plugin (methods ar = no speculation, pld = its n-gram lookup, eagle2, "
                             "dream; chains, no trees)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="--engine vllm: requests kept in flight (default 1); reports throughput and latency")
    parser.add_argument("--num-speculative-tokens", type=int, default=None, metavar="K",
                        help=f"--engine vllm: chain length per step (default: the harness tree's depth, "
                             f"{CPU_TREE.depth})")
    parser.add_argument("--spec-schedule", metavar="A-B:K,...",
                        help="--engine vllm: chain length by requests in flight, e.g. 1-4:5,5-:2 (vLLM's dynamic "
                             "speculative decoding; its longest chain is the chain length)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="--engine vllm: shard the target and the draft over N ranks (on CPU, N processes "
                             "sharing this machine's cores)")
    parser.add_argument("--draft-sampling", choices=["probabilistic", "greedy"], default="probabilistic",
                        help="--engine vllm, temperature > 0: drafts sampled from the draft's distribution and "
                             "accepted with min(1, p/q) (default), or the draft's argmax (accepted with p)")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="--engine vllm: skip torch.compile (start-up in seconds; slower decoding)")
    parser.add_argument("--draft", action="append", default=[], metavar="NAME=DIR",
                        help="a draft checkpoint; NAME is eagle2, eagle3, dream or dream-<ablation> (default: its "
                             "architecture). Repeatable. Default: the shipped drafts of a zoo target")
    parser.add_argument("--methods", metavar="NAME,NAME,...",
                        help="run only these (default: ar, hf, pld and every draft; vllm: ar, pld and the drafts "
                             "of eagle2, eagle3, dream at hand); needs ar or hf (vllm: ar). The former vLLM names "
                             "base and ngram read as ar and pld")
    parser.add_argument("--prompts", type=Path, default=HELDOUT_PROMPTS,
                        help="JSON Lines {image, prompt, category}; default: the shipped held-out prompts")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    add_max_new_tokens_argument(parser)
    parser.add_argument("--repeats", type=int, default=1,
                        help="passes over the prompts (default 1); the JSON gives 95%% intervals over them")
    add_dtype_argument(parser)
    add_device_argument(parser)
    add_batch_invariant_argument(parser)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write a plot of speedup and tau")
    parser.add_argument("--keep-ratios", metavar="R,R,...",
                        help="also run the dream draft at these visual keep ratios (as dream-keep<100R>)")
    parser.add_argument("--tree", type=_tree_mode, default="fixed", metavar="{fixed,auto,RUN.json}",
                        help="fixed: the shape of --tree-top-k/--depth/--total-tokens for every method (default); "
                             "auto: each method's shape chosen on --dev-prompts, on this machine; RUN.json: the "
                             "shapes an earlier --tree auto run chose (same target and drafts)")
    parser.add_argument("--dev-prompts", type=Path,
                        help=f"prompts --tree auto calibrates on, disjoint from --prompts (default: {DEV_PROMPTS.name} "
                             "of the shipped prompts)")
    add_tree_arguments(parser)
    # None marks "not given", so --tree auto can refuse a shape it would otherwise silently override.
    parser.set_defaults(tree_top_k=None, depth=None, total_tokens=None)
    parser.add_argument("--seed", type=int, default=0, help="prompt i of repeat r samples with seed + r * n + i")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--warmup", type=int, default=1, help="prompts run untimed first (default 1)")
    add_threads_argument(parser)
    undeclared = [_flag(action) for action in parser._actions
                  if action.option_strings and action.dest != "help" and _flag(action) not in ENGINE_FLAGS]
    assert not undeclared, f"dream bench flags missing from ENGINE_FLAGS: {undeclared}"


HARNESS, VLLM, BOTH = "harness", "vllm", "both"
# The engine each flag is for (every flag of add_arguments; a new one must be added here).
ENGINE_FLAGS = {
    "--target": BOTH, "--engine": BOTH, "--draft": BOTH, "--methods": BOTH, "--prompts": BOTH,
    "--temperature": BOTH, "--max-new-tokens": BOTH, "--repeats": BOTH, "--dtype": BOTH, "--json": BOTH,
    "--limit": BOTH, "--warmup": BOTH,
    "--concurrency": VLLM, "--num-speculative-tokens": VLLM, "--spec-schedule": VLLM,
    "--tensor-parallel-size": VLLM, "--enforce-eager": VLLM, "--draft-sampling": VLLM,
    "--device": HARNESS, "--batch-invariant": HARNESS, "--plot": HARNESS, "--keep-ratios": HARNESS,
    "--tree": HARNESS, "--dev-prompts": HARNESS, "--tree-top-k": HARNESS, "--depth": HARNESS,
    "--total-tokens": HARNESS, "--seed": HARNESS, "--threads": HARNESS,
}


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def check_engine_flags(args: argparse.Namespace) -> None:
    """ValueError naming the flags given (not at their defaults) that --engine does not take."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args(["--target", args.target]))
    foreign = [_flag(action) for action in parser._actions
               if action.option_strings and ENGINE_FLAGS.get(_flag(action), BOTH) not in (BOTH, args.engine)
               and getattr(args, action.dest) != defaults[action.dest]]
    if foreign:
        other = VLLM if args.engine == HARNESS else HARNESS
        raise ValueError(f"--engine {args.engine} does not take {', '.join(foreign)} (--engine {other} only)")


def run(args: argparse.Namespace) -> int:
    check_engine_flags(args)
    if args.engine == VLLM:
        return run_vllm(args)
    settings = BenchSettings(max_new_tokens=args.max_new_tokens, sampling=SamplingConfig(args.temperature),
                             tree=_tree(args), seed=args.seed, warmup=args.warmup, repeats=args.repeats)
    set_threads(args.threads)
    check_outputs(args.json, args.plot)
    keep_ratios = parse_keep_ratios(args.keep_ratios)
    drafts = [parse_draft_arg(text) for text in args.draft]
    selected = parse_methods(args.methods)
    if not drafts and is_zoo_name(args.target):
        drafts = shipped_drafts(selected)
    plan_method_names(drafts, keep_ratios, selected)
    prompts = read_prompts(args.prompts, limit=args.limit)
    dev_file = args.dev_prompts or DEV_PROMPTS
    if args.tree == "auto":
        dev = read_prompts(dev_file)
        check_disjoint(dev, prompts, dev_file)
    elif args.dev_prompts is not None:
        raise ValueError("--dev-prompts is read only with --tree auto")
    dtype = torch_dtype(args.dtype)
    target_path = resolve_target_path(args.target)
    target = load_target(target_path, dtype, args.device, args.batch_invariant)
    methods = load_methods(target, drafts, keep_ratios, dtype, selected)
    tune_record = None
    if args.tree == "auto":
        methods, tune_record = tune_methods(target, methods, dev, dev_file, settings)
    elif isinstance(args.tree, Path):
        methods, tune_record = reuse_tune(args.tree, target, methods, prompts)
    config = bench_config(args.target, target_path, target, methods, settings, args.dtype, args.prompts, prompts,
                          getattr(args, "argv", None))
    config["tree"] = "auto" if tune_record is not None else config["tree"]
    config["tune"] = tune_record
    execute(target, methods, prompts, settings, config, json_out=args.json, plot_out=args.plot)
    return 0


def _tree(args: argparse.Namespace) -> TreeConfig:
    given = {"--tree-top-k": args.tree_top_k, "--depth": args.depth, "--total-tokens": args.total_tokens}
    if args.tree != "fixed" and any(v is not None for v in given.values()):
        flags = ", ".join(flag for flag, value in given.items() if value is not None)
        raise ValueError(f"--tree {args.tree} chooses the shapes itself: drop {flags}")
    return TreeConfig(top_k=_given_or(args.tree_top_k, CPU_TREE.top_k), depth=_given_or(args.depth, CPU_TREE.depth),
                      total_tokens=_given_or(args.total_tokens, CPU_TREE.total_tokens))


def _tree_mode(text: str) -> str | Path:
    if text in ("fixed", "auto"):
        return text
    if not text.endswith(".json"):
        raise argparse.ArgumentTypeError(f"expected fixed, auto or the JSON of a --tree auto run, got {text!r}")
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _given_or(value: int | None, default: int) -> int:
    return default if value is None else value


def check_outputs(json_out: Path | None, plot_out: Path | None) -> None:
    """ValueError unless each output path names a file that can be written (parent folders are made)."""
    if json_out is not None and plot_out is not None and json_out.resolve() == plot_out.resolve():
        raise ValueError(f"--json and --plot name the same file {json_out}")
    if plot_out is not None and plot_out.suffix.lower() not in supported_suffixes():
        raise ValueError(f"--plot {plot_out}: the name must end in one of {', '.join(sorted(supported_suffixes()))}")
    for flag, path in (("--json", json_out), ("--plot", plot_out)):
        if path is not None:
            _check_writable(flag, path)


def _check_writable(flag: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A probe file in the folder: permission bits alone do not tell (root, read-only mounts).
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".dream-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {path} cannot be written ({err.strerror or err})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is not writable")


def vllm_drafts(target: str, given: list[DraftSpec], selected: list[str] | None) -> dict[str, str]:
    """Method name -> draft directory for the vLLM bench: the --draft ones, and for a zoo target the shipped
    drafts of the draft methods no --draft names (all of them without --draft, else those --methods selects;
    a selected one that is not shipped is a one-line error)."""
    drafts = {spec.name: str(spec.path) for spec in given}
    if is_zoo_name(target) and (not given or selected):
        wanted = None if selected is None else [name for name in selected if name not in drafts]
        drafts = {spec.name: str(spec.path) for spec in shipped_drafts(wanted)} | drafts
    return drafts


def run_vllm(args: argparse.Namespace) -> int:
    """The same prompts through vLLM (dream.serving.bench): one JSON in the harness bench's layout."""
    from dream.serving.bench import METHODS, VllmBenchConfig, format_table, run_vllm_bench
    from dream.serving.engine import VLLM_DTYPES, EngineConfig, chain_length, parse_spec_schedule

    check_outputs(args.json, None)
    schedule = parse_spec_schedule(args.spec_schedule) if args.spec_schedule else ()
    k = chain_length(args.num_speculative_tokens, schedule, CPU_TREE.depth)
    if k < 1 or args.concurrency < 1 or args.tensor_parallel_size < 1:
        raise ValueError("--num-speculative-tokens, --concurrency and --tensor-parallel-size must be >= 1")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    selected = parse_methods(args.methods)
    unknown = [m for m in selected or () if m not in METHODS]
    if unknown:
        raise ValueError(f"--engine vllm methods are {', '.join(METHODS)}; not {', '.join(unknown)}")
    drafts = vllm_drafts(args.target, [parse_draft_arg(text) for text in args.draft], selected)
    prompts = read_prompts(args.prompts, limit=args.limit)
    engine = EngineConfig(target=str(resolve_target_path(args.target)), dtype=VLLM_DTYPES[args.dtype],
                          num_speculative_tokens=k, max_num_seqs=max(args.concurrency, 1), spec_schedule=schedule,
                          tensor_parallel_size=args.tensor_parallel_size, enforce_eager=args.enforce_eager,
                          draft_sampling=args.draft_sampling)
    cfg = VllmBenchConfig(engine=engine, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          concurrency=args.concurrency, warmup=args.warmup, repeats=args.repeats, drafts=drafts)
    record = run_vllm_bench(cfg, prompts, None if selected is None else tuple(selected))
    argv = getattr(args, "argv", None)
    record["config"].update(target=args.target, prompts_file=str(args.prompts), dtype=args.dtype,
                            command=None if argv is None else list(argv), code=code_version(),
                            cpu_count=os.cpu_count(), platform=platform.platform())
    print(format_table(record))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0

