"""What a request with its own chat template is told where the server does not trust request
templates: the setting to change as the server's starter spelled it. create_app's caller
passed trust_request_chat_template, and was told of `aiollm serve`'s
--trust-request-chat-template, which it never typed; `aiollm serve` passes its flag's name
(trust_request_chat_template_name) and its operator is told of the flag."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.api.chat_request import TRUST_FLAG
from aiollm.engine import Engine

OWN = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
HI = [{"role": "user", "content": "hi"}]
# the request's own template in each of vLLM's two places for it
BODIES = [({"chat_template": OWN}, "chat_template"),
          ({"chat_template_kwargs": {"chat_template": OWN}},
           "chat_template_kwargs.chat_template")]


def refusals(tiny: str, body: dict, **app_options) -> list[tuple[int, dict]]:
    """The status and error body of a chat and a /tokenize request sending `body`, answered
    by an app made with `app_options`."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)
        app = create_app(engine, **app_options)
        out = []
        async with TestClient(TestServer(app)) as client:
            for path, extra in (("/v1/chat/completions", {"max_tokens": 1}),
                                ("/tokenize", {})):
                r = await client.post(path, json={"messages": HI, **body, **extra})
                out.append((r.status, (await r.json()).get("error")))
        return out

    return asyncio.run(main())


@pytest.mark.parametrize("body, param", BODIES)
def test_create_apps_caller_is_told_of_its_argument(tiny, body, param):
    for status, error in refusals(tiny, body):
        assert status == 400 and error["param"] == param, error
        assert "trust_request_chat_template=True" in error["message"], error
        assert TRUST_FLAG not in error["message"], error


@pytest.mark.parametrize("body, param", BODIES)
def test_aiollm_serve_names_its_flag(tiny, body, param):
    """What `aiollm serve` passes (cli/serve.py): its operator typed the flag."""
    for status, error in refusals(tiny, body, trust_request_chat_template_name=TRUST_FLAG):
        assert status == 400 and error["param"] == param, error
        assert f"a server started with {TRUST_FLAG}:" in error["message"], error
        assert "trust_request_chat_template=" not in error["message"], error


def test_a_trusting_app_renders_the_requests_template(tiny):
    """The argument itself still does what it did: with it, the same requests pass."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)
        app = create_app(engine, trust_request_chat_template=True)
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/tokenize", json={"messages": HI, "chat_template": OWN})
            return r.status, await r.json()

    status, body = asyncio.run(main())
    assert status == 200 and body["count"] >= 1, body
