"""The HTTP API's edges as clients meet them, through the real server: integer fields sent
as whole floats (as Python's division and JavaScript compute them), vLLM's `priority`, the
advice a prompt that fills the context gets on each endpoint, and the server's log of
malformed HTTP requests."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web
from live_server import MAX_MODEL_LEN, http

C, CHAT, G = "/v1/completions", "/v1/chat/completions", "/generate"
HI = [{"role": "user", "content": "hi"}]


def error_of(status: int, raw: bytes, param: str | None) -> str:
    """The message of a 400 naming `param`."""
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == param, (status, err)
    return err["message"]


# -- priority -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    (C, {"prompt": "Hi", "max_tokens": 1}), (CHAT, {"messages": HI, "max_tokens": 1})])
def test_priority_other_than_0_is_refused(server, path, body):
    """The server has no priority scheduling: a priority other than 0 is a 400 naming it,
    as vLLM answers unless it schedules by priority; it was ignored silently."""
    for value in (0, None):
        status, _, raw = http(server, "POST", path, json={**body, "priority": value})
        assert status == 200, raw
    for value in (1, -5):
        msg = error_of(*http(server, "POST", path, json={**body, "priority": value})[::2],
                       "priority")
        assert "priority" in msg and "0" in msg, msg
