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
