"""Shared test set-up. Triton kernels run under Triton's CPU interpreter when no GPU is present;
the variable must be set before triton is first imported."""

import os

try:
    import torch

    _cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import asyncio
import atexit
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# What aiollm derives from model files (aiollm/model/derived_cache.py) is cached for this
# session only: tests start from an empty cache and leave the user's own alone.
if "AIOLLM_CACHE_DIR" not in os.environ:
    os.environ["AIOLLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="aiollm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AIOLLM_CACHE_DIR"], True)
# Files that the run's processes (the xdist workers) share, made once for the run: the
# reference model's tensors (hf_gguf_reference.py).
if "AIOLLM_TEST_SHARED_DIR" not in os.environ:
    os.environ["AIOLLM_TEST_SHARED_DIR"] = tempfile.mkdtemp(prefix="aiollm-test-shared-")
    atexit.register(shutil.rmtree, os.environ["AIOLLM_TEST_SHARED_DIR"], True)


def load_bench(name: str):
    """bench/<name>.py as module bench_<name> (bench/ is scripts, not a package)."""
    mod_name = f"bench_{name}"
    if mod_name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(mod)
    return sys.modules[mod_name]


@pytest.fixture(scope="module")
def loop():
    """An event loop per test module, for the modules that drive an Engine through run()."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop, coro, timeout: float = 300):
    """coro run to completion on loop; asyncio.TimeoutError after timeout seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def out_of_memory_once(model, step_tokens: int, failed: list) -> None:
    """Make model.forward raise torch.OutOfMemoryError in the first step of `step_tokens`
    tokens (appending them to `failed`, which must start empty) and run as before after:
    one injected out-of-memory step (engine/oom.py's back-off follows)."""
    def forward(batch):
        if len(batch.input_ids) == step_tokens and not failed:
            failed.append(step_tokens)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return type(model).forward(model, batch)

    model.forward = forward


def pytest_configure(config):
    # One clear line instead of every kernel test failing alike (triton_interpreter_check.py).
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton_interpreter_check import interpreter_runs_runtime_loops, mismatch_message

        if not interpreter_runs_runtime_loops():
            pytest.exit(mismatch_message(), returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_collection_modifyitems(config, items):
    from file_order import longest_first

    longest_first(items)  # (the order xdist hands the files out in: file_order.py)
    if _cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hf_reference():
    """transformers' LlamaForCausalLM (fp32, eval mode) on the default GGUF model: the
    reference that the model and engine tests compare with. Loading it costs 10-25 s on the
    CPU, so the session loads it once; tests only run its forward and must not change it.

    from_pretrained(..., gguf_file=) needs accelerate, which aiollm does not depend on;
    hf_gguf_reference.py takes the same path without it (transformers' config and tensors
    from the GGUF file), once per test run: another xdist worker reads the same tensors back
    from the run's shared folder instead of de-quantizing the file again."""
    import hf_gguf_reference

    from aiollm.model import default_model_path

    return hf_gguf_reference.load(default_model_path())


def tiny_llama(path, *, vocab_size: int = 49152, hidden_size: int = 32,
               intermediate_size: int = 64, num_hidden_layers: int = 1,
               num_attention_heads: int = 4, num_key_value_heads: int = 2,
               max_position_embeddings: int = 256, bos_token_id: int | None = 1,
               eos_token_id: int | None = 2) -> str:
    """The config.json of a tiny random Llama saved into the directory `path` (str or Path),
    as a str: by default one layer, hidden 32, 4 query and 2 KV heads, 256 positions and the
    default tokenizer's 49,152-token vocabulary (transformers' bos 1 and eos 2). Engine or
    LLM loads it with load_format="dummy" (random weights, no weight files here); the
    tokenizer is the default one unless the caller saves another beside it."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                max_position_embeddings=max_position_embeddings, bos_token_id=bos_token_id,
                eos_token_id=eos_token_id).save_pretrained(path)
    return str(path)


def sharp_tiny_llama(path, **shape) -> str:
    """tiny_llama(path, **shape) with random weights saved beside its config as HF
    safetensors (seed 0), for engine tests that compare the engine's output with its own
    (batch mixes, chunking, eviction, the prefix cache on and off) where the default model's
    compute is the cost. Its projections and lm_head have std 0.2, not the usual 0.02:
    attention then picks out a few keys, as a trained model's does, so a step that reads
    one wrong key, or misses one, changes a token; at 0.02 every key weighs about the same
    and such a fault hides in the mean. The directory has no tokenizer: give the engine
    tokenizer=default_model_path()."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tiny_llama(path, **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(path))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight") or name == "lm_head.weight":
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A directory holding tiny_llama's default config, for tests that serve an app in
    process without loading the default model: Engine loads it with random weights. A
    module that needs another shape defines its own `tiny` with tiny_llama's keywords."""
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def cpu_plan(tiny, monkeypatch):
    """check_kv_plan of `tiny` (K and V 128 bytes a token in float32) on the CPU under
    EngineConfig(**options), with the machine's memory and swap set to `limit` bytes:
    call it as cpu_plan(limit, **options)."""
    import torch

    from aiollm.config import EngineConfig
    from aiollm.engine import kv_plan
    from aiollm.model.hf_config import load_hf_config

    config = load_hf_config(tiny)

    def check(limit: int, **options) -> None:
        monkeypatch.setattr(kv_plan, "memory_limit", lambda: limit)
        kv_plan.check_kv_plan(EngineConfig(model=tiny, **options), config,
                              torch.device("cpu"), torch.float32)
    return check


@pytest.fixture(scope="module")
def server(request):
    """The live server shared by the HTTP tests (tests/live_server.py); a module that needs
    another (a tight pool, a wait for idle after each test) defines its own."""
    from live_server import shared_server

    return shared_server(request.config)


@pytest.fixture(scope="module")
def random_server(request, tmp_path_factory):
    """The session's tiny random Llama server (tests/live_server.py's shared_random_server:
    the default tokenizer and chat template, the shared server's limits); a module that
    needs another shape or template defines its own."""
    from live_server import shared_random_server

    return shared_random_server(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def random_client(random_server):
    """The official `openai` client on random_server."""
    from live_server import openai_client

    return openai_client(random_server)


@pytest.fixture(scope="module")
def random_model(random_client) -> str:
    """random_server's model name, as its /v1/models lists it."""
    return random_client.models.list().data[0].id


@pytest.fixture(scope="module", params=["deepseek_r1", "qwen3"])
def thinker(request, tmp_path_factory):
    """A server started with --reasoning-parser, one per parser, for the module: a tiny
    random Llama (tiny_llama, 1,024 positions, dummy weights) with the default model's
    tokenizer and chat template. What the reasoning tests check is how the output is split,
    and the grammar (a regex, a tool call) shapes it, not the model's words: the default
    model's 30 layers cost ~50 ms of CPU a token for nothing they assert."""
    from live_server import LiveServer

    model = tiny_llama(tmp_path_factory.mktemp("thinker"), max_position_embeddings=1024)
    srv = LiveServer(model=model, load_format="dummy", max_model_len=1024,
                     reasoning_parser=request.param).start()
    yield srv
    srv.close()


@pytest.fixture
def gpu_memory(monkeypatch):
    """Patch torch.cuda's memory queries (no GPU here), for the KV pool's sizing
    arithmetic (aiollm/model/kv_pool_size.py, aiollm/engine/kv_plan.py): set(free=, total=,
    reserved=) in GiB, or in bytes with unit=1.

    The objects that exist as the test starts are frozen (gc.freeze) until it ends: the
    gc.collect() before each measurement of the memory then walks the test's own objects
    only (the garbage it makes, such as a cycle whose collection frees memory, is collected
    as before), not the whole heap of a test process with torch and transformers loaded:
    ~0.3 s a call, dozens of calls in a file. Where a live server of this process had
    frozen the heap first (api/server.py), nothing more is frozen: gc.unfreeze() would thaw
    its objects too, and what the test left frozen would stay uncollected until it stops."""
    import gc

    import torch

    state = {}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (state["free"], state["total"]))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])

    def set_(free: float, total: float, reserved: float = 0, unit: int = 2**30) -> None:
        state.update({name: int(size * unit) for name, size in
                      (("free", free), ("total", total), ("reserved", reserved))})
    if gc.get_freeze_count():  # a live server of this process froze its heap at its start
        yield set_
        return
    gc.freeze()
    try:
        yield set_
    finally:
        gc.unfreeze()


