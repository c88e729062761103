"""Tensor parallelism in vLLM on CPU: a tiny SmolVLM target and its DREAM draft sharded over 2 ranks (2
processes splitting this machine's cores; the draft's cross-attention heads split between them), fp32 greedy,
through `dream bench --engine vllm --tensor-parallel-size 2`. vLLM without speculation returns the harness's
plain decoding, and with the draft (accepted: tau > 1) the same tokens.

Slow (two multi-process engines start): run with `pytest -m slow tests/test_vllm_tp.py`. A subprocess, because
vLLM caches its environment in a process that has run an in-process engine (the other vLLM tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optional import require

require("vllm")

from drafts import overfit_draft  # noqa: E402
from fixtures import build_tiny_target, tiny_image  # noqa: E402

from dream.chat import user_messages  # noqa: E402
from dream.draft import save_draft  # noqa: E402
from dream.engine import generate  # noqa: E402
from dream.target import TargetAdapter  # noqa: E402

PROMPTS = (("Describe it.", (48, 32)), ("What is in the picture?", (32, 40)))
MAX_TOKENS = 24
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_ranks_give_plain_vllm_and_the_harness_greedy_tokens(tmp_path):
    # Heads and KV heads even: vLLM shards the target's, the draft's cross-attention needs the same.
    target_dir = build_tiny_target("smolvlm", tmp_path / "target", head_dim=32, num_attention_heads=4,
                                   num_key_value_heads=2)
    target = TargetAdapter.from_pretrained(target_dir)
    lines, inputs = [], []
    for i, (text, size) in enumerate(PROMPTS):
        image = tiny_image(i, size)
        image.save(tmp_path / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "prompt": text, "category": "describe"}))
        inputs.append(target.build_inputs(user_messages(text, with_image=True), [image]))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    ar = [generate(target, x, max_new_tokens=MAX_TOKENS).token_ids for x in inputs]
    draft = overfit_draft(target, inputs[0], ar[0], "dream").float().eval()
    draft_dir = save_draft(tmp_path / "dream", draft, target.fingerprint(), dtype=torch.float32)

    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DREAM_CACHE": str(tmp_path / "cache"),
           # the fixture's 256 positions; the bench asks for its usual 2,048 (prompts here are short)
           "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    command = [sys.executable, "-m", "dream.cli", "bench", "--engine", "vllm", "--target", str(target_dir),
               "--draft", f"dream={draft_dir}", "--methods", "ar,dream", "--prompts", str(tmp_path / "prompts.jsonl"),
               "--dtype", "fp32", "--max-new-tokens", str(MAX_TOKENS), "--num-speculative-tokens", "3",
               "--tensor-parallel-size", "2", "--enforce-eager", "--json", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["config"]["engine"]["tensor_parallel_size"] == 2
    for prompt, expected in zip(record["prompts"], ar):
        assert prompt["outputs"]["ar"]["token_ids"] == expected
        assert prompt["outputs"]["dream"]["token_ids"] == expected
    assert record["methods"]["dream"]["mismatches"] == 0 and record["methods"]["dream"]["tau"] > 1.5
