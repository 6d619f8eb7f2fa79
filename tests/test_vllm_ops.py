"""Operations a deployment made for vLLM relies on: its API key variable (VLLM_API_KEY), its
probes /ping (SageMaker's) and /load (a router's count of requests in flight). A tiny
random-weight model served in-process; the CLI checks run before any model loads."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), vocab_size=256)


def serve_tiny(tiny: str, check, **app_options):
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)
        app = create_app(engine, **app_options)
        async with TestClient(TestServer(app)) as client:
            return await check(client, engine)
    return asyncio.run(main())


def api_key_of(monkeypatch, env: dict[str, str], *flags: str) -> str | None:
    """The key `aiollm serve *flags` would serve with under the environment `env`."""
    from aiollm.cli import build_parser
    from aiollm.cli.serve_checks import checked_config

    for name in ("AIOLLM_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve", *flags])
    return checked_config(args.command_parser, args)[1]


def test_vllm_api_key_variable_protects_the_server(monkeypatch):
    """A deployment that sets VLLM_API_KEY, as vLLM reads it, was served with no auth at
    all. It is the key unless --api-key or AIOLLM_API_KEY gives one."""
    assert api_key_of(monkeypatch, {}) is None
    assert api_key_of(monkeypatch, {"VLLM_API_KEY": "v"}) == ("v",)
    assert api_key_of(monkeypatch, {"VLLM_API_KEY": "v", "AIOLLM_API_KEY": "a"}) == ("a",)
    assert api_key_of(monkeypatch, {"VLLM_API_KEY": "v"}, "--api-key", "f") == ("f",)


def test_api_key_takes_several_keys_as_vllm_does(monkeypatch):
    """vLLM's --api-key takes several keys (a request may send any of them: one per client,
    or the old and the new while a key is rotated); aiollm stopped at "unrecognized
    arguments: k2". The flag's keys replace the variables' one key, as in vLLM, where
    VLLM_API_KEY is one key, never split."""
    assert api_key_of(monkeypatch, {"VLLM_API_KEY": "v"}, "M", "--api-key", "k1",
                      "k2") == ("k1", "k2")
    assert api_key_of(monkeypatch, {"VLLM_API_KEY": "v w"}) == ("v w",)
    # given twice, the last one counts, as argparse (and vLLM) take a flag given twice
    assert api_key_of(monkeypatch, {}, "--api-key", "a", "--api-key", "b") == ("b",)


@pytest.mark.parametrize("flags, says", [
    (["M", "--api-key", "k1", ""], "argument --api-key: must not be empty"),
    (["M", "--api-key", "k1", "k2\n"], "argument --api-key: the key must not begin or end "
                                        "with whitespace"),
])
def test_each_of_several_api_keys_is_checked(monkeypatch, capsys, flags, says):
    with pytest.raises(SystemExit) as e:
        api_key_of(monkeypatch, {}, *flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err, err
    assert "k2" not in err  # a secret


def test_a_model_read_as_an_api_key_is_a_usage_error(monkeypatch, capsys, tmp_path):
    """The flag takes every word after it: `aiollm serve --api-key KEY DIR` read DIR as a
    second key and served the default model, with the path as a key."""
    with pytest.raises(SystemExit) as e:
        api_key_of(monkeypatch, {}, "--api-key", "k1", str(tmp_path))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "argument --api-key: " in err and "was read as a key" in err, err
    assert "--model" in err and "k1" not in err, err


def test_a_hub_model_name_read_as_an_api_key_is_a_usage_error(monkeypatch, capsys):
    """`aiollm serve --api-key KEY org/name`, a vLLM command line with a model hub's name
    (which aiollm does not fetch, and says how to get), or with a mistyped path, served the
    default model with it as a second key, silently. A second key not shaped as a hub's name (base64's "+",
    "=", a third "/") is still a key."""
    for model in ("meta-llama/Llama-3.1-8B-Instruct", "./models/llama", "~/m.gguf",
                  "/no/such/dir"):  # a hub's name, and paths mistyped
        with pytest.raises(SystemExit) as e:
            api_key_of(monkeypatch, {}, "--api-key", "k1", model)
        err = capsys.readouterr().err
        assert e.value.code == 2
        assert "argument --api-key: " in err and "was read as a key" in err, err
        assert "k1" not in err, err
    for second in ("ab/cd+ef=", "a/b/c", "k2"):
        assert api_key_of(monkeypatch, {}, "--api-key", "k1", second) == ("k1", second)


def test_any_of_several_api_keys_is_let_in(tiny):
    async def check(client, engine):
        for key, status in (("k1", 200), ("k2", 200), ("k3", 401), ("k1k2", 401),
                            ("", 401)):
            resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert resp.status == status, (key, await resp.text())
    serve_tiny(tiny, check, api_key=("k1", "k2"))


def test_vllm_api_key_with_whitespace_is_a_usage_error_naming_it(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        api_key_of(monkeypatch, {"VLLM_API_KEY": "secret\n"})
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "VLLM_API_KEY: the key must not begin or end with whitespace" in err
    assert "secret" not in err


def test_ping_answers_as_health_and_load_counts_requests_in_flight(tiny):
    """/ping (GET and POST, vLLM's SageMaker probe) answers as /health does, with no key;
    /load is vLLM's {"server_load": N}, the requests in flight, back to 0 when idle."""
    async def check(client, engine):
        for method in ("GET", "POST"):
            resp = await client.request(method, "/ping")
            assert resp.status == 200, (method, await resp.text())
        assert await (await client.get("/load")).json() == {"server_load": 0}
        body = {"prompt": [5, 6, 7], "max_tokens": 200, "ignore_eos": True, "stream": True}
        auth = {"Authorization": "Bearer k"}
        streams = await asyncio.gather(*[client.post("/v1/completions", json=body,
                                                     headers=auth) for _ in range(2)])
        for s in streams:
            assert s.status == 200
            await s.content.readline()
        assert await (await client.get("/load")).json() == {"server_load": 2}
        for s in streams:
            s.close()
        for _ in range(200):
            if (await (await client.get("/load")).json())["server_load"] == 0:
                break
            await asyncio.sleep(0.02)
        assert await (await client.get("/load")).json() == {"server_load": 0}
        await engine.stop()
        resp = await client.get("/ping")
        assert resp.status == 503
        # a stopped engine still tells what it holds: nothing
        assert await (await client.get("/load")).json() == {"server_load": 0}
        assert (await client.get("/metrics")).status == 200
    serve_tiny(tiny, check, api_key="k")


def test_model_cards_carry_vllms_fields(tiny):
    """Each /v1/models card has vLLM's fields: `root` names the model every alias serves
    (the same for each name of --served-model-name: how a client tells which weights an
    alias is), `parent` null (no adapter); the card of /v1/models/{name} alike."""
    async def check(client, engine):
        auth = {"Authorization": "Bearer k"}
        cards = (await (await client.get("/v1/models", headers=auth)).json())["data"]
        assert [c["id"] for c in cards] == ["main", "alias"]
        for card in cards:
            assert set(card) >= {"id", "object", "created", "owned_by", "root", "parent",
                                 "max_model_len"}, card
            assert card["root"] == os.path.basename(tiny) and card["parent"] is None
            assert card["max_model_len"] == engine.max_model_len
            assert "/" not in card["root"]  # a file's name, never the server's directories
        one = await (await client.get("/v1/models/alias", headers=auth)).json()
        assert one == cards[1]
    serve_tiny(tiny, check, api_key="k", served_model_name=["main", "alias"])


def test_response_role_is_the_role_of_chat_answers(tiny):
    """vLLM's --response-role: the role of a chat answer (the message's, and a stream's
    first delta's) where the prompt asks for a new turn; with add_generation_prompt false
    the answer continues the last message, in its role, as vLLM answers. aiollm refused the
    flag; create_app takes it as response_role."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def check(client, engine):
        roles = []
        for extra in ({}, {"add_generation_prompt": False}):
            r = await client.post("/v1/chat/completions", json={**body, **extra})
            assert r.status == 200, await r.text()
            roles.append((await r.json())["choices"][0]["message"]["role"])
        r = await client.post("/v1/chat/completions", json={**body, "stream": True})
        first = (await r.text()).split("\n\n")[0].removeprefix("data: ")
        roles.append(json.loads(first)["choices"][0]["delta"]["role"])
        return roles

    async def main(**app_options):
        # a template of one low token id: the tiny model's vocabulary is 256 tokens
        engine = Engine(tiny, load_format="dummy", kv_tokens=512,
                        chat_template="{% for m in messages %}a{% endfor %}")
        async with TestClient(TestServer(create_app(engine, **app_options))) as client:
            return await check(client, engine)

    assert asyncio.run(main(response_role="bot")) == ["bot", "user", "bot"]
    assert asyncio.run(main()) == ["assistant", "user", "assistant"]


@pytest.mark.parametrize("role", ["", " ", None, 3])
def test_response_role_must_be_a_role(tiny, role):
    with pytest.raises(ValueError, match="response_role"):
        serve_tiny(tiny, None, response_role=role)
