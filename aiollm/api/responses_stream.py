"""The event stream of /v1/responses with stream true (`ResponseEvents`): the typed SSE
events the openai SDK's stream parser takes, each with its `type` and a `sequence_number`
counting from 0, in OpenAI's order:

    response.created, response.in_progress,
    [reasoning item: output_item.added, content_part.added, reasoning_text.delta...,
     reasoning_text.done, content_part.done, output_item.done]
    [message item: output_item.added, content_part.added, output_text.delta...,
     output_text.done, content_part.done, output_item.done]
    [per call, as it is written: output_item.added once its name is, then
     function_call_arguments.delta as its arguments come, ..._arguments.done,
     output_item.done]
    [message item of the text after the calls, if any]
    response.completed

Where the text's logprobs are asked, each output_text.delta carries those of its tokens
(tokens whose text is held back wait for the next; an end token's come in a last "" delta),
and output_text.done, the item and the last Response all of them.

Each item's status is in output_item.done: a message ends in the Response's status, the
reasoning "completed" unless the output was cut (max_output_tokens) inside it, then
"incomplete", as OpenAI marks it (responses_output.reasoning_status).

The last event is response.completed also for an incomplete response (its status says
so), as vLLM sends it: the SDK's stream helper (get_final_response) takes no other end.
response.created says `store` as asked; the last event says whether the response was kept
(one larger than the store's byte bound alone, known only at its end, is not).
A request that fails after the stream began ends instead with OpenAI's `error` event and
then response.failed (the Response in status "failed", its `error` set), as OpenAI ends a
failed stream; numbering goes on from the last event sent, so that it has no gap.
"""

from __future__ import annotations

from collections.abc import Callable

from aiollm.api import sse
from aiollm.api.cut_calls import may_cut_a_call
from aiollm.api.http_errors import ApiError
from aiollm.api.responses_output import (ResponseHead, call_item, item_id, message_item,
                                         output_text, reasoning_item)
from aiollm.api.tool_calls import ToolCall
from aiollm.api.tool_stream import CallDelta, StreamingToolParser


