"""A request without the API key on LightLLM's routes: its 401 carries LightLLM's top-level
"message" beside the error object, as every other refusal there does (its clients read the
message), whether refused by the key check before the handler or, for a body announced
with `Expect: 100-continue`, before the body is sent. The OpenAI routes' 401 keeps the error
object alone."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine


def _serve(tiny: str, check) -> None:
    async def main():
        app = create_app(Engine(tiny, load_format="dummy", kv_tokens=512), api_key="secret")
        async with TestClient(TestServer(app)) as client:
            await check(client)
    asyncio.run(main())


def test_a_401_on_a_lightllm_route_has_the_top_level_message(tiny):
    async def check(client):
        for method, path in (("POST", "/generate"), ("POST", "/generate_stream/"),
                             ("GET", "/tokens"), ("POST", "/"), ("GET", "/generate")):
            resp = await client.request(method, path, json={"inputs": "hi"})
            out = await resp.json()
            assert resp.status == 401, (method, path, out)
            assert out.get("message") == out["error"]["message"], (method, path, out)
        resp = await client.post("/generate", json={"inputs": "hi"},
                                 headers={"Expect": "100-continue"})
        out = await resp.json()
        assert resp.status == 401 and out.get("message") == out["error"]["message"], out
        resp = await client.post("/v1/completions", json={"prompt": "hi"})
        assert resp.status == 401 and set(json.loads(await resp.read())) == {"error"}
    _serve(tiny, check)
