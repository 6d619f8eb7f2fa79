"""A real server for the HTTP tests: the real Engine on the default model (CPU), served by
`aiollm.api.serve` on a free port, on its own uvloop event loop in a background thread, as
`aiollm serve` runs it.

Loading the model costs 10-25 s of CPU, so test modules share one server for the whole
session (`shared_server`); a module that needs other engine limits starts its own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
import uvloop

from aiollm.api import CorsOptions, create_app, serve
from aiollm.engine import Engine

MAX_MODEL_LEN = 512  # small, so that "prompt too long" is cheap to provoke
KV_TOKENS = 8192
_SERVING: set = set()  # the LiveServers of this process started and not yet closed


class LiveServer:
    def __init__(self, *, api_key: str | None = None, shutdown_timeout: float = 5.0,
                 cors: CorsOptions | None = None, app_options: dict[str, Any] | None = None,
                 **engine_options: Any) -> None:
        """app_options: create_app's other options; engine_options: Engine's."""
        self.api_key, self.shutdown_timeout, self.cors = api_key, shutdown_timeout, cors
        self.app_options = app_options or {}
        self.engine_options = {"max_model_len": MAX_MODEL_LEN, "kv_tokens": KV_TOKENS,
                               **engine_options}
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="api-test-server", daemon=True)

    def start(self, timeout: float = 300) -> "LiveServer":
        self.thread.start()
        assert self.started.wait(timeout), "the server did not start"
        if self.error is not None:
            raise self.error
        _SERVING.add(self)
        return self

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced to the fixture
            self.error = e
            self.started.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        self.engine = Engine(**self.engine_options)
        self.app = create_app(self.engine, api_key=self.api_key,
                              shutdown_timeout=self.shutdown_timeout, cors=self.cors,
                              **self.app_options)
        await serve(self.app, "127.0.0.1", 0, stop=self.stop, on_started=self._on_started)

    def _on_started(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"
        self.started.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """fn() run on the server's event loop (the engine is not thread-safe)."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stats(self) -> dict[str, int]:
        """engine.stats() plus the free rows of req_to_token and the loop's task count."""
        def read():
            e = self.engine
            return {**e.stats(), "free_rows": e.req_to_token.n_free_rows,
                    "rows": e.req_to_token.rows, "tasks": len(asyncio.all_tasks())}
        return self.call(read)

    def wait_idle(self, timeout: float = 10.0) -> dict[str, int]:
        """The stats once nothing holds a KV slot, a table slot or a req_to_token row;
        fails the test if that takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if is_idle(s):
                return s
            if time.monotonic() > deadline:
                pytest.fail(f"the engine still holds resources after {timeout}s: {s}")
            time.sleep(0.05)

    def begin_shutdown(self) -> None:
        """What SIGINT/SIGTERM do to `aiollm serve`."""
        self.loop.call_soon_threadsafe(self.stop.set)

    def close(self) -> None:
        if self.thread.is_alive():
            self.begin_shutdown()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not shut down"
        _SERVING.discard(self)
        if _SERVING and not gc.get_freeze_count():
            # Its stop thawed every frozen object (api/server.py), those another server of
            # this process still serving froze at its start: freeze them again, as that
            # server keeps them. Else each garbage collection of the tests' process walks
            # its whole heap again (~0.1-0.5 s each, many in a module) until a server starts.
            gc.collect()
            gc.freeze()
        assert self.error is None, self.error


def is_idle(s: dict[str, int]) -> bool:
    return (s["kv_used"], s["running"], s["waiting"], s["table_used"]) == (0, 0, 0, 0) \
        and s["free_rows"] == s["rows"]


_SHARED = pytest.StashKey[LiveServer]()


def shared_server(config: pytest.Config) -> LiveServer:
    """The session's default server (MAX_MODEL_LEN, KV_TOKENS, engine defaults otherwise),
    started by the first module that asks and shut down gracefully at the end."""
    srv = config.stash.get(_SHARED, None)
    if srv is None:
        srv = LiveServer().start()
        config.stash[_SHARED] = srv
        config.add_cleanup(srv.close)
    return srv


_SHARED_RANDOM = pytest.StashKey[LiveServer]()


def shared_random_server(config: pytest.Config, tmp_path_factory) -> LiveServer:
    """The session's server of a tiny random Llama (conftest.tiny_llama: one layer, dummy
    weights, MAX_MODEL_LEN positions) with the default model's tokenizer and chat template
    and the shared server's limits, for the tests whose checks hold for any model's words
    (the default model's 30 layers cost ~0.1 s of a 2-core CPU a token). Started by the
    first module that asks and shut down gracefully at the end, as shared_server."""
    from conftest import tiny_llama

    srv = config.stash.get(_SHARED_RANDOM, None)
    if srv is None:
        path = tiny_llama(tmp_path_factory.mktemp("random"),
                          max_position_embeddings=MAX_MODEL_LEN)
        srv = LiveServer(model=path, load_format="dummy").start()
        config.stash[_SHARED_RANDOM] = srv
        config.add_cleanup(srv.close)
    return srv


# -- client side -------------------------------------------------------------------------------

def http(server: LiveServer, method: str, path: str, **kw) -> tuple[int, dict, bytes]:
    """One request with a plain aiohttp client: (status, headers, body)."""
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, server.base + path, **kw) as r:
                return r.status, dict(r.headers), await r.read()
    return asyncio.run(go())


LIGHTLLM_ROUTES = ("/generate", "/generate_stream", "/tokens", "/get_score", "/")


def refused_status(path: str) -> int:
    """The status of a request refused as sent (bad input) at `path`: 417 on LightLLM's
    routes, as LightLLM answers it, else 400."""
    bare = path.split("?")[0]
    return 417 if bare in LIGHTLLM_ROUTES or bare.rstrip("/") in LIGHTLLM_ROUTES else 400


def post_ok(server: LiveServer, body: dict, path: str = "/v1/chat/completions") -> dict:
    """POST `body` as JSON to `path`; the answer's JSON, asserting a 200."""
    status, _, raw = http(server, "POST", path, json=body)
    assert status == 200, raw
    return json.loads(raw)


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """The results of the zero-argument calls (requests made with the helpers here), made at
    the same time from threads: the server batches them, so they take the time of the
    longest. For requests that do not depend on each other's answers."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def sse_events(body: bytes) -> list[str]:
    """The data of each SSE event (after `data:` or `data: `)."""
    out = []
    for block in body.split(b"\n\n"):
        if block.strip():
            assert block.startswith(b"data:"), block
            out.append(block[5:].strip().decode())
    return out


def rss_bytes() -> int:
    """Resident memory of this process (server and tests) now, after a garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def openai_client(server: LiveServer) -> Any:
    """The official `openai` client on `server` (no retries, 120 s a request)."""
    import openai

    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def tiny_server(server: LiveServer, tmp_path, add_tokens: Callable[[Any], None],
                calls_template: str, **engine_options: Any) -> tuple[LiveServer, Any]:
    """A started LiveServer of a tiny random Llama (1 layer, hidden 32, dummy weights) whose
    tokenizer is `server`'s plus what `add_tokens(tokenizer)` adds, with a chat template
    that names `calls_template` (so the tool parser is chosen by it); and that transformers
    tokenizer. engine_options: Engine's, over max_model_len 1024 and kv_tokens 2048. The
    caller closes the server."""
    import transformers

    server.engine.tokenizer.hf_tokenizer.save_pretrained(tmp_path / "tok")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    add_tokens(tok)
    tok.chat_template = ("{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}"
                         "{# calls: " + calls_template + " #}")
    tok.save_pretrained(tmp_path / "tok")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(tok),
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}))
    srv = LiveServer(model=str(model), tokenizer=str(tmp_path / "tok"), load_format="dummy",
                     **{"max_model_len": 1024, "kv_tokens": 2048, **engine_options}).start()
    return srv, tok
