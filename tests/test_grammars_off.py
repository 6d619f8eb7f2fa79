"""A server started with structured output off (grammar_backend "none": SGLang's
--grammar-backend none, LightLLM's --output_constraint_mode none) answers a request that asks
for a grammar with 400 naming the field that asked, as SGLang answers it, on every route and
in every form (a response format, vLLM's guided_* and structured_outputs, LightLLM's
guided_json, tool_choice "required" or naming a function); everything else is served as with
grammars on: plain requests, allowed_token_ids and logit_bias, and tools under tool_choice
"auto", whose calls are read from the output's text. xgrammar is never imported."""

from __future__ import annotations

import json

import pytest
from live_server import LiveServer, http, refused_status, sse_events
from script_run import run_script

from conftest import tiny_llama

ASK = [{"role": "user", "content": "Hello"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
# the whole of a Hermes call, one added token of the tokenizer: a request allowed that token
# alone writes it, with no grammar to make a random-weight model write it
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def off(tmp_path_factory):
    """A tiny random Llama served with grammars off, its tokenizer the default model's plus
    CALL as one token; (the server, CALL's id)."""
    from tokenizers import AddedToken

    from aiollm.model import load_tokenizer

    d = tmp_path_factory.mktemp("off")
    tok = load_tokenizer(None)
    tok.add_tokens([AddedToken(CALL, normalized=False)])
    tok.save_pretrained(d / "tok")
    tiny_llama(d / "model", vocab_size=len(tok), max_position_embeddings=512)
    srv = LiveServer(model=str(d / "model"), tokenizer=str(d / "tok"), load_format="dummy",
                     grammar_backend="none", tool_call_parser="hermes").start()
    yield srv, tok.convert_tokens_to_ids(CALL)
    srv.close()


def _chat(**fields) -> dict:
    return {"messages": ASK, "max_tokens": 2, **fields}


def _completion(**fields) -> dict:
    return {"prompt": "Hello", "max_tokens": 2, **fields}


REFUSED = [
    ("/v1/chat/completions", _chat(response_format={"type": "json_object"}),
     "response_format"),
    ("/v1/chat/completions", _chat(response_format={
        "type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}),
     "response_format.json_schema.schema"),
    ("/v1/chat/completions", _chat(response_format={
        "type": "structural_tag", "format": {"type": "const_string", "value": "hi"}}),
     "response_format"),
    ("/v1/chat/completions", _chat(guided_regex="[ab]+"), "guided_regex"),
    ("/v1/chat/completions", _chat(guided_json=SCHEMA), "guided_json"),
    ("/v1/chat/completions", _chat(guided_choice=["a", "b"]), "guided_choice"),
    ("/v1/chat/completions", _chat(guided_grammar='root ::= "a"'), "guided_grammar"),
    # SGLang's (--grammar-backend none is its flag)
    ("/v1/chat/completions", _chat(regex="[ab]+"), "regex"),
    ("/v1/chat/completions", _chat(ebnf='root ::= "a"'), "ebnf"),
    ("/v1/completions", _completion(json_schema=json.dumps(SCHEMA)), "json_schema"),
    ("/v1/chat/completions", _chat(structured_outputs={"regex": "[ab]+"}),
     "structured_outputs.regex"),
    ("/v1/chat/completions", _chat(tools=TOOLS, tool_choice="required"), "tool_choice"),
    ("/v1/chat/completions", _chat(tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "get_weather"}}), "tool_choice"),
    # tools under "auto" beside a format: the format is the grammar asked for
    ("/v1/chat/completions", _chat(tools=TOOLS, response_format={"type": "json_object"}),
     "response_format"),
    ("/v1/chat/completions", _chat(response_format={"type": "json_object"}, stream=True),
     "response_format"),
    ("/v1/completions", _completion(response_format={"type": "json_object"}),
     "response_format"),
    ("/v1/completions", _completion(guided_regex="[ab]+", stream=True), "guided_regex"),
    ("/v1/responses", {"input": "Hello", "max_output_tokens": 2, "store": False,
                       "text": {"format": {"type": "json_schema", "name": "w",
                                           "schema": SCHEMA}}}, "text.format"),
    ("/v1/responses", {"input": "Hello", "max_output_tokens": 2, "store": False,
                       "tools": [{"type": "function", "name": "get_weather",
                                  "parameters": SCHEMA}], "tool_choice": "required"},
     "tool_choice"),
    ("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2,
                                                    "guided_json": json.dumps(SCHEMA)}},
     "parameters.guided_json"),
    ("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2,
                                                    "regular_constraint": "[ab]+"}},
     "parameters.regular_constraint"),
]


@pytest.mark.parametrize("path, body, field", REFUSED,
                         ids=[f"{p}:{f}:{i}" for i, (p, _, f) in enumerate(REFUSED)])
