"""A prompt the context can never hold is refused before it is tokenized (the fewest tokens
it can be, engine/token_floor.py), with the refusal tokenizing it would give: a huge prompt
held a tokenizer thread for seconds only to be refused. Exactly: a prompt that fits is
still served, one truncate_prompt_tokens cuts is served, /tokenize still counts it.

The default tokenizer's longest token (81 characters: a newline and 80 spaces) encodes
alone when repeated, so a prompt of n of them is n tokens and its fewest tokens are n too:
the bound is tight there, and the limit is met exactly."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.errors import ContextExceeded, InvalidRequest
from aiollm.sampling_params import SamplingParams
from conftest import tiny_llama

MAX_MODEL_LEN = 256
LONGEST = "\n" + " " * 80  # one token of the default tokenizer, its longest
OVER = "Hello there, how are you? " * 40  # about 280 tokens, the fewest it can be 13
HUGE = OVER * 200  # 210 KB: about 56,000 tokens, the fewest it can be 2,600 (1 MB, tokenized
# whole by the tests that serve or count it, cost them seconds and checked no more)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), max_position_embeddings=MAX_MODEL_LEN)


class EncodeSpy:
    """Records the length of every text the engine's tokenizer encodes (then encodes it)."""

    def __init__(self, tokenizer):
        self.lengths: list[int] = []
        self._encode = tokenizer.encode
        tokenizer.encode = self

    def __call__(self, text, *args, **kwargs):
        self.lengths.append(len(text))
        return self._encode(text, *args, **kwargs)

    def saw(self, size: int) -> bool:
        return any(n >= size for n in self.lengths)


def serve(tiny: str, check):
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)  # the default tokenizer
        async with TestClient(TestServer(create_app(engine))) as client:
            return await check(client, engine, EncodeSpy(engine.tokenizer))
    return asyncio.run(main())


async def refusal(client, path: str, body: dict, status: int = 400) -> dict:
    """The error body `path` answers `body` with, of that status (LightLLM's /generate
    answers a prompt past the context with 417, as LightLLM does)."""
    r = await client.post(path, json=body)
    assert r.status == status, await r.text()
    return await r.json()


def over_limit(path: str, text: str) -> dict:
    """The request body of `path` whose prompt is `text`."""
    if path == "/v1/completions":
        return {"prompt": text, "max_tokens": 1}
    if path == "/v1/chat/completions":
        return {"messages": [{"role": "user", "content": text}], "max_tokens": 1}
    if path == "/v1/responses":
        return {"input": text, "max_output_tokens": 16}
    return {"inputs": text, "parameters": {"max_new_tokens": 1}}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions",
                                  "/v1/responses", "/generate", "/generate_stream"])
def test_a_huge_prompt_is_refused_untokenized_as_tokenized(tiny, path):
    """The refusal of a huge prompt (HUGE) is the body tokenizing it gave (status, type, code,
    param, message), its count said as "at least" the fewest it can be, and the tokenizer
    never saw it. Before, the tokenizer encoded the whole of it first."""
    async def check(client, engine, spy):
        # a prompt just over the limit, tokenized: its count known exactly
        status = 417 if path.startswith("/generate") else 400
        exact = await refusal(client, path, over_limit(path, OVER), status)
        assert spy.saw(len(OVER))
        huge = await refusal(client, path, over_limit(path, HUGE), status)
        assert not spy.saw(len(HUGE)), spy.lengths
        return exact, huge

    exact, huge = serve(tiny, check)
    message = huge["error"]["message"] if "error" in huge else huge["message"]
    fewest = int(message.split(" at least ")[1].split()[0])
    assert fewest > MAX_MODEL_LEN
    # the same body but for the count: the rendered conversation's special tokens and the
    # "at least" of a count made without tokenizing
    said = exact["error"]["message"] if "error" in exact else exact["message"]
    count = said.split(" tokens, but")[0].rsplit(" ", 1)[1]
    expected = said.replace(f" {count} tokens, but", f" at least {fewest} tokens, but")
    assert message == expected
    assert json.dumps(huge) == json.dumps(exact).replace(said, expected)


