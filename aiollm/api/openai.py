"""OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

Each choice (n > 1, or each prompt of a batch) is its own engine request (a completion that
only echoes its prompt asks the engine nothing: prompt_echo.py); a seeded request gives
choice i the seed + i. Streams follow OpenAI's chunk format and end with `data: [DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from aiollm.api import reasoning, sse, tool_parsers, tool_request
from aiollm.api.body import decode_body
from aiollm.api.chat_request import ChatCompletionRequest
from aiollm.api.choices import gather_all, merge
from aiollm.api.completion_request import CompletionRequest
from aiollm.api.http_errors import ApiError, param_names
from aiollm.api.prompt_echo import PromptEcho, echo_only
from aiollm.api.protocol import json_response
from aiollm.api.state import ApiState, state
from aiollm.api.token_bytes import TokenBytes
from aiollm.api.tool_stream import StreamingToolParser
from aiollm.errors import naming_batch_item
from aiollm.sampling_params import Constraint

if TYPE_CHECKING:
    from aiollm.engine import Delta, RequestOutput, TokenLogprob

T = TypeVar("T")


def _model_card(st: ApiState) -> dict:
    return {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "aiollm",
            "max_model_len": st.engine.max_model_len}


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model_card(state(request))]})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model} (the openai client's models.retrieve): the served model's card,
    404 model_not_found for any other name (which may hold slashes, as HF names do)."""
    st = state(request)
    st.check_model(request.match_info["model"])
    return json_response(_model_card(st))


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def _room(st: ApiState, prompt_len: int) -> int:
    """max_tokens when the client gives none: the rest of the context (at least 1, so a prompt
    that is itself too long is reported as such by the engine)."""
    return max(1, st.engine.max_model_len - prompt_len)


# -- /v1/completions --------------------------------------------------------------------------

