"""A chat request's `store: true` is taken and keeps nothing (api/openai.py): OpenAI's
stored-completion routes, which a client sending it then calls (the openai SDK's
chat.completions.retrieve, update, delete, messages.list), answer a 404 naming completion_id
and saying that no chat completion is kept here, not a bare "no such route"."""

from __future__ import annotations

import openai
import pytest


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
