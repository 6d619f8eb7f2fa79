"""Every 500 is logged with the request's id (X-Request-Id) and its method and path, so that a
client's 500 can be found in the log: a handler's unexpected error (a fault of the server,
logged with its traceback) and a request the engine failed (RequestFailed, whose cause is
logged where it happened). An app around a tiny random-weight model, served in-process."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.errors import RequestFailed
from conftest import tiny_llama


@pytest.mark.parametrize("error, message", [
    (RuntimeError("boom in the health check"), "internal error: RuntimeError"),
    # an OSError of the server's own (not a client gone) and a TimeoutError (an OSError
    # too) were taken for a client's disconnect: aiohttp answered its text/plain 500 (504)
    # and logged no request id
    (OSError(24, "boom: too many open files"), "internal error: OSError"),
    (TimeoutError("boom: the probe timed out"), "internal error: TimeoutError"),
    (RequestFailed("model step failed: RuntimeError: boom in the step"),
     "model step failed: RuntimeError: boom in the step"),
])
def test_a_500_is_logged_with_its_request_id(tmp_path, caplog, error, message):
    tiny_llama(tmp_path, vocab_size=256)

    async def broken() -> None:
        raise error

    async def main():
        engine = Engine(str(tmp_path), load_format="dummy", kv_tokens=512)
        engine.check_health = broken  # a fault the health probe meets
        async with TestClient(TestServer(create_app(engine))) as client:
            resp = await client.get("/health", headers={"X-Request-Id": "trace-500"})
            return resp.status, resp.headers["X-Request-Id"], await resp.json()

    with caplog.at_level(logging.ERROR, logger="aiollm.api"):
        status, rid, body = asyncio.run(main())
    assert (status, rid) == (500, "trace-500"), body
    assert body["error"]["message"] == message
    logged = [r.getMessage() for r in caplog.records
              if "boom" in r.getMessage() or r.exc_info and "boom" in str(r.exc_info[1])]
    assert len(logged) == 1, caplog.text
    assert "trace-500" in logged[0] and "GET /health" in logged[0], logged[0]
