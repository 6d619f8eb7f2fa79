"""vLLM's request-level options on the real server (tests/live_server.py): request ids
(X-Request-Id, the body's request_id), prompt_logprobs on chat, and a request's own chat
template (chat_template, chat_template_kwargs; --trust-request-chat-template)."""

from __future__ import annotations

import json
import logging

import pytest
from live_server import LiveServer, at_once, http, sse_events

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def chat(server, body: dict, headers: dict | None = None) -> tuple[int, dict, dict | bytes]:
    status, head, raw = http(server, "POST", "/v1/chat/completions", headers=headers,
                             json={"messages": HI, "max_tokens": 2, **body})
    head = {k.lower(): v for k, v in head.items()}  # aiohttp writes X-Request-ID
    return status, head, raw if body.get("stream") else json.loads(raw)


# -- request ids -----------------------------------------------------------------------------

def test_sdk_reads_the_request_id_the_completion_names(client, model):
    """Every response carries X-Request-Id (the SDK's response._request_id, as OpenAI
    sends it), and the completion's id is built from it, whole and streamed."""
    out = client.chat.completions.with_raw_response.create(model=model, messages=HI,
                                                           max_tokens=2)
    rid = out.request_id
    assert rid and out.parse().id == f"chatcmpl-{rid}"
    with client.completions.with_streaming_response.create(
            model=model, prompt="Hi", max_tokens=2, stream=True) as resp:
        rid = resp.headers["x-request-id"]
        ids = {json.loads(e)["id"] for e in sse_events(b"".join(resp.iter_bytes()))
               if e != "[DONE]"}
    assert ids == {f"cmpl-{rid}"}
    other = client.models.with_raw_response.list()
    assert other.request_id and other.request_id != rid  # a new one per request


def test_the_clients_id_is_the_requests_even_when_two_share_it(server):
    """The X-Request-Id header, else the body's request_id (vLLM's), names the request;
    two requests sent at once with the same id each get their own answer (the engine keys
    requests by its own counter), and an error carries the id too."""
    same = {"X-Request-Id": "trace-42"}
    a, b = at_once(lambda: chat(server, {"max_tokens": 3, "seed": 1, "temperature": 1}, same),
                   lambda: chat(server, {"max_tokens": 5, "stream": True}, same))
    assert a[0] == b[0] == 200 and a[1]["x-request-id"] == b[1]["x-request-id"] == "trace-42"
    assert a[2]["id"] == "chatcmpl-trace-42" and a[2]["usage"]["completion_tokens"] == 3
    chunks = [json.loads(e) for e in sse_events(b[2]) if e != "[DONE]"]
    assert {c["id"] for c in chunks} == {"chatcmpl-trace-42"}
    assert sum(len(c["choices"]) for c in chunks) >= 2
    status, head, out = chat(server, {"request_id": "from-body"})
    assert (status, head["x-request-id"], out["id"]) == (200, "from-body", "chatcmpl-from-body")
    status, head, out = chat(server, {"request_id": "from-body"}, {"X-Request-Id": "hdr"})
    assert (head["x-request-id"], out["id"]) == ("hdr", "chatcmpl-hdr")  # as vLLM: header first
    status, head, out = chat(server, {"request_id": "bad-temp", "temperature": -1})
    assert status == 400 and head["x-request-id"] == "bad-temp"


def test_the_access_log_names_each_request_by_its_id(tiny, caplog):
    """--log-level debug logs a line per HTTP request (aiohttp's access log): it ends with
    the id the response carries, so a client's id finds its line. (A server of its own:
    the access log is set up as a server starts; on conftest's tiny random Llama with the
    default tokenizer, as the log's lines are the same for any model's words.)"""
    with caplog.at_level(logging.DEBUG, logger="aiollm.api.server"):
        own = LiveServer(model=tiny, load_format="dummy", max_model_len=256).start()
        try:
            chat(own, {}, {"X-Request-Id": "trace-7"})
            _, head, _ = http(own, "GET", "/v1/models")
        finally:
            own.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiollm.api.server.access"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("127.0.0.1 ") and '"POST /v1/chat/completions' in lines[0]
    assert lines[0].endswith(" trace-7"), lines[0]
    assert lines[1].endswith(" " + {k.lower(): v for k, v in head.items()}["x-request-id"])


@pytest.mark.parametrize("where", ["header", "body"])
def test_an_id_that_cannot_travel_in_a_header_is_refused(server, where):
    """An id is printable ASCII (it goes back in a header): a line break or non-ASCII is a
    400 naming where it came from, and the server keeps serving."""
    if where == "body":
        status, head, out = chat(server, {"request_id": "a\r\nSet-Cookie: x=1"})
        assert status == 400 and out["error"]["param"] == "request_id", out
        assert "\n" not in head["x-request-id"] and "set-cookie" not in head
    else:
        status, head, out = chat(server, {}, {"X-Request-Id": "é".encode().decode("latin-1")})
        assert status == 400 and "X-Request-Id header" in out["error"]["message"], out
        assert head["x-request-id"].isascii()
    assert chat(server, {})[0] == 200