class ResponseEvents:
    """Renders one response's events; the open item (reasoning, the message, a function
    call) is closed when the next item begins or the response ends."""

    def __init__(self, head: ResponseHead):
        self.head = head
        self.seq = 0
        self.output: list[dict] = []  # the finished items, in order
        # the open item's kind: "reasoning" | "message" | "function_call"
        self.kind: str | None = None
        self.id = ""  # the open item's id
        self.text = ""  # the open item's text (a call's arguments) so far
        self.call: ToolCall | None = None  # the open function call (its call_id and name)
        self.call_index = 0  # the open call's place among the output's calls
        # the message text's logprobs (where asked): those sent, those of tokens whose
        # text is not sent yet (the next output_text.delta carries them)
        self.logprobs: list[dict] = []
        self.pending: list[dict] = []
        # (seq, items, kind, id, text, call, logprobs, how many of them) at commit(): the
        # open message's logprobs list is only added to until it closes (then a new one)
        self.sent: tuple = (0, 0, None, "", "", None, self.logprobs, 0)

    def event(self, type_: str, **fields: object) -> bytes:
        """One SSE event of type `type_` with the next sequence_number."""
        data = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse.event(data, prefix=f"event: {type_}\ndata: ".encode())

    def begin(self) -> bytes:
        """response.created and response.in_progress, each with the empty Response."""
        snapshot = self.head.response("in_progress", [])
        return (self.event("response.created", response=snapshot)
                + self.event("response.in_progress", response=snapshot))

    def reasoning(self, text: str) -> bytes:
        """Reasoning text: opens the reasoning item if needed."""
        return self._delta("reasoning", text) if text else b""

    def content(self, text: str) -> bytes:
        """Message text: closes the reasoning, opens the message if needed."""
        return self._delta("message", text) if text else b""

    def output_delta(self, thought: str, text: str, calls: StreamingToolParser | None,
                     finish_reason: str | None) -> bytes:
        """The events of one delta of the output: its reasoning, its content (`calls`, the
        tool parser, holds back call text) and the calls' fragments. At the output's end
        (`finish_reason` set) the open call is closed and the content the parser held after
        the calls follows, a message of its own."""
        found, frags, rest = [], [], ""
        if calls is not None:
            text = calls.feed(text)
            if finish_reason is not None:
                rest, found = calls.finish(cut=may_cut_a_call(finish_reason),
                                           length=finish_reason == "length")
            frags = calls.take()
        out = self.reasoning(thought) + self.content(text)
        out += b"".join(self.call_fragment(f) for f in frags)
        if finish_reason is not None:
            out += self.end_call(found) + self.content(rest)
        return out

    def add_logprobs(self, entries: list[dict]) -> None:
        """The logprobs of a delta's tokens (chat's entries), for the next text delta."""
        self.pending += entries

    def call_fragment(self, delta: CallDelta) -> bytes:
        """A call's fragment: its first (the name) closes the open item and opens the
        function_call item, the next ones are its arguments' deltas."""
        out = b""
        if delta.name is not None:
            out = self._close("completed")  # a call opens after the one before is complete
            self.kind, self.id, self.text = "function_call", item_id("fc"), ""
            self.call, self.call_index = ToolCall(delta.name, "", delta.id), delta.index
            out += self.event("response.output_item.added", output_index=len(self.output),
                              item=call_item(self.id, self.call, "", "in_progress"))
        if delta.arguments:
            self.text += delta.arguments
            out += self.event("response.function_call_arguments.delta", item_id=self.id,
                              output_index=len(self.output), delta=delta.arguments)
        return out

    def end_call(self, calls: list[ToolCall]) -> bytes:
        """At the output's end: the open call closed, incomplete where `calls` (the
        output's calls) say it was cut."""
        if self.kind != "function_call":
            return b""
        return self._close("completed" if calls[self.call_index].complete else "incomplete")

    def _delta(self, kind: str, text: str) -> bytes:
        out = b""
        if self.kind != kind:
            out = self._close("completed") + self._open(kind)
        self.text += text
        delta = ("response.output_text.delta" if kind == "message"
                 else "response.reasoning_text.delta")
        extra = {}
        if kind == "message":
            extra["logprobs"], self.pending = self.pending, []
            self.logprobs += extra["logprobs"]
        return out + self.event(delta, item_id=self.id, output_index=len(self.output),
                                content_index=0, delta=text, **extra)

    def _open(self, kind: str) -> bytes:
        self.kind, self.text = kind, ""
        self.id = item_id("msg" if kind == "message" else "rs")
        make = message_item if kind == "message" else reasoning_item
        part = output_text("") if kind == "message" else {"type": "reasoning_text", "text": ""}
        where = {"item_id": self.id, "output_index": len(self.output), "content_index": 0}
        return (self.event("response.output_item.added", output_index=len(self.output),
                           item=make(self.id, None, "in_progress"))
                + self.event("response.content_part.added", **where, part=part))

    def _close(self, status: str) -> bytes:
        if self.kind is None:
            return b""
        if self.kind == "function_call":
            item = call_item(self.id, self.call, self.text, status)
            out = (self.event("response.function_call_arguments.done", item_id=self.id,
                              output_index=len(self.output), arguments=self.text)
                   + self.event("response.output_item.done", output_index=len(self.output),
                                item=item))
            self.output.append(item)
            self.kind = self.call = None
            return out
        where = {"item_id": self.id, "output_index": len(self.output), "content_index": 0}
        if self.kind == "message":
            lps, self.logprobs = self.logprobs, []  # the next message's are its own
            item = message_item(self.id, self.text, status, lps)
            part = output_text(self.text, lps)
            done = self.event("response.output_text.done", **where, text=self.text,
                              logprobs=lps)
        else:
            item = reasoning_item(self.id, self.text, status)
            part = item["content"][0]
            done = self.event("response.reasoning_text.done", **where, text=self.text)
        out = (done + self.event("response.content_part.done", **where, part=part)
               + self.event("response.output_item.done", output_index=len(self.output),
                            item=item))
        self.output.append(item)
        self.kind = None
        return out

    def finish(self, status: str, incomplete: dict | None, usage: dict,
               reasoning: str = "completed",
               keep: Callable[[dict], None] | None = None) -> bytes:
        """The open item closed (a message in the Response's `status`, the reasoning in
        `reasoning`'s), then response.completed. An output of neither text nor calls is an
        empty message, as the whole answer has it. `keep` (the store's) is given the
        Response before response.completed is rendered, so that a client reading it may
        ask for it at once; where it was not kept (larger than the store's byte bound
        alone, known only now), keep makes it say store false, as GET (a 404) and the
        whole answer do: response.created said true before the size was known."""
        # the logprobs of tokens of no text sent (an end token): a last delta carries them
        out = self._delta("message", "") if self.pending else b""
        if not self.output and self.kind is None:
            out += self._open("message")
        out += self._close(reasoning if self.kind == "reasoning" else status)
        final = self.head.response(status, list(self.output), usage, incomplete)
        if keep is None:  # nothing keeps it
            final["store"] = False
        else:
            keep(final)
        return out + self.event("response.completed", response=final)

    def commit(self) -> None:
        """Marks every event rendered so far as handed to the client: a failure undoes only
        what a render made after this (its events never went out)."""
        self.sent = (self.seq, len(self.output), self.kind, self.id, self.text, self.call,
                     self.logprobs, len(self.logprobs))

    def failed(self, err: ApiError) -> bytes:
        """The end of a stream whose request failed after the stream began: OpenAI's error
        event, then response.failed with the Response in status "failed", its output what
        was sent (an open item as incomplete) and its error {code, message}. Events
        rendered after the last commit() are dropped (numbering goes on from the last event
        sent); a stream that sent none yet begins first. The failed Response says store
        false: it is not kept."""
        self.seq, items, self.kind, self.id, self.text, self.call, lps, n = self.sent
        del self.output[items:]
        self.logprobs = lps[:n]
        out = b"" if self.seq else self.begin()
        # the Response's error code is one of OpenAI's few (the SDK's ResponseError)
        code = ("server_error" if err.status >= 500 else
                "rate_limit_exceeded" if err.status == 429 else "invalid_prompt")
        out += self.event("error", code=err.code or code, message=err.message,
                          param=err.param)
        output = list(self.output)
        if self.kind == "function_call":
            output.append(call_item(self.id, self.call, self.text, "incomplete"))
        elif self.kind == "message":  # with the logprobs its deltas carried
            output.append(message_item(self.id, self.text, "incomplete", self.logprobs))
        elif self.kind is not None:
            output.append(reasoning_item(self.id, self.text, "incomplete"))
        failed = self.head.response("failed", output,
                                    error={"code": code, "message": err.message})
        failed["store"] = False  # a failed response is not kept (a GET of it is a 404)
        return out + self.event("response.failed", response=failed)