def test_the_limit_is_kept_exactly(tiny):
    """Prompts of the longest token repeated (their fewest tokens are their tokens): one of
    max_model_len + 1 tokens is refused early with its true count; one of max_model_len,
    which only its output does not fit, gets the refusal it got (never an early one); one
    of max_model_len - 1 is served."""
    async def check(client, engine, spy):
        over = await refusal(client, "/v1/completions",
                             {"prompt": LONGEST * (MAX_MODEL_LEN + 1), "max_tokens": 1})
        assert not spy.saw(len(LONGEST) * MAX_MODEL_LEN)
        full = await refusal(client, "/v1/completions",
                             {"prompt": LONGEST * MAX_MODEL_LEN, "max_tokens": 1})
        r = await client.post("/v1/completions", json={
            "prompt": LONGEST * (MAX_MODEL_LEN - 1), "max_tokens": 1})
        assert r.status == 200, await r.text()
        assert (await r.json())["usage"]["prompt_tokens"] == MAX_MODEL_LEN - 1
        return over, full

    over, full = serve(tiny, check)
    assert over["error"]["message"] == (
        f"the prompt has at least {MAX_MODEL_LEN + 1} tokens, but this model's maximum "
        f"context length is {MAX_MODEL_LEN} tokens (input and output together)")
    assert over["error"]["param"] == "prompt"
    assert over["error"]["code"] == "context_length_exceeded"
    assert full["error"]["message"].startswith(
        f"the prompt has {MAX_MODEL_LEN} tokens, which fill this model's maximum context")


def test_a_batch_names_the_huge_prompt(tiny):
    async def check(client, engine, spy):
        return await refusal(client, "/v1/completions", {"prompt": ["Hi", HUGE],
                                                         "max_tokens": 1})

    body = serve(tiny, check)
    assert body["error"]["param"] == "prompt[1]", body
    assert " at least " in body["error"]["message"]


def test_truncated_and_counted_huge_prompts_are_still_served(tiny):
    """truncate_prompt_tokens keeps a huge prompt's last tokens: it is served, not refused
    (its tokens could only be known by tokenizing it); /tokenize counts it; the Engine API
    refuses it as HTTP does, and serves it truncated."""
    async def check(client, engine, spy):
        r = await client.post("/v1/completions", json={
            "prompt": HUGE, "max_tokens": 1, "truncate_prompt_tokens": 8})
        assert r.status == 200, await r.text()
        assert (await r.json())["usage"]["prompt_tokens"] == 8
        r = await client.post("/v1/completions", json={  # its own tokens found for the echo
            "prompt": HUGE, "max_tokens": 1, "truncate_prompt_tokens": 8, "echo": True,
            "logprobs": 1})
        assert r.status == 200, await r.text()
        choice = (await r.json())["choices"][0]
        echoed = "".join(choice["logprobs"]["tokens"][:8])  # the prompt's, scored
        assert len(echoed) > 8 and HUGE.endswith(echoed) and choice["text"].startswith(echoed)
        r = await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": HUGE}], "max_tokens": 1,
            "truncate_prompt_tokens": 8})
        assert r.status == 200, await r.text()
        r = await client.post("/tokenize", json={"prompt": HUGE})
        assert r.status == 200, await r.text()
        assert (await r.json())["count"] > 100 * MAX_MODEL_LEN
        with pytest.raises(ContextExceeded, match="the prompt has at least"):
            await engine.generate(HUGE, SamplingParams(max_tokens=1))
        with pytest.raises(ContextExceeded, match="the prompt has at least"):
            await engine.chat([{"role": "user", "content": HUGE}],
                              SamplingParams(max_tokens=1))
        out = await engine.generate(HUGE, SamplingParams(max_tokens=1,
                                                         truncate_prompt_tokens=8))
        assert len(out.prompt_token_ids) == 8

    serve(tiny, check)


