"""Where vLLM's bf16 speculative greedy output leaves plain vLLM's: the first op of the target whose output row
differs between the plain engine and the speculative one for the same (position, token) row.

    python scripts/vllm_row_variance.py [--prompt 4] [--draft dream] [--chain 5]

Runs the shipped smolvlm-135m target twice in process, eager (hooks see every op): plain, then with the draft.
Each op of each decoder layer records its output rows, keyed by position and the layer-0 input row (the
token's embedding); rows present in both runs are compared. Prints the first output index that differs and,
per (layer, op), the positions whose rows differ (with the rows in that pass and the largest difference).
Set VLLM_CPU_ATTN_SPLIT_KV=0 to take the attention kernel's KV split out. docs/vllm.md has what it found.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

import torch

from dream.bench.prompts import read_prompts
from dream.methods import draft_dir
from dream.serving.engine import EngineConfig, build_llm, chat_messages, close_llm
from dream.target.loading import resolve_target_path

OPS = ("ln1", "qkv", "core", "o", "attn", "ln2", "gate_up", "act", "down", "mlp")


def layer_ops(layer: Any) -> dict[str, Any]:
    attn, mlp = layer.self_attn, layer.mlp
    return {"ln1": layer.input_layernorm, "qkv": attn.qkv_proj, "core": attn.attn, "o": attn.o_proj, "attn": attn,
            "ln2": layer.post_attention_layernorm, "gate_up": mlp.gate_up_proj, "act": mlp.act_fn,
            "down": mlp.down_proj, "mlp": mlp}


def record_rows(worker: Any, rows: dict) -> None:
    """Hook the target's decoder layers: rows[(layer, op, position, checksums)] = (output row, rows in pass)."""
    text = worker.model_runner.model.model.text_model
    current: dict[str, torch.Tensor] = {}

    def remember_inputs(module: Any, args: tuple, kwargs: dict) -> None:
        current["positions"] = kwargs.get("positions", args[0] if args else None).clone()
        current["embeds"] = kwargs.get("hidden_states", args[1] if len(args) > 1 else None).float()

    text.layers[0].register_forward_pre_hook(remember_inputs, with_kwargs=True)
    for index, layer in enumerate(text.layers):
        for name, module in layer_ops(layer).items():
            def keep(module: Any, args: tuple, out: Any, index: int = index, name: str = name) -> None:
                out = out[0] if isinstance(out, tuple) else out
                positions, embeds = current["positions"], current["embeds"]
                for r in range(positions.numel()):
                    key = (index, name, int(positions[r]), embeds[r].sum().item(), embeds[r].abs().sum().item())
                    rows[key] = (out[r].detach().clone(), positions.numel())
            module.register_forward_hook(keep)


def run(method: str, prompt: Any, chain: int) -> tuple[list[int], dict]:
    from vllm import SamplingParams

    cfg = EngineConfig(target=str(resolve_target_path("smolvlm-135m")), dtype="bfloat16", enforce_eager=True,
                       num_speculative_tokens=chain, max_num_seqs=1, in_process=True)
    llm = build_llm(cfg, method, draft_dir(method) if method != "ar" else None)
    rows: dict = {}
    llm.collective_rpc(lambda worker: record_rows(worker, rows))
    out = llm.chat(chat_messages(prompt.prompt, prompt.image), SamplingParams(temperature=0, max_tokens=64),
                   use_tqdm=False)[0].outputs[0].token_ids
    close_llm(llm)
    return list(out), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=4, help="index into eval-unseen.jsonl")
    parser.add_argument("--draft", default="dream")
    parser.add_argument("--chain", type=int, default=5)
    args = parser.parse_args()
    prompt = read_prompts("dream/assets/prompts/eval-unseen.jsonl")[args.prompt]
    plain_out, plain = run("ar", prompt, args.chain)
    spec_out, spec = run(args.draft, prompt, args.chain)
    first = next((i for i, (a, b) in enumerate(zip(plain_out, spec_out)) if a != b), None)
    print(f"first differing output token: {first}")
    differing: dict[tuple[int, str], list] = defaultdict(list)
    for key, (row, n) in spec.items():
        if key in plain and not torch.equal(plain[key][0], row):
            diff = (plain[key][0].float() - row.float()).abs().max().item()
            differing[key[:2]].append((key[2], n, diff))
    for layer, op in sorted(differing, key=lambda k: (k[0], OPS.index(k[1])))[:16]:
        print(f"layer {layer} {op}: (position, rows in pass, max diff) {differing[layer, op][:4]}")
    print(f"rows compared: {len(set(plain) & set(spec))}")


if __name__ == "__main__":
    main()
