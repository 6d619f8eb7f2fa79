"""The reasoning parsers (aiollm/api/reasoning.py): the split of whole outputs, the same split
of the same text streamed in deltas cut at every position, and the server's
/v1/chat/completions with --reasoning-parser (a regex forces a <think> output, so its shape is
known; the servers run conftest's tiny random model, whose words nothing here checks)."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from live_server import at_once, post_ok
from aiollm.api.reasoning import ReasoningSplitter, partial_tail, prompt_state, split, \
    splitter_for

DS = ("deepseek_r1", "")  # (parser, prompt tail)
QWEN = ("qwen3", "")

# (parser, prompt tail, shaped, output, reasoning, content)
CASES = [
    # deepseek_r1: everything up to </think> is reasoning, a leading <think> is dropped
    (*DS, False, "abc</think>\n\nxyz", "abc", "\n\nxyz"),
    (*DS, False, "<think>\nabc\n</think>\n\nxyz", "\nabc\n", "\n\nxyz"),
    (*DS, False, "no end tag at all", "no end tag at all", ""),
    (*DS, False, "<think>cut by max_tokens", "cut by max_tokens", ""),
    (*DS, False, "abc</think>", "abc", ""),
    (*DS, False, "a < b </thin and </think>x</think>y", "a < b </thin and ", "x</think>y"),
    (*DS, False, "", "", ""),
    (*DS, False, "<thi", "<thi", ""),
    (*DS, False, "abc</thi", "abc</thi", ""),
    (*DS, False, "<think>", "", ""),  # cut right after the opening tag: it is markup
    # qwen3: reasoning only where the output opens with <think>
    (*QWEN, False, "<think>\nabc\n</think>\n\nxyz", "\nabc\n", "\n\nxyz"),
    (*QWEN, False, "plain answer", None, "plain answer"),
    (*QWEN, False, "answer with </think> inside", None, "answer with </think> inside"),
    (*QWEN, False, " <think>late</think>", None, " <think>late</think>"),
    (*QWEN, False, "<think>truncated", "truncated", ""),
    (*QWEN, False, "<thi", None, "<thi"),
    (*QWEN, False, "<think>", "", ""),
    (*QWEN, False, "<thinking>", None, "<thinking>"),
    (*QWEN, False, "", None, ""),
    # a prompt that opens the block (Qwen3-2507 Thinking, DeepSeek-R1's template)
    ("qwen3", "<|im_start|>assistant\n<think>\n", False, "abc\n</think>\n\nxyz", "abc\n",
     "\n\nxyz"),
    ("deepseek_r1", "<｜Assistant｜><think>\n", False, "abc</think>xyz", "abc", "xyz"),
    # a prompt that closes it (Qwen3, enable_thinking false): all content
    ("qwen3", "assistant\n<think>\n\n</think>\n\n", False, "<think>x</think>y", None,
     "<think>x</think>y"),
    ("deepseek_r1", "<think>\n\n</think>\n\n", False, "abc</think>xyz", None, "abc</think>xyz"),
    # a grammar shapes the output from its first token: content unless it opens <think>
    ("deepseek_r1", "<think>\n", True, '{"a": 1}', None, '{"a": 1}'),
    ("deepseek_r1", "", True, "<think>r</think>c", "r", "c"),
    ("qwen3", "", True, "<think>", "", ""),
]


@pytest.mark.parametrize("parser,tail,shaped,text,reasoning,content", CASES)
def test_whole_output(parser, tail, shaped, text, reasoning, content):
    assert split(splitter_for(parser, tail, shaped=shaped), text) == (reasoning, content)


def _stream(splitter: ReasoningSplitter, pieces: list[str]) -> tuple[str, str, list]:
    r_all = c_all = ""
    sent = []
    for p in pieces:
        r, c = splitter.feed(p)
        sent.append((r, c))
        r_all, c_all = r_all + r, c_all + c
    r, c = splitter.finish()
    return r_all + r, c_all + c, sent


@pytest.mark.parametrize("parser,tail,shaped,text,reasoning,content", CASES)
def test_streamed_at_every_split_equals_whole(parser, tail, shaped, text, reasoning, content):
    """Every cut into two and three deltas, and one character per delta: the reasoning and
    content deltas join to the whole output's fields, and no tag text leaks into a delta."""
    n = len(text)
    cuts = [(i,) for i in range(n + 1)] + list(itertools.combinations(range(1, n), 2))
    splits = [[text[a:b] for a, b in zip((0, *c), (*c, n))] for c in cuts] + [list(text)]
    for pieces in splits:
        s = splitter_for(parser, tail, shaped=shaped)
        r, c, _ = _stream(s, pieces)
        assert (r if s.entered else None, c) == (reasoning, content), pieces