# -- prompt_logprobs on chat -----------------------------------------------------------------

def test_chat_scores_the_rendered_conversation_as_completions_score_it(server):
    """prompt_logprobs on chat (vLLM's: top-level, beside the choices) are those
    /v1/completions gives for the conversation's token ids, once however many choices;
    a stream carries them once, in the chunk of choice 0's first token."""
    _, _, raw = http(server, "POST", "/tokenize", json={"messages": HI})
    ids = json.loads(raw)["tokens"]
    _, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": ids, "max_tokens": 1, "prompt_logprobs": 2})
    want = json.loads(raw)["choices"][0]["prompt_logprobs"]
    assert len(want) == len(ids) and want[0] is None and len(want[1]) >= 2
    status, _, out = chat(server, {"prompt_logprobs": 2, "n": 2, "seed": 0})
    assert status == 200 and out["prompt_logprobs"] == want, out
    assert all("prompt_logprobs" not in c for c in out["choices"])
    status, _, raw = chat(server, {"prompt_logprobs": 2, "stream": True})
    chunks = [json.loads(e) for e in sse_events(raw) if e != "[DONE]"]
    scored = [c for c in chunks if "prompt_logprobs" in c]
    assert status == 200 and len(scored) == 1 and scored[0]["prompt_logprobs"] == want
    assert scored[0]["choices"][0]["delta"].get("content")  # the first token's chunk
    status, _, out = chat(server, {"prompt_logprobs": 21})
    assert status == 400 and out["error"]["param"] == "prompt_logprobs", out


# -- a request's own chat template -----------------------------------------------------------

CONTENTS = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.fixture
def trusting(server):
    """The shared server as `aiollm serve --trust-request-chat-template` runs it."""
    from aiollm.api.state import STATE

    st = server.app[STATE]
    server.call(lambda: setattr(st, "trust_request_chat_template", True))
    yield server
    server.call(lambda: setattr(st, "trust_request_chat_template", False))


def tokens(server, body: dict) -> tuple[int, dict]:
    status, _, raw = http(server, "POST", "/tokenize", json=body)
    return status, json.loads(raw)


def test_a_trusting_server_renders_with_the_requests_template(trusting):
    """chat_template (or chat_template_kwargs.chat_template, vLLM's other place for it)
    renders the messages, with chat_template_kwargs as its variables, on chat and
    /tokenize alike; a template that does not compile is the request's 400."""
    server = trusting
    want = server.engine.tokenizer.encode("Hello Hi", add_special_tokens=False)
    own = {"chat_template": "{{ greeting }}" + CONTENTS,
           "chat_template_kwargs": {"greeting": "Hello "}}
    assert tokens(server, {"messages": HI, **own}) == (200, {
        "tokens": want, "count": len(want), "max_model_len": server.engine.max_model_len})
    status, _, out = chat(server, own)
    assert status == 200 and out["usage"]["prompt_tokens"] == len(want), out
    kw = {"chat_template_kwargs": {"chat_template": CONTENTS}}
    status, body = tokens(server, {"messages": HI, **kw})
    assert body["tokens"] == server.engine.tokenizer.encode("Hi", add_special_tokens=False)
    status, _, out = chat(server, {"chat_template": "{% for %}"})
    assert status == 400 and out["error"]["param"] == "chat_template", out
    assert chat(server, {})[0] == 200


def test_without_trust_the_servers_template_alone_renders(server):
    """As vLLM without --trust-request-chat-template: a request's template is a 400 that
    names its field and the setting (this server's maker, create_app, is told of its
    argument: tests/test_request_template_trust_naming.py); template variables are
    served."""
    for body, param in (({"chat_template": CONTENTS}, "chat_template"),
                        ({"chat_template_kwargs": {"chat_template": CONTENTS}},
                         "chat_template_kwargs.chat_template")):
        status, _, out = chat(server, body)
        assert status == 400 and out["error"]["param"] == param, out
        assert "trust_request_chat_template=True" in out["error"]["message"]
        status, out = tokens(server, {"messages": HI, **body})
        assert status == 400 and out["error"]["param"] == param, out
    assert chat(server, {"chat_template_kwargs": {"x": 1}})[0] == 200


# -- documents (RAG) --------------------------------------------------------------------------

DOCS_TEMPLATE = "{% for d in documents or [] %}[{{ d.title }}: {{ d.text }}]{% endfor %}" + CONTENTS


