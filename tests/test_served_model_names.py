"""A model served under several names (vLLM's `--served-model-name A B`): responses report the
first, requests may name any, /v1/models lists each. An app around a tiny random-weight model,
served in-process."""

from __future__ import annotations

import pytest
from conftest import tiny_llama
from test_api_ops import serve_tiny

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A config-only Llama with the default tokenizer's vocabulary (a chat prompt's ids)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-named"), hidden_size=16, intermediate_size=32,
                      num_attention_heads=2, num_key_value_heads=1)


def test_every_name_is_served_and_the_first_reported(tiny):
    async def check(client, engine):
        listed = await (await client.get("/v1/models")).json()
        assert [card["id"] for card in listed["data"]] == ["gpt-4-0613", "gpt-4"]
        card = await client.get("/v1/models/gpt-4")
        assert card.status == 200 and (await card.json())["id"] == "gpt-4"
        for path, body in (("/v1/completions", {"prompt": "hi"}),
                           ("/v1/chat/completions", {"messages": HI})):
            for name in ("gpt-4", "gpt-4-0613"):
                resp = await client.post(path, json={**body, "model": name, "max_tokens": 1})
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["model"] == "gpt-4-0613"
            other = await client.post(path, json={**body, "model": "gpt-5", "max_tokens": 1})
            err = (await other.json())["error"]
            assert other.status == 404 and err["param"] == "model", err
            assert '"gpt-4-0613", "gpt-4"' in err["message"], err
    serve_tiny(tiny, check, served_model_name=["gpt-4-0613", "gpt-4"])


@pytest.mark.parametrize("names", ["m", ["m"], ["m", "m"]])  # a name given twice: one card
def test_one_name_is_served_as_before(tiny, names):
    async def check(client, engine):
        listed = await (await client.get("/v1/models")).json()
        assert [card["id"] for card in listed["data"]] == ["m"]
        assert (await client.get("/v1/models/gpt-4")).status == 404
    serve_tiny(tiny, check, served_model_name=names)


def test_the_model_as_given_is_a_name_when_no_served_name_is_set(tiny):
    """Without --served-model-name vLLM serves the model under the --model string itself,
    so a client set up for it sends that string (a path here); aiollm reports the
    directory's name and answered such a request 404. The string as given is now taken
    (the responses still report the directory's name, /v1/models lists only it); another
    path, or the given one beside served names, stays a 404."""
    import os

    async def check(client, engine):
        name = os.path.basename(tiny)
        for model in (tiny, name):
            resp = await client.post("/v1/completions", json={
                "model": model, "prompt": "hi", "max_tokens": 1})
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["model"] == name
        listed = await (await client.get("/v1/models")).json()
        assert [card["id"] for card in listed["data"]] == [name]
        for other in (tiny + "-other", tiny + "/"):
            resp = await client.post("/v1/completions", json={
                "model": other, "prompt": "hi", "max_tokens": 1})
            assert resp.status == 404, await resp.text()
    serve_tiny(tiny, check)

    async def named(client, engine):
        resp = await client.post("/v1/completions", json={
            "model": tiny, "prompt": "hi", "max_tokens": 1})
        assert resp.status == 404, await resp.text()
    serve_tiny(tiny, named, served_model_name="m")


def test_lightllms_model_name_reports_the_name_and_refuses_no_model(tiny, capsys):
    """LightLLM's --model_name names the model in /v1/models and in the answers, but its
    server checks no request's model (its chat route takes any, as a client with another
    configured name sends it): it was --served-model-name's, which answered another name
    404. vLLM's spelling still refuses it (the tests above)."""
    from aiollm.cli import build_parser, main
    from aiollm.cli.lightllm_flags import answers_any_model

    def typed(line: str) -> bool:
        return answers_any_model(build_parser().parse_args(["serve", "M", *line.split()]))
    assert typed("--model_name llama") and typed("--model-name llama")
    assert not typed("--served-model-name llama") and not typed("")
    # both spellings, one name: vLLM's check whatever their order (it followed the last)
    assert not typed("--model_name llama --served-model-name llama")
    assert not typed("--served-model-name llama --model_name llama")
    assert not typed("--model_name llama --served-model-name llama --model_name llama")
    # --help=lightllm says so: it said "--model_name is --served-model-name" alone, whose
    # 404 for another name --model_name does not answer
    with pytest.raises(SystemExit):
        main(["serve", "--help=lightllm"])
    group = " ".join(capsys.readouterr().out.split())
    assert ("--model_name is --served-model-name (one name, which no request's model is "
            "checked against, as in LightLLM; --served-model-name answers another name 404, "
            "beside it too)") in group, group[:400]

    async def check(client, engine):
        listed = await (await client.get("/v1/models")).json()
        assert [card["id"] for card in listed["data"]] == ["llama"]
        for path, body in (("/v1/completions", {"prompt": "hi"}),
                           ("/v1/chat/completions", {"messages": HI})):
            for name in ("llama", "gpt-4", None):
                resp = await client.post(path, json={**body, "model": name, "max_tokens": 1})
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["model"] == "llama"
    serve_tiny(tiny, check, served_model_name=["llama"], any_model=True)


def test_a_card_of_a_name_not_served_is_the_served_models(tiny):
    """GET /v1/models/NAME (the openai client's models.retrieve, which a client runs to see
    the model it will ask for exists) where requests naming NAME are served but answered
    under another name: with LightLLM's --model_name (any name taken) and with the model as
    the server was given it (a path). The card's id was NAME, a name no answer reports; it
    is now the served model's card, under the name every answer reports, as /v1/models
    lists it. A served name's card keeps its own name; another name without --model_name
    stays a 404."""
    import os

    async def lightllm(client, engine):
        listed = await (await client.get("/v1/models")).json()
        for name in ("gpt-4", "llama", "org/some-model"):
            resp = await client.get(f"/v1/models/{name}")
            assert resp.status == 200, await resp.text()
            assert await resp.json() == listed["data"][0], name
    serve_tiny(tiny, lightllm, served_model_name=["llama"], any_model=True)

    async def as_given(client, engine):
        listed = await (await client.get("/v1/models")).json()
        resp = await client.get(f"/v1/models/{tiny}")
        assert resp.status == 200, await resp.text()
        card = await resp.json()
        assert card == listed["data"][0] and card["id"] == os.path.basename(tiny), card
        assert (await client.get(f"/v1/models/{tiny}-other")).status == 404
    serve_tiny(tiny, as_given)