def test_reasoning_streams_before_the_end_tag():
    """Reasoning is sent as it comes (only a possible partial tag is held back)."""
    s = splitter_for("deepseek_r1", "", shaped=False)
    assert s.feed("Let me think") == ("Let me think", "")
    assert s.feed(" a <") == (" a ", "")
    assert s.feed("/thi") == ("", "")
    assert s.feed("nk>\n\nAns") == ("", "\n\nAns")
    assert s.feed("wer") == ("", "wer")
    assert s.finish() == ("", "")
    q = splitter_for("qwen3", "", shaped=False)
    assert q.feed("Hel") == ("", "Hel")  # not a possible <think>: content at once
    assert q.feed("lo") == ("", "lo")


def test_helpers():
    assert partial_tail("abc</th", "</think>") == 4
    assert partial_tail("abc", "</think>") == 0
    assert partial_tail("a<", "</think>") == 1
    assert partial_tail("</think>", "</think>") == 0  # a whole tag is found, not held
    assert prompt_state("x<think>\n") == "reasoning"
    assert prompt_state("<think></think>\n\n") == "content"
    assert prompt_state("assistant\n") is None
    # a continued message: its last tag decides, else the prompt's end
    assert prompt_state(" is", "<think>\nThe sky is") == "reasoning"
    assert prompt_state(" is", "<think>a</think>\n\nIt is") == "content"
    assert prompt_state("<think>\n", "<think>\n") == "reasoning"
    assert prompt_state(" is", "It is") is None
    with pytest.raises(ValueError, match="unknown reasoning parser 'r1'"):
        splitter_for("r1", "", shaped=False)


def test_option(capsys):
    """--reasoning-parser takes the two parsers (refusing others before loading, naming the
    flag), says what it does in --help, and reaches EngineConfig, which checks it too."""
    from aiollm.cli import build_parser, main
    from aiollm.config import EngineConfig

    with pytest.raises(SystemExit) as e:
        main(["serve", "--reasoning-parser", "r1"])
    assert e.value.code == 2 and "argument --reasoning-parser" in capsys.readouterr().err
    helps = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert "--reasoning-parser {deepseek_r1,qwen3}" in helps and "reasoning_content" in helps
    args = build_parser().parse_args(["serve", "--reasoning-parser", "qwen3"])
    assert args.reasoning_parser == "qwen3"
    assert EngineConfig().reasoning_parser is None
    with pytest.raises(ValueError, match="reasoning_parser must be one of deepseek_r1, qwen3"):
        EngineConfig(reasoning_parser="qwq")


# -- through the server ---------------------------------------------------------------------

ASK = [{"role": "user", "content": "Think about the sky, then name a colour."}]
THINK = r"<think>[a-z ]{3,24}</think>\n\n[A-Z][a-z]{2,8}"  # a forced thinking answer
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 12}},
        "required": ["city"], "additionalProperties": False}}}




def _whole(srv, **kw) -> tuple[dict, dict]:
    r = post_ok(srv, {"messages": ASK, "temperature": 0, **kw})
    return r["choices"][0], r["usage"]


def _streamed(srv, **kw) -> tuple[str | None, str | None, str, list[dict]]:
    """(joined reasoning deltas or None if none came, joined content or None if none came,
    finish, chunks): the fields as the openai SDK's stream state builds them, where a null
    content stays null until a string comes. The role chunk's content is "", as vLLM's
    stream opens: where the whole answer's content is null, the stream's is "", as from
    vLLM."""
    from live_server import http, sse_events

    status, _, raw = http(srv, "POST", "/v1/chat/completions", json={
        "messages": ASK, "temperature": 0, "stream": True, **kw})
    assert status == 200, raw
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    reasoning, content, finish = None, None, None
    for c in chunks:
        for ch in c["choices"]:
            d = ch["delta"]
            assert d.get("reasoning") == d.get("reasoning_content")  # vLLM's name, SGLang's
            if "reasoning_content" in d:
                reasoning = (reasoning or "") + d["reasoning_content"]
            if d.get("content") is not None:
                content = (content or "") + d["content"]
            finish = ch["finish_reason"] or finish
    return reasoning, content, finish, chunks