async def completions(request: web.Request) -> web.StreamResponse:
    st = state(request)
    engine = st.engine
    req = await decode_body(request, CompletionRequest)
    st.check_model(req.model)
    req.check_unserved()
    req.check_max_tokens()
    prompts = req.prompt_batch()
    st.check_choices(len(prompts) * req.n, "n" if req.n > 1 else "prompt")
    # a list of prompts (even of one) is a batch: its errors say which prompt (prompt[i])
    batched = prompts[0] is not req.prompt
    prompt_ids = (await st.tokenize_batch(prompts) if batched
                  else [await st.tokenize(prompts[0])])
    constraint = req.constraint()
    # echo with logprobs (or max_tokens 0: prompt scoring) reports the prompt's tokens too
    echo_scores = req.echo and (req.logprobs is not None or req.max_tokens == 0)
    scoring = req.prompt_logprobs
    if echo_scores:
        scoring = max(scoring or 0, req.logprobs or 0)
    jobs = []  # choice index k = prompt index * n + j, as OpenAI numbers them
    for i, ids in enumerate(prompt_ids):
        max_tokens = req.max_tokens if req.max_tokens is not None else _room(st, len(ids))
        for j in range(req.n):
            sp = req.sampling_params(max_tokens=max_tokens, logprobs=req.logprobs, choice=j,
                                     constraint=constraint, prompt_logprobs=scoring)
            jobs.append((i if batched else None, ids, sp))
    await engine.compile_grammar(jobs[0][2])
    # a request that asks for nothing computed is checked and answered without the model
    source = PromptEcho(engine, jobs) if echo_only(req) else engine
    vocab = await st.token_bytes() if req.logprobs is not None or scoring is not None else None
    echo = []  # each choice's echoed prompt: text and its tokens' texts
    for p, ids in zip(prompts, prompt_ids):
        pieces = vocab.pieces(ids) if echo_scores else None
        text = "".join(pieces) if pieces else _echo_text(st, p) if req.echo else ""
        echo += [(text, pieces)] * req.n
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": st.model_name,
            "system_fingerprint": st.system_fingerprint}
    prompt_tokens = sum(len(ids) for ids in prompt_ids)

    def logprobs_of(k: int, out: Delta | RequestOutput, offset: int) -> dict | None:
        if req.logprobs is None:
            return None
        prompt_part = None
        if echo_scores and out.prompt_logprobs is not None:  # the prompt's tokens first
            prompt_part = _completion_logprobs(vocab, out.prompt_logprobs, echo[k][1], offset)
            offset += len(echo[k][0])
        lp = _completion_logprobs(vocab, out.logprobs, out.token_texts, offset)
        return _joined(prompt_part, lp) if prompt_part else lp

    def prompt_scores(out: Delta | RequestOutput) -> dict:
        if req.prompt_logprobs is None or out.prompt_logprobs is None:
            return {}
        return {"prompt_logprobs": _vllm_prompt_logprobs(vocab, out.prompt_logprobs)}

    if not req.stream:
        outs = await gather_all([_of_prompt(i, source.generate(ids, sp))
                                 for i, ids, sp in jobs])
        choices = [{
            "index": k, "text": echo[k][0] + out.text, "finish_reason": out.finish_reason,
            "logprobs": logprobs_of(k, out, 0 if echo_scores else len(echo[k][0])),
            **prompt_scores(out),
        } for k, out in enumerate(outs)]
        # a prompt counts once however many choices it has: its first choice's hit (the
        # others reuse what that one computed)
        cached = sum(o.cached_tokens for o in outs[::req.n])
        return json_response({**head, "choices": choices, "usage": _usage(
            prompt_tokens, sum(o.completion_tokens for o in outs), cached)})

    done_tokens = [0] * len(jobs)
    cached_tokens = [0] * len(jobs)
    offsets = [0 if echo_scores else len(e[0]) for e in echo]  # text_offset of the next token
    echoed = [False] * len(jobs)

    def usage() -> dict:
        return _usage(prompt_tokens, sum(done_tokens), sum(cached_tokens[::req.n]))

    def render(item: tuple[int, Delta]) -> bytes:
        k, delta = item
        text = delta.text
        if not echoed[k]:
            text, echoed[k] = echo[k][0] + text, True
        logprobs = logprobs_of(k, delta, offsets[k])
        if logprobs is not None:
            offsets[k] += sum(len(t) for t in logprobs["tokens"])
        done_tokens[k] = delta.completion_tokens
        cached_tokens[k] = delta.cached_tokens
        return sse.event({**head, "choices": [{
            "index": k, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason,
            **prompt_scores(delta),
        }], **_chunk_usage(req, usage)})

    def tail() -> bytes:
        last = sse.event({**head, "choices": [], "usage": usage()}) if req.include_usage else b""
        return last + sse.DONE

    starts = [partial(_stream_of_prompt, i, source.stream, ids, sp) for i, ids, sp in jobs]
    return await sse.send(request, merge(starts), render, tail)


def _chunk_usage(req: CompletionRequest | ChatCompletionRequest, usage: Callable[[], dict]
                 ) -> dict:
    """The usage field of a chunk before the last: none without include_usage; with it null,
    as OpenAI sends it on every chunk but the last; with vLLM's continuous_usage_stats too,
    the request's usage so far (all its choices' tokens, as the last chunk counts them)."""
    if not req.include_usage:
        return {}
    return {"usage": usage() if req.continuous_usage else None}


async def _of_prompt(i: int | None, result: Awaitable[T]) -> T:
    """`result`, whose errors about its prompt name prompt i of the batch (None: no batch)."""
    with naming_batch_item("prompt", i):
        return await result


def _stream_of_prompt(i: int | None, stream: Callable[..., AsyncIterator[T]], *args
                      ) -> AsyncIterator[T]:
    """stream(*args), whose errors about its prompt (raised as it is called) name prompt i
    of the batch (None: no batch)."""
    with naming_batch_item("prompt", i):
        return stream(*args)