@pytest.fixture
def held_json_schemas(monkeypatch):
    """xgrammar's JSON schema compilation made to wait, for a schema titled "held" with
    property p<i>, until release[i] is set (a real large schema takes seconds to minutes);
    calls[i] counts its compilations. Yields (release, calls). At the end all are released,
    and once their compilations have returned, the held grammars are dropped from the
    process's grammar cache: a test's stopped engine leaves its compile threads running, and
    a held grammar they cached late was found compiled by the next test using the same i."""
    import re
    import threading
    import time
    from collections import defaultdict

    import xgrammar as xgr

    from aiollm.engine import grammar

    real = xgr.GrammarCompiler.compile_json_schema
    release: dict = defaultdict(threading.Event)
    calls: dict = defaultdict(int)
    running = [0]  # held compilations not yet returned
    compile_threads = set()  # the engines' per-compilation threads that ran a held one
    lock = threading.Lock()

    def held(self, schema, *args, **kwargs):
        if '"held"' not in schema:
            return real(self, schema, *args, **kwargs)
        i = int(re.search(r'"p(\d+)"', schema)[1])
        with lock:
            calls[i] += 1
            running[0] += 1
            if threading.current_thread().name == "aiollm-grammar-compile":
                compile_threads.add(threading.current_thread())
        try:
            release[i].wait(30)
            return real(self, schema, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(xgr.GrammarCompiler, "compile_json_schema", held)
    yield release, calls
    for event in list(release.values()):
        event.set()
    deadline = time.monotonic() + 10
    while running[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    # a compile thread ends after its grammar's insert into the cache, which follows the
    # compile's return (a loaded CPU can leave it there for longer than a fixed wait)
    for thread in compile_threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with grammar._CACHE.lock:
        for key in [k for k in grammar._CACHE.compiled if '"held"' in str(k)]:
            del grammar._CACHE.compiled[key]


@pytest.fixture(scope="module")
def client(server):
    """The official `openai` client on the shared server."""
    from live_server import openai_client

    return openai_client(server)


@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Each test starts with Python's own SIGINT handler. A suite started in the background
    by a non-interactive shell (`make test &`) starts with SIGINT ignored (POSIX, for
    asynchronous commands without job control), so Python installs no KeyboardInterrupt
    handler: every Ctrl-C test of a worker whose earlier tests happened not to reset it (an
    asyncio loop's signal handler removal does) failed or hung (2026-12-04: "DID NOT RAISE
    KeyboardInterrupt", getsignal gave SIG_IGN)."""
    import signal
    import threading

    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