def test_counting_a_huge_prompt_is_never_refused(tiny):
    """Engine.tokenize (public: a caller counts a text's tokens with it, as vLLM's
    /tokenize counts any length), Engine.render_chat and /tokenize of messages count a
    prompt past the context: only generating from it is refused. Engine.tokenize(HUGE)
    raised ContextExceeded once the early refusal was wired into it."""
    async def check(client, engine, spy):
        assert len(engine.tokenize(HUGE)) > 100 * MAX_MODEL_LEN
        assert len(engine.tokenize({"prompt": HUGE})) > 100 * MAX_MODEL_LEN
        ids, _ = engine.render_chat([{"role": "user", "content": HUGE}])
        assert len(ids) > 100 * MAX_MODEL_LEN
        r = await client.post("/tokenize", json={
            "messages": [{"role": "user", "content": HUGE}]})
        assert r.status == 200, await r.text()
        assert (await r.json())["count"] > 100 * MAX_MODEL_LEN
        r = await client.post("/tokens", json={"text": HUGE})  # LightLLM's count
        assert r.status == 200, await r.text()
        spy.lengths.clear()
        with pytest.raises(ContextExceeded, match="the prompt has at least"):
            engine.stream(HUGE)  # the engine's defaults: generating, so refused early
        assert not spy.saw(len(HUGE))

    serve(tiny, check)


def test_llm_refuses_a_huge_prompt_untokenized(tiny):
    """LLM.generate and LLM.chat refuse a prompt the context can never hold before the
    tokenizer sees it, as Engine.generate and Engine.chat do; a conversation that
    truncate_prompt_tokens cuts is still rendered whole and served. LLM.chat rendered every
    conversation without the bound: a megabyte was encoded only to be refused."""
    from aiollm.offline import LLM

    with LLM(tiny, load_format="dummy", kv_tokens=512) as llm:
        spy = EncodeSpy(llm.get_tokenizer())
        params = SamplingParams(max_tokens=1)
        with pytest.raises(InvalidRequest, match=r"prompts\[1\]: the prompt has at least"):
            llm.generate(["Hi", HUGE], params)
        huge = [{"role": "user", "content": HUGE}]
        with pytest.raises(InvalidRequest,
                           match=r"conversations\[1\]: the prompt has at least"):
            llm.chat([[{"role": "user", "content": "Hi"}], huge], params)
        with pytest.raises(InvalidRequest,
                           match=r"conversations\[0\]: the prompt has at least"):
            llm.chat(huge, [params])  # one params per conversation
        assert not spy.saw(len(HUGE)), spy.lengths
        out = llm.chat(huge, SamplingParams(max_tokens=1, truncate_prompt_tokens=8))
        assert len(out[0].prompt_token_ids) == 8
        # a list of params of another length is named as such, as before the bound
        with pytest.raises(InvalidRequest, match=r"params holds 2 SamplingParams for 1"):
            llm.chat(huge, [params, params])


def test_the_engine_checks_the_params_before_the_prompts_length(tiny):
    """A huge prompt with a bad field (temperature set out of range after SamplingParams
    checked it) is refused for the field by Engine.generate, as Engine.stream refuses it
    (the params first, as SamplingParams refuses the field when it is made): generate
    refused it for its length. The HTTP routes refuse the length first, as vLLM's do (it
    makes the SamplingParams once the prompt is tokenized)."""
    async def check(client, engine, spy):
        bad = SamplingParams(max_tokens=1)
        bad.temperature = -1.0
        with pytest.raises(InvalidRequest) as streamed:
            engine.stream(HUGE, bad)
        with pytest.raises(InvalidRequest) as generated:
            await engine.generate(HUGE, bad)
        assert streamed.value.param == generated.value.param == "temperature"
        assert str(generated.value) == str(streamed.value)

    serve(tiny, check)


def _bad_params() -> list[tuple[SamplingParams, str]]:
    """(params generating refuses, the field named): a truncate_prompt_tokens past the
    context (only the engine knows the context), one of no meaning and a temperature set
    out of range after SamplingParams checked them when made."""
    past = SamplingParams(max_tokens=1, truncate_prompt_tokens=MAX_MODEL_LEN + 1)
    zero = SamplingParams(max_tokens=1)
    zero.truncate_prompt_tokens = 0
    cold = SamplingParams(max_tokens=1)
    cold.temperature = -1.0
    return [(past, "truncate_prompt_tokens"), (zero, "truncate_prompt_tokens"),
            (cold, "temperature")]


