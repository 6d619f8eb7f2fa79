"""A chat request's `store: true` is taken and keeps nothing (api/openai.py): OpenAI's
stored-completion routes, which a client sending it then calls (the openai SDK's
chat.completions.retrieve, update, delete, messages.list), answer a 404 naming completion_id
and saying that no chat completion is kept here, not a bare "no such route"."""

from __future__ import annotations

import json

import openai
import pytest
from live_server import http


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)


def test_a_stored_chat_completion_is_told_as_not_kept(client):
    model = client.models.list().data[0].id
    done = client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "Hi"}], max_tokens=1, store=True)
    calls = {
        "retrieve": lambda: client.chat.completions.retrieve(done.id),
        "update": lambda: client.chat.completions.update(done.id, metadata={"k": "v"}),
        "delete": lambda: client.chat.completions.delete(done.id),
        "messages": lambda: client.chat.completions.messages.list(done.id),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        error = caught.value.body
        assert error["param"] == "completion_id", (name, error)
        assert error["type"] == "invalid_request_error", (name, error)
        assert done.id in error["message"], (name, error)
        assert "keeps no chat completions" in error["message"], (name, error)


def test_the_list_of_stored_chat_completions_is_empty(client):
    """GET /v1/chat/completions (the SDK's chat.completions.list) answered 405: a client
    listing what it stored got an error no OpenAI server gives. It is OpenAI's list object
    of an empty store, filters, cursor and order taken as OpenAI takes them."""
    model = client.models.list().data[0].id
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=1, store=True, metadata={"k": "v"})
    for kwargs in ({}, {"limit": 5, "order": "desc", "model": model, "after": "chatcmpl-x",
                        "metadata": {"k": "v", "other": "w"}}):
        page = client.chat.completions.list(**kwargs)
        assert page.data == [] and page.has_more is False, (kwargs, page)
        assert list(page) == [], kwargs  # the SDK's iteration asks for no further page
    raw = client.chat.completions.with_raw_response.list().http_response.json()
    assert raw == {"object": "list", "data": [], "first_id": None, "last_id": None,
                   "has_more": False}


@pytest.mark.parametrize("query, param", [
    ({"limit": "ten"}, "limit"),
    ({"limit": "2.5"}, "limit"),
    ({"limit": "\u0663"}, "limit"),  # an Arabic-Indic 3, which int() would read
    ({"order": "newest"}, "order"),
    ({"metadata": "k"}, "metadata"),
    ({f"metadata[k{i}]": "v" for i in range(17)}, "metadata"),
    ({"metadata[k]": "v" * 513}, "metadata.k"),
], ids=["limit-word", "limit-decimal", "limit-not-ascii", "order", "metadata-flat",
        "metadata-17-pairs", "metadata-long-value"])
def test_a_bad_list_query_is_refused_naming_it(client, query, param):
    """What OpenAI's API refuses in the list's query (listChatCompletions' types: limit an
    integer, order asc or desc, metadata key-value pairs within Metadata's bounds) is a 400
    naming the parameter, not an empty page that hides the client's mistake."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.list(extra_query=query)
    assert caught.value.body["param"] == param, caught.value.body


@pytest.mark.parametrize("query, param", [
    ("limit=5&limit=ten", "limit"),
    ("limit=ten&limit=5", "limit"),
    ("order=asc&order=newest", "order"),
], ids=["limit-second", "limit-first", "order-second"])
def test_each_value_of_a_repeated_list_parameter_is_checked(server, query, param):
    """A parameter sent twice was checked by its first value alone: limit=5&limit=ten
    answered an empty page, where a server that reads the last value (Python's web
    frameworks do, as the last of a JSON body's repeated keys wins here) refuses it. Every
    value is checked, as a repeated metadata key is refused."""
    status, _, raw = http(server, "GET", f"/v1/chat/completions?{query}")
    assert status == 400 and json.loads(raw)["error"]["param"] == param, raw


def test_a_parameter_that_only_begins_with_metadata_is_ignored(server):
    """metadatax=1 or metadata_filter=k was refused as a malformed `metadata`, where the
    list's rule is that a query parameter OpenAI does not name is ignored: only `metadata`
    itself and its metadata[key] pairs are the filter."""
    for query in ("metadatax=1", "metadata_filter=k", "metadata.k=v"):
        status, _, raw = http(server, "GET", f"/v1/chat/completions?{query}")
        assert status == 200 and json.loads(raw)["data"] == [], (query, raw)
    for query in ("metadata=k", "metadata[a][b]=v", "metadata[a]x=v"):  # still refused
        status, _, raw = http(server, "GET", f"/v1/chat/completions?{query}")
        assert status == 400 and json.loads(raw)["error"]["param"] == "metadata", (query, raw)
