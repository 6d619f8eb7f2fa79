"""/v1/responses: OpenAI's Responses API, as vLLM serves it. A request is turned into the
chat request it stands for (responses_request.py) and planned as a chat completion is
(chat_plan.py): the same prompt, sampling, structured output and tools. Its output is read
as chat reads it (the reasoning split off, the calls parsed) and answered as a Response
(responses_output.py), whole or as typed events (responses_stream.py).

A response asked to be stored (store true, the default) is kept once it has ended
(response_store.py), with the conversation it answered, for a later request's
previous_response_id and for the routes by id (stored_responses.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from aiohttp import web

from aiollm.api import reasoning, sse, stored_responses
from aiollm.api.body import decode_body
from aiollm.api.chat_logprobs import chat_logprobs
from aiollm.api.chat_plan import ChatPlan, plan_chat
from aiollm.api.choices import gather_outputs, merge
from aiollm.api.cut_calls import may_cut_a_call
from aiollm.api.http_errors import ApiError, context_told, param_names
from aiollm.api.protocol import json_response
from aiollm.api.request_id import request_id
from aiollm.api.response_input import input_weight
from aiollm.api.response_items import input_items
from aiollm.api.responses_output import (ResponseHead, answer_items, reasoning_status,
                                         status_of, usage_of)
from aiollm.api.responses_request import OUTPUT_LOGPROBS, ResponsesRequest, responses_names
from aiollm.api.responses_stream import ResponseEvents
from aiollm.api.state import state
from aiollm.api.stored_responses import kept, referenced
from aiollm.api.token_bytes import TokenBytes
from aiollm.engine.request_group import choice_group
from aiollm.engine.submission import off_loop


async def create_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses."""
    req = await decode_body(request, ResponsesRequest)
    request_id(request, req.request_id)  # errors too carry it from here
    req.check_chat_fields()
    with responses_names(), param_names({"prompt": "input"}), context_told(*_naming(req)):
        return await _create(request, req)


def _naming(req: ResponsesRequest) -> tuple[str, str, str]:
    """How a prompt past the context is told (http_errors.context_told): a continued
    conversation as a whole, the kept turns with the input (the input alone may be short)."""
    if req.previous_response_id is None:
        return ("the input (as the chat template renders it) has", "the input",
                "shorten the input, or serve the model with a larger --max-model-len where "
                "it allows one")
    return ("the conversation (previous_response_id's items, then the input, as the chat "
            "template renders it; send the input without previous_response_id to start a "
            "new one) has", "the conversation",
            "start a new conversation (without previous_response_id), shorten the input, or "
            "serve the model with a larger --max-model-len where it allows one")


async def _create(request: web.Request, req: ResponsesRequest) -> web.StreamResponse:
    st = state(request)
    req.check_unserved()
    earlier = [] if req.previous_response_id is None else kept(
        st, req.previous_response_id, "previous_response_id").conversation()
    req.input, named = referenced(req.input, st, earlier)  # item_reference: the kept items
    # the input's items turned into messages, and kept, off the event loop when they (or
    # their parts) are many (as chat's messages are checked: chat_request.message_dicts)
    size = input_weight(req.input, earlier)
    plan = await plan_chat(st, await off_loop(size, req.as_chat, earlier))
    vocab = None
    if plan.logprobs is not None:
        if plan.parser is not None or plan.thinking:
            # the tokens would be split among reasoning, messages and calls
            raise ApiError(400, f'include "{OUTPUT_LOGPROBS}" is served for an answer of '
                           'text alone: not with tools (leave them out, or send tool_choice '
                           '"none") nor under a server\'s --reasoning-parser', param="include")
        vocab = await st.token_bytes()
    store = req.store is not False and st.responses.keeps
    head = ResponseHead(req, st.model_name, plan.params[0], store)
    # kept with the response: the conversation it answers, each item with an id
    items = ([*earlier, *await off_loop(size, input_items, req.input, earlier, named)]
             if store else None)

    def keep(response: dict) -> None:
        """Keeps `response` where it says store (items are then the conversation's); one
        not kept (larger than the byte bound alone) says store false, as GET (a 404) does."""
        if response["store"] and not st.responses.put(response, items):
            response["store"] = False

    if req.stream:
        return await _stream(request, req, plan, head, keep, vocab)
    group = choice_group(1)
    [out] = await gather_outputs([st.engine.generate(plan.ids, plan.params[0],
                                                     cache_salt=req.cache_salt, group=group)])
    text, thought, thought_tokens, cut_inside = out.text, None, 0, False
    if plan.thinking:
        splitter = plan.splitter()
        thought, text = reasoning.split(splitter, out.text)
        thought_tokens = reasoning.reasoning_tokens(splitter, out.token_texts)
        cut_inside = splitter.in_reasoning
    content, calls = plan.calls(text, cut=may_cut_a_call(out.finish_reason),
                                length=out.finish_reason == "length")
    status, incomplete = status_of(out.finish_reason,
                                   plan.stopped_in_call(text, out.finish_reason, calls))
    # a stream sends the text before the calls as it comes: what one fed it all sends
    before = plan.stream_calls().feed(text) if calls else content
    output = answer_items(thought, content, calls, before, status,
                          reasoning_status(status, cut_inside))
    if vocab is not None and out.logprobs is not None:  # an answer of one message
        output[0]["content"][0]["logprobs"] = chat_logprobs(
            vocab, out.logprobs, out.token_texts, st.return_tokens_as_token_ids)["content"]
    usage = usage_of(len(plan.ids), out.completion_tokens, out.cached_tokens, thought_tokens)
    response = head.response(status, output, usage, incomplete)
    keep(response)
    return json_response(response)


