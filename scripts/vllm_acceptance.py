"""tau and acceptance by chain position in vLLM at temperature > 0, over several sets of request seeds.

At T > 0 one run's tau depends on which texts the target happened to sample (12-24 prompts swing by +-0.3),
so comparing two drafts or two samplers by one timed run each says little. This answers many seeded requests
per prompt on one in-process engine (batched: tau does not depend on load) and prints the pooled counters.

    python scripts/vllm_acceptance.py --seeds 6                  # shipped dream draft, 24 unseen-kind prompts
    DREAM_VLLM_CPU_DRAWS=0 python scripts/vllm_acceptance.py     # with vLLM's own draws
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dream.bench.prompts import read_prompts
from dream.methods import draft_dir
from dream.serving.engine import EngineConfig, build_llm, chat_messages, close_llm, spec_counters
from dream.target import resolve_target_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smolvlm-135m")
    parser.add_argument("--draft", default="dream", help="draft directory or shipped draft name (dream)")
    parser.add_argument("--prompts", type=Path, default=Path("dream/assets/prompts/eval-unseen.jsonl"))
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=6, help="sets of request seeds")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-speculative-tokens", type=int, default=5)
    args = parser.parse_args()
    from vllm import SamplingParams

    draft = str(draft_dir(args.draft))
    prompts = read_prompts(args.prompts, limit=args.limit)
    cfg = EngineConfig(target=str(resolve_target_path(args.target)), dtype="bfloat16", in_process=True,
                       num_speculative_tokens=args.num_speculative_tokens, max_num_seqs=16)
    llm = build_llm(cfg, "dream", draft)
    try:
        conversations = [chat_messages(p.prompt, p.image) for p in prompts]
        before = spec_counters(llm)
        for seed_set in range(args.seeds):
            params = [SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens,
                                     seed=1000 * seed_set + i) for i in range(len(conversations))]
            llm.chat(conversations, params, use_tqdm=False)
        counters = spec_counters(llm).minus(before)
    finally:
        close_llm(llm)
    by_position = " / ".join(f"{a / counters.drafts:.3f}" for a in counters.accepted_per_position)
    print(f"tau {counters.tau:.3f} over {counters.drafts} verify steps; accepted by position {by_position}")


if __name__ == "__main__":
    main()
