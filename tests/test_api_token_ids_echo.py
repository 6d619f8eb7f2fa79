"""vLLM's return_tokens_as_token_ids (a request's, and the server's default,
--return-tokens-as-token-ids) and chat's echo, whole and streamed, against an app around a
tiny random-weight model served in-process. RL frameworks (OpenPipe ART) send the first to
read the sampled ids from the logprobs; both were refused with a 400."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from conftest import tiny_llama

AS_ID = "return_tokens_as_token_ids"
TEMPLATE = "{% for m in messages %}a{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), max_position_embeddings=512)


@pytest.fixture(scope="module")
def shared(tiny):
    """One server of the tiny model with the default options, for the tests that ask for
    none (each leaves it idle: its requests are answered whole)."""
    from live_server import LiveServer

    srv = LiveServer(model=tiny, load_format="dummy", kv_tokens=1024, chat_template=TEMPLATE,
                     max_model_len=None).start()
    yield srv
    srv.close()


def serve(tiny, check, engine_options: dict | None = None, **app_options):
    """What `check(client)` returns, `client` an aiohttp client of an app around the tiny
    model: the `shared` server's (a LiveServer passed as `tiny`), or one made for these
    options (`tiny` the model's directory)."""
    async def main():
        if not isinstance(tiny, str):
            assert not engine_options and not app_options
            async with aiohttp.ClientSession(base_url=tiny.base) as client:
                return await check(client)
        engine = Engine(tiny, load_format="dummy", kv_tokens=1024, chat_template=TEMPLATE,
                        **(engine_options or {}))
        async with TestClient(TestServer(create_app(engine, **app_options))) as client:
            return await check(client)
    return asyncio.run(main())


async def post(client, path: str, body: dict) -> dict | list[dict]:
    """The answer, or a stream's chunks."""
    r = await client.post(path, json=body)
    assert r.status == 200, await r.text()
    if not body.get("stream"):
        return await r.json()
    events = [e.removeprefix("data: ") for e in (await r.text()).split("\n\n") if e]
    return [json.loads(e) for e in events if e != "[DONE]"]


def joined_completion(chunks: list[dict]) -> dict:
    lps = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    ids, text = [], ""
    for c in chunks:
        for ch in c["choices"]:
            text += ch["text"]
            ids += ch.get("prompt_token_ids") or []
            ids += ch.get("token_ids") or []
            for key in lps:
                lps[key] += (ch["logprobs"] or {}).get(key, [])
    return {"text": text, "ids": ids, "logprobs": lps}


def named(ids: list[int]) -> list[str]:
    return [f"token_id:{t}" for t in ids]


COMPLETION = {"prompt": "hello there", "max_tokens": 6, "temperature": 0, "logprobs": 2,
              "echo": True, "return_token_ids": True, "ignore_eos": True}


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_name_tokens_by_id(shared, stream):
    """Each token, and each key of top_logprobs, is "token_id:N" (vLLM's form), echoed
    prompt tokens too (the first, without a logprob, as well); the logprobs and text_offset
    are those of the text form (offsets index the text, as without the option)."""
    async def check(client):
        out = []
        for extra in ({}, {AS_ID: True}, {AS_ID: False}):
            got = await post(client, "/v1/completions", {**COMPLETION, **extra,
                                                         "stream": stream})
            if stream:
                out.append(joined_completion(got))
            else:
                ch = got["choices"][0]
                out.append({"text": ch["text"], "ids": ch["prompt_token_ids"] + ch["token_ids"],
                            "logprobs": ch["logprobs"]})
        return out

    text, ids, plain = serve(shared, check)
    assert plain == text and ids["text"] == text["text"] and ids["ids"] == text["ids"]
    lp, tlp = ids["logprobs"], text["logprobs"]
    assert len(ids["ids"]) == len(lp["tokens"]) > 6
    assert lp["tokens"] == named(ids["ids"])
    assert lp["token_logprobs"] == tlp["token_logprobs"] and lp["token_logprobs"][0] is None
    assert lp["text_offset"] == tlp["text_offset"]
    assert lp["top_logprobs"][0] is None
    for top, ttop, token in zip(lp["top_logprobs"][1:], tlp["top_logprobs"][1:],
                                lp["tokens"][1:]):
        assert all(k.startswith("token_id:") and k[9:].isdigit() for k in top), top
        assert token in top and sorted(top.values()) == sorted(ttop.values())


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
        "logprobs": True, "top_logprobs": 2, "return_token_ids": True, "ignore_eos": True}