def test_forced_thinking_split_and_streamed_alike(thinker):
    """The grammar writes <think>...</think> at the output's start: both parsers put its text
    in reasoning_content, the rest (with the blank line after the tag) in content; the stream
    (one token a delta, the tags split over several) joins to the same fields, and the
    logprobs, as without a parser, cover every token of the raw output."""
    kw = {"guided_regex": THINK, "max_tokens": 40, "logprobs": True}
    (choice, usage), streamed = at_once(lambda: _whole(thinker, **kw),
                                        lambda: _streamed(thinker, **kw))
    m = choice["message"]
    assert m["reasoning_content"] and re.fullmatch(r"[a-z ]{3,24}", m["reasoning_content"]), m
    assert m["reasoning"] == m["reasoning_content"]
    assert re.fullmatch(r"\n\n[A-Z][a-z]{2,8}", m["content"]), m
    assert choice["finish_reason"] == "stop"
    raw = b"".join(bytes(t["bytes"]) for t in choice["logprobs"]["content"]).decode()
    assert raw == f"<think>{m['reasoning_content']}</think>{m['content']}"
    assert usage["completion_tokens"] == len(choice["logprobs"]["content"])
    reasoning, content, finish, chunks = streamed
    assert (reasoning, content, finish) == (m["reasoning_content"], m["content"], "stop")
    assert sum("reasoning_content" in c["choices"][0]["delta"] for c in chunks if c["choices"]
               ) > 1, "the reasoning was not streamed as it came"
    assert not any("think>" in (c["choices"][0]["delta"].get("content") or "") + c["choices"][0][
        "delta"].get("reasoning_content", "") for c in chunks if c["choices"])


def test_include_and_separate_reasoning(thinker):
    """vLLM's include_reasoning false drops the reasoning (content as with it), streamed and
    not; SGLang's separate_reasoning false leaves the output unsplit, tags and all, in
    content."""
    kw = {"guided_regex": THINK, "max_tokens": 40}
    split, dropped, (reasoning, content, _, _), raw, (_, raw_streamed, _, _) = at_once(
        lambda: _whole(thinker, **kw)[0]["message"],
        lambda: _whole(thinker, include_reasoning=False, **kw)[0]["message"],
        lambda: _streamed(thinker, include_reasoning=False, **kw),
        lambda: _whole(thinker, separate_reasoning=False, **kw)[0]["message"],
        lambda: _streamed(thinker, separate_reasoning=False, **kw))
    assert "reasoning_content" not in dropped and "reasoning" not in dropped
    assert dropped["content"] == split["content"]
    assert reasoning is None and content == split["content"]
    assert raw["content"] == f"<think>{split['reasoning_content']}</think>{split['content']}"
    assert "reasoning_content" not in raw
    assert raw_streamed == raw["content"]


