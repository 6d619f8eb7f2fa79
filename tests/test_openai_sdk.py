"""The official `openai` client's own helpers on the real server: what they accumulate from
a stream (client.chat.completions.stream) must be what the chunks say, for every choice."""

from __future__ import annotations

import pytest

EMOJI = [{"role": "user", "content": "Reply with only emoji, no words: 🎉🔥"}]


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def joined(chunks) -> dict[int, tuple[str, list[str]]]:
    """Each choice's content and logprob tokens, joined from the raw chunks by index."""
    out: dict[int, tuple[str, list[str]]] = {}
    for chunk in chunks:
        for c in chunk.choices:
            text, tokens = out.get(c.index, ("", []))
            lps = [t.token for t in c.logprobs.content] if c.logprobs else []
            out[c.index] = (text + (c.delta.content or ""), tokens + lps)
    return out


@pytest.mark.parametrize("seed", [0, 11])
def test_stream_helper_accumulates_each_choice_as_its_chunks_say(client, model, seed):
    """Every choice opens with a role chunk, in index order, before any token, as vLLM and
    OpenAI open a stream. Choice i's first chunk carried its first token: the SDK's helper
    counted the logprobs of a choice past 0 twice, and when a choice's first token was held
    back (half an emoji) another choice came first and the helper raised IndexError."""
    n = 4
    with client.chat.completions.stream(model=model, messages=EMOJI, max_tokens=3, n=n,
                                        seed=seed, logprobs=True) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        snapshot = stream.current_completion_snapshot
    opening = [(c.choices[0].index, c.choices[0].delta.role, c.choices[0].delta.content,
                c.choices[0].logprobs) for c in chunks[:n]]
    assert opening == [(k, "assistant", "", None) for k in range(n)]
    want = joined(chunks)
    assert [c.index for c in snapshot.choices] == list(range(n))
    for c in snapshot.choices:
        assert (c.message.content, [t.token for t in c.logprobs.content]) == want[c.index]


def test_continuous_usage_counts_the_prompt_cache_hit_from_the_first_chunk(client, model):
    """vLLM's stream_options.continuous_usage_stats: every chunk's usage is the request's so
    far, and the prompt's cache hit is known before the first chunk goes out. The role
    chunks said cached_tokens 0 and the next ones the real hit: a client summing a stream's
    cache savings from its first usage saw none."""
    messages = [{"role": "user", "content": "Name a colour, in one word."}]
    client.chat.completions.create(model=model, messages=messages, max_tokens=1)  # cached
    for n in (1, 3):
        chunks = list(client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, n=n, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True}))
        hits = [c.usage.prompt_tokens_details.cached_tokens for c in chunks]
        assert hits[-1] > 0 and set(hits) == {hits[-1]}, hits


@pytest.mark.parametrize("tool, param", [
    ({"type": "code_interpreter"}, "tools[1].type"),
    ({"function": {"name": "f"}}, "tools[1].type"),
    ({"type": "function"}, "tools[1].function"),
    ({"type": "function", "function": "f"}, "tools[1].function"),
    ({"type": "function", "function": {"parameters": {}}}, "tools[1].function.name"),
    ({"type": "function", "function": {"name": 5}}, "tools[1].function.name"),
])
def test_a_malformed_tool_is_named_to_its_field(client, model, tool, param):
    """The SDK's APIError.param names the field at fault, as vLLM's validation does: a tool
    without a function name said only "tools[1]"."""
    import openai

    good = {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=EMOJI, max_tokens=1,
                                       tools=[good, tool])
    assert e.value.param == param and param.split(".")[-1] in e.value.message, e.value.body


def test_a_null_content_is_told_as_null(client, model):
    """An assistant message with "content": null (and no tool_calls) is refused, as OpenAI
    refuses it, and the message says it was null: it said "got missing" of a field the
    client had sent."""
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, max_tokens=1, messages=[
            *EMOJI, {"role": "assistant", "content": None}, *EMOJI])
    assert e.value.param == "messages[1].content", e.value.body
    assert "got null" in e.value.message, e.value.message


def test_a_bad_token_id_in_a_batch_is_named_by_its_place(client, model):
    """A batch of token-id prompts with an id past the vocabulary names the id by its place
    in the batch: it said "prompt[1]: ... prompt[0] is 99999999", the id's index within
    prompt 1 written as if it were prompt 0."""
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt=[[1, 2], [3, 99999999]], max_tokens=1)
    assert e.value.param == "prompt[1]", e.value.body
    assert "prompt[1][1] is 99999999" in e.value.message, e.value.message


def test_a_tool_that_is_no_object_is_told_in_json_words(client, model):
    """A tool that is no object: the body's own type errors' words, naming the item."""
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=EMOJI, max_tokens=1,
                                       extra_body={"tools": ["get_weather"]})
    assert e.value.param == "tools[0]", e.value.body
    assert e.value.message.endswith("tools[0]: expected an object, got a string"), e.value.body


@pytest.mark.parametrize("logprobs", [False, None])
def test_top_logprobs_zero_asks_for_nothing_without_logprobs(client, model, logprobs):
    """top_logprobs 0 without logprobs true asks for no alternatives, so it needs no
    logprobs flag: vLLM accepts it (only a count that would return alternatives needs the
    flag) and answers without logprobs. It was refused with a 400, failing clients that
    send top_logprobs 0 as their default; a count above 0 is still refused."""
    import openai

    flag = {} if logprobs is None else {"logprobs": logprobs}
    out = client.chat.completions.create(model=model, messages=EMOJI, max_tokens=2,
                                         top_logprobs=0, **flag)
    assert out.choices[0].logprobs is None, out
    chunks = list(client.chat.completions.create(model=model, messages=EMOJI, max_tokens=2,
                                                 top_logprobs=0, stream=True, **flag))
    assert all(c.logprobs is None for chunk in chunks for c in chunk.choices), chunks
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=EMOJI, max_tokens=2,
                                       top_logprobs=1, **flag)
    assert e.value.param == "top_logprobs", e.value.body


@pytest.mark.parametrize("call", [
    lambda c, m: c.embeddings.create(model=m, input="hi"),
    lambda c, m: c.audio.transcriptions.create(model=m, file=("a.wav", b"RIFF", "audio/wav")),
    lambda c, m: c.images.generate(model=m, prompt="a cat"),
    lambda c, m: c.moderations.create(input="hi"),
    lambda c, m: c.files.list(),
], ids=["embeddings", "transcriptions", "images", "moderations", "files"])
def test_an_unserved_openai_route_says_what_is_served(client, model, call):
    """The openai client's embeddings, audio, images, moderations and files reach routes
    this text-generating server does not have: a 404 NotFoundError in OpenAI's shape, once a
    bare "no such route", now saying which of OpenAI's routes the server does serve."""
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        call(client, model)
    assert e.value.body["type"] == "not_found_error", e.value.body
    assert e.value.message.startswith("Error code: 404 - no such route: "), e.value.message
    assert "serves /v1/chat/completions, /v1/completions, /v1/responses" in e.value.message