def chat_logprobs(got: dict | list[dict]) -> tuple[list[int], list[dict]]:
    if isinstance(got, dict):
        ch = got["choices"][0]
        return ch["token_ids"], ch["logprobs"]["content"]
    ids, content = [], []
    for c in got:
        for ch in c["choices"]:
            ids += ch.get("token_ids") or []
            content += (ch.get("logprobs") or {}).get("content") or []
    return ids, content


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_name_tokens_by_id(shared, stream):
    """Chat's token and top_logprobs' tokens are "token_id:N"; the bytes stay the token's
    own UTF-8 bytes (they join to the content), the logprobs those of the text form."""
    async def check(client):
        return [await post(client, "/v1/chat/completions", {**CHAT, **extra, "stream": stream})
                for extra in ({}, {AS_ID: True})]

    text, ids = (chat_logprobs(g) for g in serve(shared, check))
    assert ids[0] == text[0] and len(ids[0]) == 6
    assert [e["token"] for e in ids[1]] == named(ids[0])
    for e, t in zip(ids[1], text[1]):
        assert e["logprob"] == t["logprob"] and e["bytes"] == t["bytes"]
        assert [x["logprob"] for x in e["top_logprobs"]] == [
            x["logprob"] for x in t["top_logprobs"]]
        assert [x["bytes"] for x in e["top_logprobs"]] == [x["bytes"] for x in t["top_logprobs"]]
        assert all(x["token"].startswith("token_id:") for x in e["top_logprobs"])
        assert e["top_logprobs"][0]["token"] == e["token"]  # greedy: the most likely


def test_server_flag_names_tokens_by_id_unless_a_request_says_false(tiny):
    """vLLM's --return-tokens-as-token-ids (create_app's return_tokens_as_token_ids): every
    request's logprobs name tokens by id, unless it sends the field false (null: the
    server's)."""
    async def check(client):
        out = []
        for extra in ({}, {AS_ID: None}, {AS_ID: False}):
            chat = await post(client, "/v1/chat/completions", {**CHAT, **extra})
            done = await post(client, "/v1/completions", {**COMPLETION, **extra})
            out.append((chat["choices"][0]["logprobs"]["content"][0]["token"],
                        done["choices"][0]["logprobs"]["tokens"][0]))
        return out

    default, null, off = serve(tiny, check, return_tokens_as_token_ids=True)
    assert all(t.startswith("token_id:") for t in default + null)
    assert not any(t.startswith("token_id:") for t in off)


def chat_content(got: dict | list[dict], n: int) -> list[str | None]:
    if isinstance(got, dict):
        return [ch["message"]["content"] for ch in got["choices"]]
    content: list[str | None] = [None] * n
    for c in got:
        for ch in c["choices"]:
            piece = ch["delta"].get("content")
            if piece is not None:
                content[ch["index"]] = (content[ch["index"]] or "") + piece
    return content


@pytest.mark.parametrize("stream", [False, True])
def test_chat_echo_puts_the_last_message_of_the_answers_role_before_the_answer(shared, stream):
    """vLLM's chat echo: the last message's content comes before each choice's answer when
    its role is the answer's (a new turn's assistant, or with add_generation_prompt false
    the last message's own); else nothing is added. A stream sends it in one chunk per
    choice right after the role chunks."""
    last = {"role": "assistant", "content": "Once upon"}
    user = [{"role": "user", "content": "hi"}]
    base = {"max_tokens": 4, "temperature": 0, "n": 2, "ignore_eos": True, "stream": stream}
    # (messages, options, what is echoed): a user's last message is the answer's role only
    # where the answer continues it
    cases = [(user + [last], {}, "Once upon"),
             (user + [last], {"add_generation_prompt": False}, "Once upon"),
             (user, {}, ""), (user, {"add_generation_prompt": False}, "hi")]

    async def check(client):
        out = []
        for messages, extra, _ in cases:
            body = {**base, "messages": messages, **extra}
            plain = await post(client, "/v1/chat/completions", body)
            echoed = await post(client, "/v1/chat/completions", {**body, "echo": True})
            out.append((chat_content(plain, 2), chat_content(echoed, 2), echoed))
        return out

    results = serve(shared, check)
    for (messages, _, echo), (plain, echoed, _) in zip(cases, results):
        assert echoed == [echo + p for p in plain], (messages, plain, echoed)
    if stream:  # role chunks for both choices, then an echo chunk for each, then tokens
        chunks = results[0][2]
        assert [c["choices"][0]["delta"].get("role") for c in chunks[:2]] == ["assistant"] * 2
        assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks[2:4]] == [
            (0, {"content": "Once upon"}), (1, {"content": "Once upon"})]
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[2:4])