def test_reasoning_sent_back_reaches_the_template(thinker):
    """An assistant message's reasoning_content (or reasoning) in the history is passed to
    the template (here through /tokenize, as the chat handler renders it): SmolLM2's template
    ignores it, so the ids are those without it, and a non-string is a 400."""
    from live_server import http

    turn = [ASK[0], {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Ok?"}]
    plain = post_ok(thinker, {"messages": turn}, "/tokenize")["tokens"]
    for key in ("reasoning_content", "reasoning"):
        with_it = [turn[0], {**turn[1], key: "thought"}, turn[2]]
        assert post_ok(thinker, {"messages": with_it}, "/tokenize")["tokens"] == plain
    status, _, _ = http(thinker, "POST", "/v1/chat/completions", json={
        "messages": [turn[0], {**turn[1], "reasoning_content": 5}, turn[2]], "max_tokens": 1})
    assert status == 400
    import msgspec

    from aiollm.api.chat_request import ChatMessage

    for key in ("reasoning_content", "reasoning"):  # what the template is given
        m = msgspec.json.decode(json.dumps({**turn[1], key: "thought"}), type=ChatMessage)
        assert m.as_dict(1)["reasoning_content"] == "thought"


def test_forced_unclosed_thinking_is_reasoning(thinker):
    kw = {"guided_regex": r"<think>[a-z ]{30,60}", "max_tokens": 6}
    (choice, _), streamed = at_once(lambda: _whole(thinker, **kw),
                                    lambda: _streamed(thinker, **kw))
    m = choice["message"]
    assert choice["finish_reason"] == "length" and m["content"] is None and m["reasoning_content"]
    assert streamed[:3] == (m["reasoning_content"], "", "length")


def test_grammar_without_tags_is_content(thinker):
    """A grammar that starts the output (here a regex) left no room to reason: its output is
    the answer, with deepseek_r1 too (whose free output starts inside the reasoning)."""
    kw = {"guided_regex": r"[A-Z][a-z]{2,8}", "max_tokens": 10}
    (choice, _), streamed = at_once(lambda: _whole(thinker, **kw),
                                    lambda: _streamed(thinker, **kw))
    m = choice["message"]
    assert m["reasoning_content"] is None and re.fullmatch(r"[A-Z][a-z]{2,8}", m["content"])
    assert streamed[:2] == (None, m["content"])


def test_free_output_without_tags(thinker):
    """No tags in a free output: deepseek_r1 takes it all as reasoning (its template opens the
    block), qwen3 all as content; either way it is the raw text /v1/completions gives for the
    same prompt, unchanged there."""
    ids = post_ok(thinker, {"messages": ASK}, "/tokenize")["tokens"]
    raw, (choice, usage), (reasoning, content, _, _) = at_once(
        lambda: post_ok(thinker, {"prompt": ids, "max_tokens": 8, "temperature": 0},
                        "/v1/completions")["choices"][0]["text"],
        lambda: _whole(thinker, max_tokens=8), lambda: _streamed(thinker, max_tokens=8))
    assert "think>" not in raw
    m = choice["message"]
    parser = thinker.engine.config.reasoning_parser
    assert (m["reasoning_content"], m["content"]) == (
        (raw, None) if parser == "deepseek_r1" else (None, raw))
    assert (reasoning, content) == (m["reasoning_content"], m["content"] or "")
    assert usage["completion_tokens"] == 8


def test_prompt_that_opens_the_reasoning(thinker):
    """A prompt that ends with <think> (as Qwen3-2507 Thinking's and DeepSeek-R1's templates
    write it; here a continued assistant message): the output starts inside the reasoning for
    both parsers."""
    kw = {"messages": [*ASK, {"role": "assistant", "content": "<think>\n"}],
          "continue_final_message": True, "add_generation_prompt": False, "max_tokens": 6}
    r = post_ok(thinker, {**kw, "temperature": 0})
    m = r["choices"][0]["message"]
    assert m["reasoning_content"] and m["content"] is None, m


def test_output_ended_right_after_the_opening_tag(thinker):
    """A stop string ("\n") ends the output just after its <think>: the tag is whole, so it is
    markup as it is in a longer output: an empty reasoning and no content, not "<think>" as
    the answer."""
    kw = {"guided_regex": r"<think>\n[a-z ]{3,24}</think>\n\n[A-Z][a-z]{2,8}",
          "max_tokens": 40, "stop": ["\n"]}
    (choice, _), (reasoning, content, finish, _) = at_once(lambda: _whole(thinker, **kw),
                                                           lambda: _streamed(thinker, **kw))
    m = choice["message"]
    assert (m["reasoning_content"], m["content"], choice["finish_reason"]) == ("", None, "stop")
    assert (reasoning or "", content, finish) == ("", "", "stop")


@pytest.mark.parametrize("prefill,inside", [
    ("<think>\nThe sky is", True),  # the reasoning opened and left open: continued
    ("<think>\nThe sky.</think>\n\nThe colour is", False),  # closed: the answer continued
])
def test_continued_message_with_its_own_reasoning(thinker, prefill, inside):
    """A continued assistant message (continue_final_message) that holds reasoning tags: the
    output continues where the message left off, inside the reasoning when its last tag opens
    it and in the answer when its last tag closes it, for both parsers (as vLLM reads the
    prompt's last tag); the text is the raw continuation /v1/completions gives."""
    msgs = [*ASK, {"role": "assistant", "content": prefill}]
    opts = {"add_generation_prompt": False, "continue_final_message": True}
    ids = post_ok(thinker, {"messages": msgs, **opts}, "/tokenize")["tokens"]
    raw, (choice, _), (reasoning, content, _, _) = at_once(
        lambda: post_ok(thinker, {"prompt": ids, "max_tokens": 6, "temperature": 0},
                        "/v1/completions")["choices"][0]["text"],
        lambda: _whole(thinker, messages=msgs, max_tokens=6, **opts),
        lambda: _streamed(thinker, messages=msgs, max_tokens=6, **opts))
    assert raw and "think>" not in raw
    m = choice["message"]
    assert (m["reasoning_content"], m["content"]) == ((raw, None) if inside else (None, raw))
    assert (reasoning, content) == (m["reasoning_content"], m["content"] or "")


def test_required_tool_call_is_content(thinker):
    """tool_choice "required": the grammar writes the call from the first token, so it is
    content and parsed as a call (deepseek_r1 would otherwise take it as reasoning)."""
    # 80: the tiny model's call takes 56 tokens (it writes whitespace the grammar allows)
    choice, _ = _whole(thinker, tools=[WEATHER], tool_choice="required", max_tokens=80,
                       parallel_tool_calls=False)
    m = choice["message"]
    assert choice["finish_reason"] == "tool_calls", m
    assert m["reasoning_content"] is None and m["tool_calls"][0]["function"]["name"] == \
        "get_weather"


def test_no_parser_leaves_the_output_alone(server):
    """Without --reasoning-parser the tags stay in content and there is no reasoning field."""
    from live_server import http

    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        "messages": ASK, "temperature": 0, "max_tokens": 40, "guided_regex": THINK})
    m = json.loads(raw)["choices"][0]["message"]
    assert status == 200 and "reasoning_content" not in m and "reasoning" not in m
    assert re.fullmatch(THINK, m["content"]), m