def test_a_grammar_asked_for_is_refused_naming_its_field(off, path, body, field):
    status, _, raw = http(off[0], "POST", path, json=body)
    assert status == refused_status(path), raw
    said = json.loads(raw)
    if path == "/generate":  # LightLLM's body: the message alone
        message = said["message"] if "message" in said else json.dumps(said)
    else:
        assert said["error"]["type"] == "invalid_request_error", said
        assert said["error"]["param"].startswith(field), said
        message = said["error"]["message"]
    assert field in message, said
    # "here", not "on this server": the Engine API raises the same message
    assert 'structured output is off here (grammar backend "none")' in message, said


def test_tool_choice_required_says_what_to_send_instead(off):
    status, _, raw = http(off[0], "POST", "/v1/chat/completions",
                          json=_chat(tools=TOOLS, tool_choice="required"))
    assert status == 400
    message = json.loads(raw)["error"]["message"]
    assert message.startswith('tool_choice "required" holds the output to calls'), message
    assert 'send tool_choice "auto"' in message, message


@pytest.mark.parametrize("stream", [False, True])
def test_tools_under_auto_are_read_from_the_outputs_text(off, stream):
    srv, call_id = off
    body = _chat(tools=TOOLS, allowed_token_ids=[call_id], max_tokens=1, stream=stream)
    status, _, raw = http(srv, "POST", "/v1/chat/completions", json=body)
    assert status == 200, raw
    if not stream:
        [choice] = json.loads(raw)["choices"]
        [call] = choice["message"]["tool_calls"]
        name, arguments = call["function"]["name"], call["function"]["arguments"]
    else:
        events = [json.loads(e) for e in sse_events(raw) if e != "[DONE]"]
        deltas = [c["delta"] for e in events for c in e["choices"]]
        calls = [t for d in deltas for t in d.get("tool_calls") or []]
        name = "".join(t["function"].get("name") or "" for t in calls)
        arguments = "".join(t["function"].get("arguments") or "" for t in calls)
        choice = [c for e in events for c in e["choices"] if c.get("finish_reason")][-1]
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"}


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", _chat()),
    ("/v1/chat/completions", _chat(tools=TOOLS, tool_choice="none")),
    ("/v1/chat/completions", _chat(logit_bias={"5": 10}, allowed_token_ids=[5, 6])),
    ("/v1/completions", _completion(allowed_token_ids=[1000], max_tokens=3)),
    ("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
])
def test_requests_without_a_grammar_are_served(off, path, body):
    status, _, raw = http(off[0], "POST", path, json=body)
    assert status == 200, raw
    if path == "/v1/completions":  # allowed_token_ids holds without a grammar
        [choice] = json.loads(raw)["choices"]
        assert choice["text"] == off[0].engine.tokenizer.decode([1000] * 3) != ""


SCRIPT = """
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from aiollm import Engine, SamplingParams
from aiollm.api import create_app
from aiollm.constraint import Constraint, GrammarSpec
from aiollm.errors import InvalidRequest

async def main():
    engine = Engine({model!r}, load_format="dummy", kv_tokens=512, max_model_len=256,
                    grammar_backend="none")
    async with TestClient(TestServer(create_app(engine))) as client:
        grammar = SamplingParams(max_tokens=2, constraint=Constraint(GrammarSpec(
            "json_object", "", "structured_outputs.json_object")))
        for ask in (lambda: engine.generate("Hi", grammar), lambda: engine.stream("Hi", grammar)):
            try:
                await ask()
            except InvalidRequest as e:
                print(e.param)
        tools = [{{"type": "function", "function": {{"name": "f", "parameters": {{}}}}}}]
        # allowed_token_ids: a bitmask, applied without xgrammar's kernel
        for extra in ({{}}, {{"tools": tools}}, {{"allowed_token_ids": [5, 6]}},
                      {{"response_format": {{"type": "json_object"}}}},
                      {{"tools": tools, "tool_choice": "required"}}):
            r = await client.post("/v1/chat/completions", json={{
                "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 2, **extra}})
            print(r.status)
    print("xgrammar" in sys.modules)

asyncio.run(main())
"""


def test_xgrammar_is_never_imported(tmp_path):
    """Seen from a fresh interpreter, since an import is the process's once."""
    model = tiny_llama(tmp_path, max_position_embeddings=256)
    run = run_script(SCRIPT.format(model=model), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["structured_outputs.json_object"] * 2 + [
        "200", "200", "200", "400", "400", "False"], (run.stdout, run.stderr[-2000:])


def test_a_grammar_backend_aiollm_lacks_is_refused_naming_the_option():
    from aiollm.config import EngineConfig

    with pytest.raises(ValueError, match=r"grammar_backend must be one of xgrammar, none "
                                         r"\(none: structured output off\), got 'outlines'"):
        EngineConfig(grammar_backend="outlines")