def test_streamed_echo_sends_no_empty_chunk_for_text_a_tool_call_holds_back(shared):
    """With echo the content has begun before the first token; the tokens of a tool call
    (held back until the call is whole) still get no chunk of their own, as without echo
    (each had a chunk of content "" alone: one a token)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
    body = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "Once"}],
            "tools": [tool], "tool_choice": "required", "max_tokens": 40, "temperature": 0,
            "stream": True}

    async def check(client):
        return [await post(client, "/v1/chat/completions", {**body, "echo": echo})
                for echo in (False, True)]

    plain, echoed = serve(shared, check)
    choices = [c["choices"][0] for c in echoed]
    assert choices[1]["delta"] == {"content": "Once"}
    assert not [ch for ch in choices[2:] if ch["delta"] == {"content": ""}
                and ch["finish_reason"] is None], choices
    assert len(echoed) == len(plain) + 1  # the echo's chunk alone more
    calls = [ch["delta"]["tool_calls"] for ch in choices if "tool_calls" in ch["delta"]]
    assert calls and calls[0][0]["function"]["name"] == "f"


TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


@pytest.mark.parametrize("parser", [None, "qwen3"])
def test_every_streams_role_chunk_has_empty_content_as_vllms(tiny, parser):
    """vLLM opens each choice's stream with {"role": "assistant", "content": ""}, with tools
    and a reasoning parser too; aiollm's content was null where a tool or reasoning parser
    ran. Now "" for each choice in every mode, and the stream still joins to what it did."""
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
           "n": 2, "ignore_eos": True, "stream": True}
    modes = [{}, {"tools": [TOOL]}, {"tools": [TOOL], "tool_choice": "none"},
             {"tools": [TOOL], "tool_choice": "required", "max_tokens": 40}]

    async def check(client):
        return [await post(client, "/v1/chat/completions", {**ask, **mode}) for mode in modes]

    for mode, chunks in zip(modes, serve(tiny, check, {"reasoning_parser": parser})):
        firsts = [c["choices"][0] for c in chunks[:2]]
        assert [(ch["index"], ch["delta"]) for ch in firsts] == [
            (0, {"role": "assistant", "content": ""}),
            (1, {"role": "assistant", "content": ""})], (mode, firsts)
        assert all(ch["finish_reason"] is None for ch in firsts)
        assert sum(ch["finish_reason"] is not None for c in chunks for ch in c["choices"]) == 2


TWO_PARTS = [{"type": "text", "text": "Once"}, {"type": "text", "text": "upon"}]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_echo_of_text_parts_joins_them_by_newline_as_the_prompt_does(shared, stream):
    """A last message of text parts is echoed as vLLM echoes it, the parts joined by "\n"
    (they were joined by ""), and the template renders it so too: the prompt of the parts
    is the prompt of that string."""
    user = [{"role": "user", "content": "hi"}]
    base = {"max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": stream,
            "echo": True, "return_token_ids": True}

    async def check(client):
        return [await post(client, "/v1/chat/completions", {**base, "messages": user + [
            {"role": "assistant", "content": content}]}) for content in (TWO_PARTS,
                                                                         "Once\nupon")]

    parts, joined = serve(shared, check)
    if stream:
        assert parts[1]["choices"][0]["delta"] == {"content": "Once\nupon"}, parts[:2]
        assert parts[0]["prompt_token_ids"] == joined[0]["prompt_token_ids"]
    else:
        assert parts["prompt_token_ids"] == joined["prompt_token_ids"]
    assert chat_content(parts, 1) == chat_content(joined, 1)
    assert chat_content(parts, 1)[0].startswith("Once\nupon")

