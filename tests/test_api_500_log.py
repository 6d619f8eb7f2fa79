"""A handler's unexpected error (a fault of the server, its 500) is logged with the
request's id (X-Request-Id) and its method and path, so that a client's 500 can be found
in the log. An app around a tiny random-weight model, served in-process."""

from __future__ import annotations

import asyncio
import logging

from aiohttp.test_utils import TestClient, TestServer
from transformers import LlamaConfig

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.errors import RequestFailed


def test_unexpected_500_is_logged_with_its_request_id(tmp_path, caplog):
    LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=256).save_pretrained(tmp_path)

    async def broken() -> None:
        raise RuntimeError("boom in the health check")

    async def main():
        engine = Engine(str(tmp_path), load_format="dummy", kv_tokens=512)
        engine.check_health = broken  # a fault no handler expects
        async with TestClient(TestServer(create_app(engine))) as client:
            resp = await client.get("/health", headers={"X-Request-Id": "trace-500"})
            return resp.status, resp.headers["X-Request-Id"], await resp.json()

    with caplog.at_level(logging.ERROR, logger="aiollm.api"):
        status, rid, body = asyncio.run(main())
    assert (status, rid) == (500, "trace-500"), body
    assert body["error"]["message"] == "internal error: RuntimeError"
    logged = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
    assert len(logged) == 1, caplog.text
    line = logged[0].getMessage()
    assert "trace-500" in line and "GET /health" in line, line


def test_a_failed_requests_500_is_logged_with_its_request_id(tmp_path, caplog):
    """A request the engine failed (RequestFailed: its cause is logged where it happened) is
    a 500 too: the log names the request, so the client's 500 and the cause can be matched."""
    LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=256).save_pretrained(tmp_path)

    async def failed() -> None:
        raise RequestFailed("model step failed: RuntimeError: boom in the step")

    async def main():
        engine = Engine(str(tmp_path), load_format="dummy", kv_tokens=512)
        engine.check_health = failed
        async with TestClient(TestServer(create_app(engine))) as client:
            resp = await client.get("/health", headers={"X-Request-Id": "trace-failed"})
            return resp.status, await resp.json()

    with caplog.at_level(logging.ERROR, logger="aiollm.api"):
        status, body = asyncio.run(main())
    assert status == 500, body
    lines = [r.getMessage() for r in caplog.records if "boom in the step" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "trace-failed" in lines[0] and "GET /health" in lines[0], lines[0]