def test_a_response_with_reasoning_is_continued_as_its_items_sent_back(thinker):
    """previous_response_id gives the next turn the earlier output items, a reasoning item
    among them, as a client sending them back as input gives them: the same prompt."""
    import openai

    client = openai.OpenAI(base_url=thinker.base + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=client.models.list().data[0].id, max_output_tokens=8, temperature=0)
    first = client.responses.create(input=ASK[0]["content"], **kw)
    assert "reasoning" in [i.type for i in first.output] or thinker.engine.config \
        .reasoning_parser == "qwen3", first.output
    follow = [{"role": "user", "content": "Why?"}]
    continued, sent = at_once(
        lambda: client.responses.create(input=follow, previous_response_id=first.id, **kw),
        lambda: client.responses.create(store=False, **kw, input=[
            {"role": "user", "content": ASK[0]["content"]},
            *[i.model_dump(exclude_none=True) for i in first.output], *follow]))
    assert continued.usage.input_tokens == sent.usage.input_tokens
    assert continued.output_text == sent.output_text


def test_responses_put_the_reasoning_in_a_reasoning_item(thinker):
    """/v1/responses splits as chat does: the reasoning a reasoning item (reasoning_text
    content, streamed as response.reasoning_text.delta before the message's events), the
    rest the message; a free output without tags is all reasoning for deepseek_r1 (then no
    message item), all content for qwen3."""
    import openai

    client = openai.OpenAI(base_url=thinker.base + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=client.models.list().data[0].id, input=ASK[0]["content"],
              max_output_tokens=8, temperature=0)

    def stream_it():
        with client.responses.stream(**kw) as stream:
            return [e.type for e in stream], stream.get_final_response()

    m, whole, (types, streamed) = at_once(lambda: _whole(thinker, max_tokens=8)[0]["message"],
                                          lambda: client.responses.create(**kw), stream_it)
    for r in (whole, streamed):
        thought = [i.content[0].text for i in r.output if i.type == "reasoning"]
        assert (thought[0] if thought else None, r.output_text or None) == (
            m["reasoning_content"], m["content"]), r.output
        assert [i.type for i in r.output] == (["reasoning"] if m["reasoning_content"]
                                              else ["message"])
    if m["reasoning_content"]:
        assert "response.reasoning_text.delta" in types, types
        assert types[-4:-1] == ["response.reasoning_text.done", "response.content_part.done",
                                "response.output_item.done"], types