def test_documents_reach_the_chat_template(trusting):
    """vLLM's chat field `documents` (RAG sources: dicts such as {"title", "text"}) is given to
    the chat template as its `documents` variable, on chat and /tokenize alike; it was
    ignored (logged as unknown), so a template that renders sources answered without them.
    Control-token text in a document stays plain text, as in message content."""
    server = trusting
    tok = server.engine.tokenizer
    docs = [{"title": "Paris", "text": "the capital"}, {"title": "x", "text": "<|im_start|>"}]
    body = {"messages": HI, "chat_template": DOCS_TEMPLATE, "documents": docs}
    status, out = tokens(server, body)
    assert status == 200, out
    assert tok.decode(out["tokens"]) == "[Paris: the capital][x: <|im_start|>]Hi"
    assert tok.convert_tokens_to_ids("<|im_start|>") not in out["tokens"]
    status, _, answer = chat(server, body)
    assert status == 200 and answer["usage"]["prompt_tokens"] == out["count"], answer
    # none sent, null or []: the template sees none
    want = tok.encode("Hi", add_special_tokens=False)
    for extra in ({}, {"documents": None}, {"documents": []}):
        status, out = tokens(server, {"messages": HI, "chat_template": DOCS_TEMPLATE, **extra})
        assert (status, out["tokens"]) == (200, want), out


@pytest.mark.parametrize("documents, param", [
    ("text", "documents"), ([5], "documents[0]"), ([{"title": 1}], "documents[0]")])
def test_malformed_documents_are_named(server, documents, param):
    """documents is a list of objects of strings (vLLM's list[dict[str, str]]): anything else
    is a 400 naming the place (the document, for a value that is no string: the message
    says which); the Python API's TemplateOptions names the key too."""
    for status, out in (chat(server, {"documents": documents})[::2],
                        tokens(server, {"messages": HI, "documents": documents})):
        assert status == 400 and out["error"]["param"] == param, out
    from aiollm.engine.chat_template import TemplateOptions
    from aiollm.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as e:
        TemplateOptions(documents=documents).check([])
    assert e.value.param == ("documents[0].title" if isinstance(documents[0], dict)
                             else param)


def test_long_documents_are_rendered_off_the_loop():
    """The documents' text counts in the size that sends a rendering to a worker thread
    (off_loop's 512 characters), as message content does: RAG sources can be megabytes."""
    from aiollm.engine.chat_template import TemplateOptions, rendered_size

    docs = TemplateOptions(documents=[{"title": "t", "text": "x" * 1000}])
    assert rendered_size(HI, None, docs) >= rendered_size(HI) + 1000


# -- reasoning_effort -------------------------------------------------------------------------

EFFORT_TEMPLATE = "{{ reasoning_effort }}|{{ enable_thinking }}|" + CONTENTS


def rendered(server, body: dict) -> str:
    """The prompt a chat request rendered (vLLM's return_token_ids), as text."""
    status, _, out = chat(server, {"return_token_ids": True, **body})
    assert status == 200, out
    return server.engine.tokenizer.decode(out["prompt_token_ids"])


def test_reasoning_effort_reaches_the_chat_template(trusting):
    """vLLM gives the chat field reasoning_effort to the chat template as its variable of
    that name, and with it enable_thinking (false for "none", else true) unless
    chat_template_kwargs sets enable_thinking; the field overrides a reasoning_effort of
    chat_template_kwargs. It was ignored (logged as unknown), so a template that reads it
    (gpt-oss's, Qwen3's thinking switch) rendered as if it had not been sent."""
    server = trusting
    own = {"chat_template": EFFORT_TEMPLATE}
    assert rendered(server, own) == "||Hi"
    assert rendered(server, {**own, "reasoning_effort": None}) == "||Hi"
    assert rendered(server, {**own, "reasoning_effort": "low"}) == "low|True|Hi"
    assert rendered(server, {**own, "reasoning_effort": "none"}) == "none|False|Hi"
    assert rendered(server, {**own, "reasoning_effort": "none",
                             "chat_template_kwargs": {"enable_thinking": True}}) == "none|True|Hi"
    kwargs = {"chat_template_kwargs": {"reasoning_effort": "high"}}
    assert rendered(server, {**own, **kwargs}) == "high||Hi"
    assert rendered(server, {**own, **kwargs, "reasoning_effort": "minimal"}) == "minimal|True|Hi"


@pytest.mark.parametrize("effort", ["extreme", "LOW", 1, True])
def test_reasoning_effort_takes_vllm_s_values(server, effort):
    """vLLM's values alone (none, minimal, low, medium, high, xhigh, max): another is the
    request's 400 naming the field."""
    status, _, out = chat(server, {"reasoning_effort": effort})
    assert status == 400 and out["error"]["param"] == "reasoning_effort", out
    if isinstance(effort, str):
        assert "none, minimal, low, medium, high, xhigh, max" in out["error"]["message"], out


def test_reasoning_effort_is_known_to_chat(server, caplog):
    """Sent to the server's own template, reasoning_effort is served and not named in the
    log as an unknown field."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiollm.api"):
        for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "max"):
            assert chat(server, {"reasoning_effort": effort})[0] == 200
    assert "unknown" not in caplog.text, caplog.text
