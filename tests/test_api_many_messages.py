"""A conversation of many messages is checked, and a Responses input of many items (or an
item of many content parts) turned into messages, on a worker thread, not on the event
loop: a 6.8 MB body of 200,000 short messages held the loop (every other request's
stream, /health) for 0.5 s on /v1/chat/completions and /tokenize and 0.7 s on
/v1/responses, a 16 MiB one more than a second, before the rendering that was already
moved off it. A conversation of a few messages is still checked on the loop (no thread
hand-off per request). A chat of many template variables (chat_template_kwargs) is
rendered off the loop too: 300,000 of them held it for 0.8 s, weighed as no text at all.

Where each check runs is recorded by wrapping the real functions (they still run), as
test_api_unknown_fields records where a body is scanned: a time bound on the loop's stall
would depend on how busy the machine is."""

from __future__ import annotations

import threading

import pytest

from aiollm.api import chat_request, responses_request
from aiollm.engine import chat_api
from live_server import http

MANY = 3000  # messages: 64 characters of framing each by off_loop's weight, far past 512
LOOP = "api-test-server"  # the shared server's event-loop thread (live_server.LiveServer)


@pytest.fixture
def where(monkeypatch) -> list[tuple[str, str]]:
    """(function, thread) of each call of the per-message checks, as the server runs them."""
    calls: list[tuple[str, str]] = []

    def spy(module, name):
        real = getattr(module, name)

        def run(*args, **kwargs):
            calls.append((name, threading.current_thread().name))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, run)

    spy(chat_request, "checked_message")  # ChatMessage.as_dict's check of one message
    spy(responses_request, "input_messages")  # a Responses input's items as chat messages
    spy(chat_api, "chat_token_ids")  # the template's rendering of a conversation
    return calls


def threads(calls: list[tuple[str, str]], name: str) -> set[str]:
    return {thread for function, thread in calls if function == name}


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}] * MANY,
                              "max_tokens": 1}),
    ("/tokenize", {"messages": [{"role": "user", "content": "Hi"}] * MANY}),
], ids=["chat", "tokenize"])
def test_many_messages_are_checked_off_the_event_loop(server, where, path, body):
    status, _, raw = http(server, "POST", path, json=body)
    # the chat is longer than the server's context (a 400 that says so, after the checks)
    assert status == (400 if path == "/v1/chat/completions" else 200), raw
    assert sum(function == "checked_message" for function, _ in where) == MANY, where[-3:]
    assert LOOP not in threads(where, "checked_message"), threads(where, "checked_message")
    where.clear()
    few = {**body, "messages": body["messages"][:2]}
    status, _, raw = http(server, "POST", path, json=few)
    assert status == 200, raw
    assert threads(where, "checked_message") == {LOOP}, where


def test_a_message_of_many_calls_is_checked_off_the_event_loop(server, where):
    """One assistant message of 60,000 tool calls held the loop 0.8 s, checked and rendered
    there: weighed by its calls now."""
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
             for i in range(3000)]
    body = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": None, "tool_calls": calls}]}
    status, _, raw = http(server, "POST", "/tokenize", json=body)
    assert status == 200, raw
    assert threads(where, "checked_message") and LOOP not in threads(where, "checked_message")
    # and rendered off it: the checked calls' arguments are parsed, weighed as no text
    assert threads(where, "chat_token_ids") and LOOP not in threads(where, "chat_token_ids")


def test_a_responses_input_of_many_items_is_read_off_the_event_loop(server, where):
    items = [{"role": "user", "content": "Hi"}] * MANY
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": items, "max_output_tokens": 1, "store": False})
    assert status == 400 and b"context_length_exceeded" in raw, raw
    assert threads(where, "input_messages") and LOOP not in threads(where, "input_messages")
    assert LOOP not in threads(where, "checked_message"), threads(where, "checked_message")
    where.clear()
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": "Hi", "max_output_tokens": 1, "store": False})
    assert status == 200, raw
    assert threads(where, "input_messages") == {LOOP}, where


def test_a_responses_item_of_many_content_parts_is_read_off_the_event_loop(server, where):
    """One input item of 150,000 content parts held the loop ~0.2 s, weighed as one item:
    its parts are weighed too, as chat weighs a message's (its kept copy is made there
    too, by the same weight)."""
    parts = [{"type": "input_text", "text": "Hi"}] * MANY
    status, _, raw = http(server, "POST", "/v1/responses", json={
        "input": [{"role": "user", "content": parts}], "max_output_tokens": 1, "store": False})
    assert status == 400 and b"context_length_exceeded" in raw, raw
    assert threads(where, "input_messages") and LOOP not in threads(where, "input_messages")
    where.clear()
    status, _, raw = http(server, "POST", "/v1/responses", json={
        "input": [{"role": "user", "content": parts[:2]}], "max_output_tokens": 1,
        "store": False})
    assert status == 200, raw
    assert threads(where, "input_messages") == {LOOP}, where


def test_many_template_variables_are_rendered_off_the_event_loop(server, where):
    hi = [{"role": "user", "content": "Hi"}]
    variables = {f"v{i}": i for i in range(5000)}
    status, _, raw = http(server, "POST", "/tokenize",
                          json={"messages": hi, "chat_template_kwargs": variables})
    assert status == 200, raw
    assert threads(where, "chat_token_ids") and LOOP not in threads(where, "chat_token_ids")
    where.clear()
    status, _, raw = http(server, "POST", "/tokenize",
                          json={"messages": hi, "chat_template_kwargs": {"v": 1}})
    assert status == 200, raw
    assert threads(where, "chat_token_ids") == {LOOP}, where


def test_weighing_a_conversation_stops_once_it_is_long():
    """off_loop only asks whether the rendered size passes its bound, so the count stops
    there: weighing 200,000 messages was itself a pass over all of them on the loop."""
    from aiollm.engine.chat_template import MESSAGE_FRAMING, rendered_size

    messages = [{"role": "user", "content": "Hi"}] * 200_000
    assert rendered_size(messages) == 200_000 * (MESSAGE_FRAMING + 2)
    assert 512 < rendered_size(messages, enough=512) <= 512 + MESSAGE_FRAMING + 2
    assert rendered_size(messages[:3], enough=512) == 3 * (MESSAGE_FRAMING + 2)