def test_chat_checks_the_params_before_rendering_a_huge_conversation(tiny):
    """Engine.chat and stream_chat refuse params that generating refuses before the
    conversation is rendered and encoded, with the refusal Engine.generate and stream give
    a prompt: any truncate_prompt_tokens was read as one that cuts the conversation, which
    was then encoded whole (seconds for megabytes; stream_chat on the event loop) only to
    be refused for that value; a bad temperature was refused as the prompt's length."""
    huge = [{"role": "user", "content": HUGE}]

    async def check(client, engine, spy):
        for bad, field in _bad_params():
            with pytest.raises(InvalidRequest) as generated:
                await engine.generate(HUGE, bad)
            with pytest.raises(InvalidRequest) as chatted:
                await engine.chat(huge, bad)
            with pytest.raises(InvalidRequest) as streamed:
                engine.stream_chat(huge, bad)
            for e in (generated, chatted, streamed):
                assert e.value.param == field, (field, e.value)
                assert str(e.value) == str(generated.value)
            assert not spy.saw(len(HUGE)), (field, spy.lengths)

    serve(tiny, check)


def test_llm_chat_checks_the_params_before_rendering_a_huge_conversation(tiny):
    """LLM.chat refuses params that generating refuses (one for all, or one per
    conversation: params[i].field, params[i] for one that is no SamplingParams) before it
    renders a conversation, as LLM.generate refuses them before it tokenizes a prompt."""
    from aiollm.offline import LLM

    huge = [{"role": "user", "content": HUGE}]
    with LLM(tiny, load_format="dummy", kv_tokens=512) as llm:
        spy = EncodeSpy(llm.get_tokenizer())
        cases = [("x", "params"), (["x"], "params[0]")]
        for bad, field in _bad_params():
            cases += [(bad, field), ([bad], f"params[0].{field}")]
        for params, named in cases:
            with pytest.raises(InvalidRequest) as generated:
                llm.generate([HUGE], params)
            with pytest.raises(InvalidRequest) as chatted:
                llm.chat(huge, params)
            assert chatted.value.param == generated.value.param == named
            assert str(chatted.value) == str(generated.value)
            assert not spy.saw(len(HUGE)), (named, spy.lengths)


def test_llm_chat_checks_every_params_before_rendering_any_conversation(tiny):
    """LLM.chat refuses a list of params of another length than the conversations, a bad
    params[i] and a None in the list (the engine's defaults are for params given none, as
    LLM.generate reads them) before it renders any conversation, as LLM.generate refuses
    them before it tokenizes any prompt: a list of another length, or a bad params[1]
    after a params[0] that cuts a huge conversation 0, rendered and encoded that
    conversation whole first (seconds for megabytes); [None] was refused as the huge
    conversation's length, where LLM.generate names params[0]. A batch of none is served
    as LLM.generate serves it (the context bounds no prompt)."""
    from aiollm.offline import LLM

    huge = [{"role": "user", "content": HUGE}]
    cut = SamplingParams(max_tokens=1, truncate_prompt_tokens=8)
    with LLM(tiny, load_format="dummy", kv_tokens=512) as llm:
        spy = EncodeSpy(llm.get_tokenizer())
        with pytest.raises(InvalidRequest) as e:
            llm.chat(huge, [cut, cut])
        assert e.value.param == "params"
        assert str(e.value) == ("params holds 2 SamplingParams for 1 conversations: give one "
                                "for all of them, or one for each")
        for bad, field in _bad_params():
            with pytest.raises(InvalidRequest) as e:
                llm.chat([huge, huge], [cut, bad])
            assert e.value.param == f"params[1].{field}", e.value
        with pytest.raises(InvalidRequest) as generated:
            llm.generate([HUGE], [None])
        with pytest.raises(InvalidRequest) as chatted:
            llm.chat(huge, [None])
        assert chatted.value.param == generated.value.param == "params[0]"
        assert str(chatted.value) == str(generated.value)
        assert not spy.saw(len(HUGE)), spy.lengths
        # no conversation, nothing the context bounds: served, as LLM.generate serves it
        past = SamplingParams(max_tokens=1, truncate_prompt_tokens=MAX_MODEL_LEN + 1)
        assert llm.chat([], past) == llm.generate([], past) == []
