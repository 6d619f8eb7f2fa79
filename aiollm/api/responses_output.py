"""The objects of a /v1/responses answer, as the openai SDK's types name their fields
(openai/types/responses): the Response (`ResponseHead.response`), its output items (a
reasoning item, the assistant message with its output_text, a function_call per call) and
its usage.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from aiollm.api.openai_hints import SERVED_TIER
from aiollm.api.responses_request import ResponsesRequest
from aiollm.api.tool_calls import ToolCall
from aiollm.sampling_params import SamplingParams


def item_id(prefix: str) -> str:
    """A fresh output item id: msg_, fc_ or rs_ and 32 hex digits, as OpenAI's look."""
    return f"{prefix}_{uuid.uuid4().hex}"


def status_of(finish_reason: str | None, in_call: bool = False
              ) -> tuple[str, dict | None]:
    """(status, incomplete_details) of a response whose output ended with `finish_reason`:
    the length limit (max_output_tokens, or the context's end) leaves it incomplete; so does
    a stop (a stop string, a stop token id) that fell inside a call (`in_call`:
    ChatPlan.stopped_in_call), whose item then says "incomplete" too, or which was cut
    before its name and is no item: a Response "completed" around a call whose arguments
    are cut reads as one to run, and one without the call it was writing as the model's
    final answer. OpenAI's reasons name no stop string (its API has none): the reason is
    null there, as chat's finish_reason stays "stop" (not "tool_calls") for such a call."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if in_call:
        return "incomplete", {"reason": None}
    return "completed", None


def output_text(text: str, logprobs: list[dict] | None = None) -> dict:
    """A message's output_text content part (no annotations); `logprobs`: its tokens'
    (chat's entries: token, logprob, bytes, top_logprobs), none where not asked."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(id_: str, text: str | None, status: str,
                 logprobs: list[dict] | None = None) -> dict:
    """The assistant's message; `text` None: not begun (no content parts yet)."""
    content = [] if text is None else [output_text(text, logprobs)]
    return {"id": id_, "type": "message", "role": "assistant", "status": status,
            "content": content}


def reasoning_item(id_: str, text: str | None, status: str) -> dict:
    """The model's reasoning (a reasoning parser split it off), as reasoning_text content."""
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"id": id_, "type": "reasoning", "summary": [], "content": content,
            "status": status}


def call_item(id_: str, call: ToolCall, arguments: str, status: str) -> dict:
    """A function call; the client answers it with a function_call_output of its call_id."""
    return {"id": id_, "type": "function_call", "call_id": call.id, "name": call.name,
            "arguments": arguments, "status": status}


def answer_items(thought: str | None, content: str, calls: list[ToolCall], before: str,
                 status: str, reasoning: str = "completed") -> list[dict]:
    """A whole Response's output items, as its stream sends them: the reasoning (in
    `reasoning`'s status), the message of the text a stream sends `before` the calls (all
    the `content` without calls), the calls, then a message of the content after them (the
    stream held it back until the end). The last message has the response's `status`; an
    answer of nothing is an empty message."""
    output = [reasoning_item(item_id("rs"), thought, reasoning)] if thought else []
    if not content.startswith(before):
        before = content
    if before or not (calls or thought):
        output.append(message_item(item_id("msg"), before, "completed" if calls else status))
    output += [call_item(item_id("fc"), c, c.arguments,
                         "completed" if c.complete else "incomplete") for c in calls]
    if content[len(before):]:
        output.append(message_item(item_id("msg"), content[len(before):], status))
    return output


def usage_of(input_tokens: int, output_tokens: int, cached_tokens: int,
             reasoning_tokens: int = 0) -> dict:
    """The Response's usage. reasoning_tokens: the output tokens of the reasoning a reasoning
    parser split off (reasoning.ReasoningTokens), 0 without one. cache_write_tokens, a
    required field of the SDK's InputTokensDetails type (openai 3.60), is 0: OpenAI counts
    there the input written to a cache kept at a price; the prefix cache keeps every
    prompt's KV for free, and its hits are counted in cached_tokens."""
    details = {"cached_tokens": cached_tokens, "cache_write_tokens": 0}
    return {"input_tokens": input_tokens, "input_tokens_details": details,
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens}


def reasoning_status(status: str, cut_inside: bool) -> str:
    """The reasoning item's status in a Response of `status`: incomplete where the output
    was cut (max_output_tokens) while still inside the reasoning (`cut_inside`), as OpenAI
    marks it; else completed."""
    return "incomplete" if status == "incomplete" and cut_inside else "completed"


@dataclass(slots=True)
class ResponseHead:
    """What every Response of one request repeats: its id, creation time, and the
    request's settings echoed (the sampling values the engine used where it chose them),
    whether it is kept (`store`: the request asked and the server keeps responses).

    The id is the server's own, fresh for each response (resp_ and a uuid4's 32 hex
    digits, as vLLM makes one where the client sets no request_id; OpenAI's are longer,
    and clients take ids as opaque strings), never the request's X-Request-Id or body
    request_id (vLLM takes the latter as the id): it is the key of a kept
    response, so one a client chose (again, or another client's) replaced a kept response
    of the same id, and a trace id made a conversation readable by whoever saw it. The
    request id goes on in the X-Request-Id header."""

    req: ResponsesRequest
    model: str
    params: SamplingParams
    store: bool = False
    created_at: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: item_id("resp"))

    def response(self, status: str, output: list[dict], usage: dict | None = None,
                 incomplete: dict | None = None, error: dict | None = None) -> dict:
        """The Response object: `status` (in_progress, completed, incomplete, failed), its
        `output` items, `usage` (None until it ends), incomplete_details and the `error`
        ({code, message}) of a failed one."""
        r = self.req
        fmt = (r.text or {}).get("format") or {"type": "text"}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": incomplete, "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens, "max_tool_calls": r.max_tool_calls,
            "metadata": r.metadata, "model": self.model, "output": output,
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "previous_response_id": r.previous_response_id,
            # OpenAI's Response carries these as the request gave them (its
            # CreateModelResponseProperties); they change nothing here
            "prompt_cache_key": r.prompt_cache_key, "safety_identifier": r.safety_identifier,
            "prompt_cache_retention": r.prompt_cache_retention,
            "prompt_cache_options": r.prompt_cache_options,
            "reasoning": r.reasoning,
            # the tier that served it, not the one asked for (as OpenAI reports it)
            "service_tier": SERVED_TIER, "store": self.store,
            "temperature": self.params.temperature, "text": {**(r.text or {}), "format": fmt},
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "tools": r.tools or [], "top_logprobs": r.top_logprobs or 0,
            "top_p": self.params.top_p, "truncation": r.truncation or "disabled",
            "usage": usage, "user": r.user,
        }