def _echo_text(st: ApiState, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else st.engine.tokenizer.decode(prompt)


def _completion_logprobs(vocab: TokenBytes, lps: Sequence[TokenLogprob | None],
                         texts: Sequence[str], offset: int) -> dict:
    """The legacy completions format: parallel lists, top alternatives as {text: logprob}
    (the `logprobs` most likely, and the chosen token if it is not one of them).
    `texts` are the tokens' shares of the text (they join to it), so the offsets index it; a
    None entry (the prompt's first token) has no logprob."""
    tokens, values, tops, offsets = [], [], [], []
    for lp, text in zip(lps, texts):
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if lp is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(lp.logprob)
        # the chosen token is always listed, after the top alternatives when not among them
        # (OpenAI: "up to logprobs+1 elements"; vLLM likewise), so a client can compare it
        top = {vocab.text_of(t): v for t, v in lp.top}
        top.setdefault(vocab.text_of(lp.token_id), lp.logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


def _joined(a: dict, b: dict) -> dict:
    return {key: a[key] + b[key] for key in a}


def _vllm_prompt_logprobs(vocab: TokenBytes, lps: Sequence[TokenLogprob | None]) -> list:
    """vLLM's prompt_logprobs: per prompt token None (the first) or {id: {logprob, rank,
    decoded_token}} for the prompt token and its top alternatives."""
    out: list[dict | None] = []
    for lp in lps:
        if lp is None:
            out.append(None)
            continue
        entry = {str(lp.token_id): {"logprob": lp.logprob, "rank": lp.rank,
                                    "decoded_token": vocab.text_of(lp.token_id)}}
        for rank, (t, v) in enumerate(lp.top, 1):
            entry.setdefault(str(t), {"logprob": v, "rank": rank,
                                      "decoded_token": vocab.text_of(t)})
        out.append(entry)
    return out


# -- /v1/chat/completions ---------------------------------------------------------------------

async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await decode_body(request, ChatCompletionRequest)
    names = {"logprobs": "top_logprobs", "prompt": "messages"}
    if req.max_completion_tokens is not None:
        names["max_tokens"] = "max_completion_tokens"
    with param_names(names):
        return await _chat_completions(request, req)


async def _chat_completions(request: web.Request, req: ChatCompletionRequest
                            ) -> web.StreamResponse:
    st = state(request)
    engine = st.engine
    st.check_model(req.model)
    req.check_unserved()
    req.check_max_tokens()
    st.check_choices(req.n, "n")
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.functions is not None or req.function_call is not None:
        raise ApiError(400, "functions and function_call are deprecated and not supported: "
                       "send tools and tool_choice", param="functions" if req.functions
                       is not None else "function_call")
    tools, mode, callable_tools = tool_request.choose(req.tools, req.tool_choice)
    constraint = req.constraint()
    # a grammar that holds the output from its first token leaves no room to reason first
    shaped = mode == "required" or constraint is not None and constraint.grammar is not None
    # SGLang's separate_reasoning false: the output unsplit, tags and all, in content
    thinking = engine.config.reasoning_parser if req.separate_reasoning else None
    if thinking and any(tool_parsers.marker_is_skipped(engine.tokenizer, tag)
                        for tag in (reasoning.START, reasoning.END)):
        req.skip_special_tokens = False  # the splitter must see the tags in the text
    template = engine.tokenizer.chat_template
    # past calls reach a template that knows none in any mode: the follow-up turn (often
    # tool_choice "none", or no tools) must show the model what it called
    messages = tool_request.template_messages(req.message_dicts(),
                                              tools if mode != "none" else [], template)
    parser = None
    names = {t["function"]["name"] for t in callable_tools}
    if mode != "none":
        parser = tool_parsers.parser_for(template, engine.config.tool_call_parser)
        if tool_parsers.marker_is_skipped(engine.tokenizer, parser.start):
            req.skip_special_tokens = False  # the parser must see it in the text
        named = isinstance(req.tool_choice, dict)  # choose() made it mode "required"
        if constraint is not None and constraint.grammar is not None:
            if named:  # not the "required" it was turned into
                sent = f"tool_choice naming the function {callable_tools[0]['function']['name']!r}"
            elif req.tool_choice is not None:
                sent = f"tool_choice {mode!r}"
            else:
                sent = "tools (with tool_choice absent, \"auto\")"
            raise ApiError(400, f"{sent} and {constraint.grammar.param} both constrain the "
                           f"output; send one (or tool_choice \"none\")", param="tool_choice")
        # a named function is one call, as vLLM and SGLang answer it; else several may come
        # unless parallel_tool_calls is false
        spec = parser.grammar(callable_tools, required=mode == "required",
                              parallel=req.parallel_tool_calls is not False and not named)
        constraint = Constraint(spec, *((constraint.allowed_token_ids, constraint.logit_bias)
                                        if constraint else ()))
    # the template is applied here rather than by engine.chat so that a request without
    # max_tokens can be given the rest of the context
    ids = await st.chat_prompt(messages, tools if mode != "none" else None,
                               req.template_options())
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else (
        req.max_tokens if req.max_tokens is not None else _room(st, len(ids)))
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = [req.sampling_params(max_tokens=max_tokens, logprobs=logprobs, choice=j,
                                  constraint=constraint) for j in range(req.n)]
    await engine.compile_grammar(params[0])
    # one head, in OpenAI's order, for the whole answer and for every chunk of a stream
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if req.stream else "chat.completion",
            "created": int(time.time()), "model": st.model_name,
            "system_fingerprint": st.system_fingerprint}
    vocab = await st.token_bytes() if logprobs is not None else None
    prompt_tail = engine.tokenizer.decode(ids[-16:], skip_special_tokens=False) if thinking else ""
    # a continued message's own tags say whether it stopped inside its reasoning
    continued = messages[-1].get("content") if req.continue_final_message else None

    def splitter() -> reasoning.ReasoningSplitter | None:
        return reasoning.splitter_for(thinking, prompt_tail, shaped=shaped,
                                      continued=continued) if thinking else None

    if not req.stream:
        outs = await gather_all([engine.generate(ids, sp) for sp in params])
        choices = []
        for j, out in enumerate(outs):
            text, thought, r = out.text, {}, None
            if thinking:  # tool calls are read from the content only
                r, text = reasoning.split(splitter(), out.text)
                # reasoning_content as DeepSeek and SGLang name it, reasoning as vLLM now does
                thought = {"reasoning_content": r, "reasoning": r} if req.include_reasoning else {}
            finish = out.finish_reason
            # a call cut by max_tokens or a stop string is a call too, as the stream reads
            # it (cut_calls.py); a grammar never ends an output inside a call by itself
            content, calls = parser.calls(text, names, cut=finish in ("length", "stop"),
                                          required=mode == "required") if parser else (text, [])
            # after reasoning, an empty answer is null (as vLLM sends it)
            answer = content if r is None else content or None
            # refusal is one of the message's required fields in OpenAI's schema (typed
            # clients check it); the model's own refusals are plain content
            message: dict = {"role": "assistant", "content": answer, "refusal": None, **thought}
            if calls:
                message = {"role": "assistant", "content": content or None, "refusal": None,
                           **thought, "tool_calls": [c.as_openai() for c in calls]}
                # a call a stop string cut is no complete call: "stop" stays
                finish = "tool_calls" if finish == "stop" and calls[-1].complete else finish
            choices.append({
                "index": j, "message": message, "finish_reason": finish,
                "logprobs": (None if out.logprobs is None
                             else _chat_logprobs(vocab, out.logprobs, out.token_texts)),
            })
        return json_response({**head, "choices": choices,
                              "usage": _usage(len(ids), sum(o.completion_tokens for o in outs),
                                              outs[0].cached_tokens)})

    done_tokens = [0] * req.n
    cached_tokens = [0] * req.n
    started = [False] * req.n
    said = [False] * req.n  # whether content has been sent

    calls = [StreamingToolParser(parser, names, required=mode == "required")
             if parser else None for _ in params]
    splits = [splitter() for _ in params]

    def usage() -> dict:
        return _usage(len(ids), sum(done_tokens), cached_tokens[0])

    def render(item: tuple[int, Delta]) -> bytes:
        j, d = item
        text, finish = d.text, d.finish_reason
        found, thought = [], ""
        if splits[j] is not None:  # the tool parser sees the content only
            thought, text = splits[j].feed(text)
            if finish is not None:
                r, c = splits[j].finish()
                thought, text = thought + r, text + c
        if calls[j] is not None:
            text = calls[j].feed(text)
            if finish is not None:
                rest, found = calls[j].finish(cut=finish in ("length", "stop"))
                text += rest
                if found and finish == "stop" and found[-1].complete:
                    finish = "tool_calls"
        delta: dict = {}
        if not started[j]:  # null until some comes: the message may turn out calls alone
            started[j] = True
            delta = {"role": "assistant", "content": text or None}
        # once content has begun every chunk carries it (simple clients index
        # delta["content"]); before, a "" would make a client's joined content "" where
        # the whole answer has null
        if text or said[j]:
            said[j] = True
            delta["content"] = text
        if thought and req.include_reasoning:  # vLLM's include_reasoning false: dropped
            delta["reasoning_content"] = delta["reasoning"] = thought
        if finish is not None and not said[j] and not found and not (
                splits[j] is not None and splits[j].entered):
            delta["content"] = ""  # the whole answer's content is "", not null
        done_tokens[j] = d.completion_tokens
        cached_tokens[j] = d.cached_tokens
        logprobs = None if d.logprobs is None else _chat_logprobs(vocab, d.logprobs,
                                                                     d.token_texts)
        if not found and not delta and finish is None and logprobs is None:
            return b""  # text the parsers hold back: OpenAI sends no chunk for it
        counts = _chunk_usage(req, usage)
        if not found:
            return sse.event({**head, "choices": [{
                "index": j, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
                **counts})
        # the calls, then a chunk of their own for the finish, as OpenAI sends them (the
        # SDK's stream helper ends a call, arguments.done, only once it has seen it)
        delta["tool_calls"] = [c.as_openai(index=i) for i, c in enumerate(found)]
        return sse.event({**head, "choices": [{
            "index": j, "delta": delta, "finish_reason": None, "logprobs": logprobs}],
            **counts}) + sse.event({**head, "choices": [{
                "index": j, "delta": {"content": ""} if said[j] else {},
                "finish_reason": finish, "logprobs": None}], **counts})

    def tail() -> bytes:
        last = sse.event({**head, "choices": [], "usage": usage()}) if req.include_usage else b""
        return last + sse.DONE

    starts = [partial(engine.stream, ids, sp) for sp in params]
    return await sse.send(request, merge(starts), render, tail)


def _chat_logprobs(vocab: TokenBytes, lps: Sequence[TokenLogprob], texts: Sequence[str]
                   ) -> dict:
    """Chat logprobs: each token with its real bytes (a token that holds part of a UTF-8
    character has only those bytes), so the bytes of all tokens join to the content's UTF-8.
    A token whose text is not all in the content (skipped special, stop token, cut by a stop
    string) reports the bytes of the part that is. With a reasoning parser they join to the
    whole output: the reasoning, its tags and the content."""
    def entry(token_id: int, logprob: float) -> dict:
        return {"token": vocab.text_of(token_id), "logprob": logprob,
                "bytes": list(vocab.bytes_of(token_id))}

    content = []
    for lp, text in zip(lps, texts):
        e = entry(lp.token_id, lp.logprob)
        real = vocab.bytes_of(lp.token_id)
        try:
            whole = real.decode()
        except UnicodeDecodeError:  # part of a character: its neighbours complete it
            whole = text
        if whole != text:
            e["bytes"] = list(text.encode())
        content.append({**e, "top_logprobs": [entry(t, v) for t, v in lp.top]})
    return {"content": content}


ROUTES = [
    web.get("/v1/models", list_models),
    web.get("/v1/models/{model:.+}", retrieve_model),
    web.post("/v1/completions", completions),
    web.post("/v1/chat/completions", chat_completions),
]
