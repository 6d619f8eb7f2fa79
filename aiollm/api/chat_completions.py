"""/v1/chat/completions: a conversation answered, whole or streamed, with its reasoning
split off (reasoning.py) and its tool calls read (tool_parsers.py, tool_stream.py); and the
chat logprob format.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from aiollm.api import reasoning, sse
from aiollm.api.body import decode_body
from aiollm.api.chat_logprobs import chat_logprobs
from aiollm.api.chat_plan import plan_chat
from aiollm.api.chat_request import ChatCompletionRequest
from aiollm.api.choices import gather_outputs, merge
from aiollm.api.completions import vllm_prompt_logprobs
from aiollm.api.cut_calls import finish_with_calls, may_cut_a_call
from aiollm.api.http_errors import context_told, param_names
from aiollm.api.lax_bool import lax_bool
from aiollm.api.openai_hints import SERVED_TIER
from aiollm.api.protocol import json_response
from aiollm.api.request_id import request_id
from aiollm.api.state import state
from aiollm.api.token_names import names_by_id
from aiollm.api.usage import chunk_usage, usage_of
from aiollm.engine.request_group import choice_group

if TYPE_CHECKING:
    from aiollm.engine import Delta, RequestOutput


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await decode_body(request, ChatCompletionRequest)
    request_id(request, req.request_id)  # errors too carry it from here
    req.logprobs = lax_bool(req.logprobs, "logprobs")  # named so: param_names' are below
    names = {"logprobs": "top_logprobs", "prompt": "messages"}
    if req.max_completion_tokens is not None:
        names["max_tokens"] = "max_completion_tokens"
    # a chat answer has at least one token, as vLLM's (its prompt_logprobs too): max_tokens
    # 0, the engine's advice, is refused here
    with param_names(names), context_told(
            "the messages (as the chat template renders them) have", "the messages",
            "shorten the messages, or serve the model with a larger --max-model-len where it "
            "allows one"):
        return await _chat_completions(request, req)


async def _chat_completions(request: web.Request, req: ChatCompletionRequest
                            ) -> web.StreamResponse:
    st = state(request)
    engine = st.engine
    plan = await plan_chat(st, req)
    ids, params, role, logprobs = plan.ids, plan.params, plan.role, plan.logprobs
    named, thinking, echo = plan.named, plan.thinking, plan.echo
    # one head, in OpenAI's order, for the whole answer and for every chunk of a stream
    rid = request_id(request)
    head = {"id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk" if req.stream else "chat.completion",
            "created": int(time.time()), "model": st.model_name,
            "service_tier": SERVED_TIER, "system_fingerprint": st.system_fingerprint}
    vocab = (await st.token_bytes()
             if logprobs is not None or req.prompt_logprobs is not None else None)
    by_id = names_by_id(req.return_tokens_as_token_ids, st.return_tokens_as_token_ids)

    def prompt_scores(d: Delta | RequestOutput) -> dict:
        """The prompt's logprobs, where `d` brings them (choice 0's result, or its first
        delta): top-level, as vLLM's chat answer carries them."""
        if d.prompt_logprobs is None:
            return {}
        return {"prompt_logprobs": vllm_prompt_logprobs(vocab, d.prompt_logprobs)}

    splitter = plan.splitter

    group = choice_group(req.n)  # the choices measured as one request
    if not req.stream:
        outs = await gather_outputs([engine.generate(ids, sp, cache_salt=req.cache_salt,
                                                     group=group) for sp in params])
        choices = []
        thought_tokens = 0 if thinking else None  # of all choices
        for j, out in enumerate(outs):
            text, thought, r = out.text, {}, None
            if thinking:  # tool calls are read from the content only
                split = splitter()
                r, text = reasoning.split(split, out.text)
                thought_tokens += reasoning.reasoning_tokens(split, out.token_texts)
                # reasoning_content as DeepSeek and SGLang name it, reasoning as vLLM now does
                thought = {"reasoning_content": r, "reasoning": r} if req.include_reasoning else {}
            finish = out.finish_reason
            content, calls = plan.calls(text, cut=may_cut_a_call(finish),
                                        length=finish == "length")
            # after reasoning, an empty answer is null (as vLLM sends it)
            answer = content if r is None else content or None
            # refusal is one of the message's required fields in OpenAI's schema (typed
            # clients check it); the model's own refusals are plain content
            message: dict = {"role": role, "content": answer, "refusal": None, **thought}
            if calls:
                message = {"role": role, "content": content or None, "refusal": None,
                           **thought, "tool_calls": [c.as_openai() for c in calls]}
                finish = finish_with_calls(finish, calls, named,
                                           plan.stopped_in_call(text, finish, calls))
            if req.echo:  # as vLLM: a string then, even of no content (calls alone)
                message["content"] = echo + (message["content"] or "")
            choices.append({
                "index": j, "message": message, "finish_reason": finish,
                "stop_reason": out.stop_reason,
                "logprobs": (None if out.logprobs is None
                             else chat_logprobs(vocab, out.logprobs, out.token_texts, by_id)),
                **({"token_ids": list(out.token_ids)} if req.return_token_ids else {}),
            })
        # vLLM's return_token_ids: the prompt's ids once, beside the choices
        prompt_ids = {"prompt_token_ids": ids} if req.return_token_ids else {}
        return json_response({**head, **prompt_ids, "choices": choices,
                              "usage": usage_of(len(ids), sum(o.completion_tokens for o in outs),
                                                outs[0].cached_tokens, thought_tokens),
                              **prompt_scores(outs[0])})

    done_tokens = [0] * req.n
    # each choice's prompt cache hit, None until its first delta: known before any chunk
    # goes out (the role chunks count it too)
    cached_tokens: list[int | None] = [None] * req.n
    opened = [False]  # whether the choices' role chunks have gone out (open_choices)
    # whether each later chunk carries content: all do without a parser (open_choices), else
    # from the first text on
    said = [False] * req.n
    # each choice's content as the tool parser was fed it, read again at the end
    # (stopped_in_call), as /v1/responses' stream keeps it
    fed: list[list[str]] = [[] for _ in range(req.n)]
    # vLLM's return_token_ids: the prompt's ids in the stream's first chunk
    prompt_ids = {"prompt_token_ids": ids} if req.return_token_ids else {}

    calls = [plan.stream_calls() for _ in params]
    splits = [splitter() for _ in params]
    # each choice's reasoning tokens so far (None: no split)
    thought_counts = [None if s is None else reasoning.ReasoningTokens(s) for s in splits]

    def usage() -> dict:
        # choice 0's hit, as the whole answer counts it; before its first delta, another's
        known = next((c for c in cached_tokens if c is not None), 0)
        thought = sum(c.count for c in thought_counts if c) if thinking else None
        return usage_of(len(ids), sum(done_tokens), known, thought)

    def choice_usage(j: int) -> dict:
        """Choice j's usage so far, as a chunk of it counts it (continuous_usage_stats): the
        prompt's tokens and hit, its own completion (and reasoning) tokens."""
        known = next((c for c in cached_tokens if c is not None), 0)
        thought = (thought_counts[j].count if thought_counts[j] else 0) if thinking else None
        return usage_of(len(ids), done_tokens[j], known, thought)

    def render(item: tuple[int, Delta]) -> bytes:
        j, d = item
        cached_tokens[j] = d.cached_tokens
        roles = b"" if opened[0] else open_choices()
        text, finish = d.text, d.finish_reason
        found, thought = [], ""
        if splits[j] is not None:  # the tool parser sees the content only
            thought, text = splits[j].feed(text)
            if finish is not None:
                r, c = splits[j].finish()
                thought, text = thought + r, text + c
            thought_counts[j].add(d.token_texts)
        frags = []
        if calls[j] is not None:
            fed[j].append(text)
            text = calls[j].feed(text)
            if finish is not None:
                rest, found = calls[j].finish(cut=may_cut_a_call(finish),
                                              length=finish == "length")
                text += rest
                finish = finish_with_calls(finish, found, named, bool(found) and (
                    plan.stopped_in_call("".join(fed[j]), finish, found)))
            frags = [f.as_openai() for f in calls[j].take()]
        delta: dict = {}
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
        logprobs = None if d.logprobs is None else chat_logprobs(vocab, d.logprobs,
                                                                     d.token_texts, by_id)
        # return_token_ids: every id, also of text the parsers hold back
        generated = {"token_ids": list(d.token_ids)} if req.return_token_ids else {}
        counts = {**prompt_scores(d), **chunk_usage(req, partial(choice_usage, j))}
        # a "" content alone (content begun, by an echo too) says nothing either
        if not (frags or any(delta.values()) or generated.get("token_ids")) and (
                finish is None and logprobs is None and "prompt_logprobs" not in counts):
            return roles  # text the parsers hold back: OpenAI sends no chunk for it
        # the finish's chunk says which stop ended it (vLLM's stop_reason: the others lack it)
        ended = {} if finish is None else {"stop_reason": d.stop_reason}
        if not frags:
            return roles + sse.event({**head, "choices": [{
                "index": j, "delta": delta, "finish_reason": finish, **ended,
                "logprobs": logprobs, **generated}], **counts})
        # the calls' fragments, one chunk for each group with one fragment a call (a name
        # before its arguments), then a chunk of their own for the finish, as OpenAI sends
        # them (the SDK's stream helper ends a call, arguments.done, only once it has seen it)
        events = []
        for group in _by_call(frags):
            events.append(sse.event({**head, "choices": [{
                "index": j, "delta": {**delta, "tool_calls": group}, "finish_reason": None,
                "logprobs": logprobs, **generated}], **counts}))
            delta = {"content": ""} if said[j] else {}
            logprobs, generated, counts = None, {}, chunk_usage(req, partial(choice_usage, j))
        if finish is not None:
            events.append(sse.event({**head, "choices": [{
                "index": j, "delta": {"content": ""} if said[j] else {},
                "finish_reason": finish, **ended, "logprobs": None}], **counts}))
        return roles + b"".join(events)

    def open_choices() -> bytes:
        """Each choice's first chunk, the role alone, all in index order before any token,
        as vLLM and OpenAI open a stream. The openai SDK's stream helper needs that order:
        a choice first seen out of it (its first token held back, an incomplete character)
        crashed it (IndexError) or was filed under another index, and a first chunk of a
        choice past 0 that carries logprobs has them counted twice. Its content is "", as
        vLLM's always is, tools and reasoning parser or not (OpenAI's is null before a
        call): a client that joins the stream's content has "" where the whole answer of
        calls or reasoning alone has null, as from vLLM. Without a parser every later chunk
        carries content too (simple clients join delta["content"]). Then vLLM's echo, if
        any: one chunk a choice, in index order. Each counts its choice's usage (none of
        its tokens yet) where continuous_usage_stats asks for it."""
        opened[0] = True
        events = []
        for k in range(req.n):
            said[k] = calls[k] is None and splits[k] is None
            events.append(sse.event({**head, **(prompt_ids if k == 0 else {}), "choices": [{
                "index": k, "delta": {"role": role, "content": ""},
                "finish_reason": None, "logprobs": None}],
                **chunk_usage(req, partial(choice_usage, k))}))
        for k in range(req.n) if echo else ():  # vLLM's echo: a chunk of its own, each
            said[k] = True
            events.append(sse.event({**head, "choices": [{
                "index": k, "delta": {"content": echo}, "finish_reason": None,
                "logprobs": None}], **chunk_usage(req, partial(choice_usage, k))}))
        return b"".join(events)

    def tail() -> bytes:
        last = sse.event({**head, "choices": [], "usage": usage()}) if req.include_usage else b""
        return last + sse.DONE

    starts = [partial(engine.stream, ids, sp, cache_salt=req.cache_salt, group=group)
              for sp in params]
    return await sse.send(request, merge(starts), render, tail)


def _by_call(frags: list[dict]) -> list[list[dict]]:
    """The fragments in order, split before any that names a call already in its group:
    a chunk's delta.tool_calls holds one fragment a call."""
    groups: list[list[dict]] = [[]]
    for f in frags:
        if any(g["index"] == f["index"] for g in groups[-1]):
            groups.append([])
        groups[-1].append(f)
    return groups