async def _stream(request: web.Request, req: ResponsesRequest, plan: ChatPlan,
                  head: ResponseHead, keep: Callable[[dict], None],
                  vocab: TokenBytes | None) -> web.StreamResponse:
    """The response as typed events; vocab: the tokens' bytes where logprobs are asked."""
    events = ResponseEvents(head)
    by_id = state(request).return_tokens_as_token_ids
    splitter, calls = plan.splitter(), plan.stream_calls()
    thought_tokens = None if splitter is None else reasoning.ReasoningTokens(splitter)
    said: list[str] = []  # the content's deltas, read again at the end (stopped_in_call)

    def render(item: tuple) -> bytes:
        out = _render(item)
        events.commit()  # sse.send writes what a render returns
        return out

    def _render(item: tuple) -> bytes:
        _, d = item
        out = b"" if events.seq else events.begin()
        text, finish = d.text, d.finish_reason
        if vocab is not None and d.logprobs:
            events.add_logprobs(chat_logprobs(vocab, d.logprobs, d.token_texts, by_id)["content"])
        thought = ""
        if splitter is not None:
            thought, text = splitter.feed(text)
            if finish is not None:
                r, c = splitter.finish()
                thought, text = thought + r, text + c
            thought_tokens.add(d.token_texts)
        if calls is not None:
            said.append(text)
        out += events.output_delta(thought, text, calls, finish)
        if finish is None:
            return out
        status, incomplete = status_of(finish, calls is not None and plan.stopped_in_call(
            "".join(said), finish, calls.calls))
        usage = usage_of(len(plan.ids), d.completion_tokens, d.cached_tokens,
                         thought_tokens.count if thought_tokens else 0)
        cut_inside = splitter is not None and splitter.in_reasoning
        # kept as it ends, before response.completed is written (which says whether it
        # was): a client that reads it may ask for the response at once
        return out + events.finish(status, incomplete, usage,
                                   reasoning_status(status, cut_inside), keep)

    start = partial(state(request).engine.stream, plan.ids, plan.params[0],
                    cache_salt=req.cache_salt, group=choice_group(1))
    # no [DONE]: response.completed ends a Responses stream, as OpenAI's
    return await sse.send(request, merge([start]), render, lambda: b"", on_error=events.failed)


# OpenAI's routes under /v1/responses/ that the server does not serve, and what to use instead
_UNSERVED = {
    "input_tokens": ("OpenAI's count of a request's input tokens", "POST /tokenize with the "
                     "messages (and tools) counts the tokens of their prompt"),
    "compact": ("OpenAI's compaction of a conversation", "send the turns to keep as input "
                "items, or continue a kept response with previous_response_id"),
}


async def unserved(request: web.Request) -> web.Response:
    """POST /v1/responses/input_tokens and /v1/responses/compact (the openai client's
    responses.input_tokens.count and responses.compact): a 404 that names the route and
    says what serves the need, where the path's match of /v1/responses/{response_id} (GET
    and DELETE) made it a 405 whose Allow suggested a GET of a response of that id."""
    name = request.path.rstrip("/").rsplit("/", 1)[-1]
    what, instead = _UNSERVED[name]
    raise ApiError(404, f"POST /v1/responses/{name} ({what}) is not served: {instead}")


ROUTES = [web.post("/v1/responses", create_response),
          *(web.post(f"/v1/responses/{name}", unserved) for name in _UNSERVED),
          *stored_responses.ROUTES]
