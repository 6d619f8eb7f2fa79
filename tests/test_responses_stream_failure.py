"""A /v1/responses stream whose request fails in the engine after the stream began: it
ends as OpenAI's does, with an `error` event and then `response.failed` (the Response in
status "failed" with its `error`), every event numbered without a gap, all of them the
openai SDK's types. An app around a tiny random-weight model, served in-process, whose
model step raises from its third call on."""

from __future__ import annotations

import asyncio
import json
import os

import pydantic
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from aiollm.api import create_app
from aiollm.engine import Engine

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


def _stream_failing_after(tiny: str, steps: int, body: dict) -> tuple[int, list[dict]]:
    """(status, events) of a streamed /v1/responses request whose model step raises from
    call `steps` + 1 on; after it, a request is served again, nothing is held and the
    failed response is not kept (a GET of it is a 404)."""
    async def main():
        engine, calls = Engine(tiny, load_format="dummy", kv_tokens=512), []

        async with TestClient(TestServer(create_app(engine))) as client:
            model = engine.runner.model  # the engine's runner exists once it started
            forward = model.forward

            def failing(*args, **kwargs):
                calls.append(1)
                if len(calls) > steps:
                    raise RuntimeError("boom in the model step (injected)")
                return forward(*args, **kwargs)

            model.forward = failing
            try:
                resp = await asyncio.wait_for(client.post("/v1/responses", json=body), 60)
                raw = await resp.text()
            finally:
                del model.forward  # the class's forward again
            again = await client.post("/v1/responses", json={**body, "stream": False})
            assert again.status == 200, await again.text()
            assert engine.stats()["kv_used"] == engine.stats()["table_used"] == 0
            datas = [line[len("data: "):] for line in raw.splitlines()
                     if line.startswith("data: ")]
            events = [json.loads(d) for d in datas]
            failed = await client.get(f"/v1/responses/{events[0]['response']['id']}")
            assert failed.status == 404, await failed.text()
        return resp.status, events

    return asyncio.run(main())


def test_a_failure_mid_stream_ends_with_response_failed(tiny):
    """Before: an `error` event was the last word, no response.failed, so a client waiting
    for the lifecycle's end (the SDK's stream helper, OpenAI's own streams) saw none. The
    interrupted message keeps the logprobs its deltas carried (it had none of them)."""
    body = {"model": os.path.basename(tiny), "input": "Hi", "max_output_tokens": 16,
            "temperature": 0, "stream": True, "ignore_eos": True, "top_logprobs": 1,
            "include": ["message.output_text.logprobs"]}
    status, events = _stream_failing_after(tiny, 2, body)
    assert status == 200
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert types[-2:] == ["error", "response.failed"], types
    assert "response.output_text.delta" in types  # it failed mid-stream, text already out
    assert "response.completed" not in types
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    sdk = ResponseStreamState(input_tools=omit, text_format=omit)  # client.responses.stream's
    got = [sdk.handle_event(EVENTS.validate_python(e)) for e in events]  # each an SDK type
    assert got[-1][0].response.error.code == "server_error"
    error, failed = events[-2], events[-1]["response"]
    assert "boom in the model step" in error["message"], error
    assert failed["id"] == events[0]["response"]["id"]
    assert failed["status"] == "failed"
    # not kept (a GET is a 404): it says so, as response.created could not know
    assert events[0]["response"]["store"] is True and failed["store"] is False
    assert failed["error"]["code"] == "server_error"
    assert failed["error"]["message"] == error["message"]
    # the text sent before the failure is the failed response's (interrupted) message
    sent = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    texts = [c["text"] for item in failed["output"] for c in item["content"]]
    assert texts == [sent], failed
    assert failed["output"][0]["status"] == "incomplete"
    lps = [t for e in events if e["type"] == "response.output_text.delta" for t in e["logprobs"]]
    assert lps and failed["output"][0]["content"][0]["logprobs"] == lps, failed


def test_a_failure_in_the_first_render_is_numbered_from_zero(tiny, monkeypatch):
    """A render that fails after response.created and response.in_progress were numbered,
    but before they were sent: the error went out as event 2, the first the client saw.
    Now the stream sends what it begins with, then the error and response.failed: 0 to 3."""
    from aiollm.api.responses_stream import ResponseEvents

    def broken(self, text):
        raise RuntimeError("boom in the render (injected)")

    monkeypatch.setattr(ResponseEvents, "content", broken)
    body = {"model": os.path.basename(tiny), "input": "Hi", "max_output_tokens": 4,
            "stream": True}
    status, events = _stream_failing_after(tiny, 10**9, body)
    assert status == 200
    assert [(e["type"], e["sequence_number"]) for e in events] == [
        ("response.created", 0), ("response.in_progress", 1), ("error", 2),
        ("response.failed", 3)], events
    for e in events:
        EVENTS.validate_python(e)
    assert events[2]["message"] == "internal error: RuntimeError"
    assert events[3]["response"]["output"] == []
