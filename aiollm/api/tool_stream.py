"""Tool calls in a stream of text deltas, for /v1/chat/completions and /v1/responses with
stream true: the content sent as it comes, each call sent as it is written (`CallDelta`s:
its name once written, then its arguments as they arrive), and the calls read
(ToolParser.calls) once the output ends.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from aiollm.api.call_text import OpenValue, Written, written_calls
from aiollm.api.call_wrap import OUTSIDE
from aiollm.api.tool_calls import ToolCall, ToolParser
from aiollm.api.tools_or_format import opens_calls


@dataclass(slots=True)
class CallDelta:
    """One fragment of a streamed call: the first of a call has its `id` and `name` (and
    arguments ""), the next ones the arguments' next characters."""

    index: int  # the call's place among the output's calls
    arguments: str
    id: str | None = None
    name: str | None = None

    def as_openai(self) -> dict:
        """The fragment as an entry of a chat chunk's delta.tool_calls."""
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


class StreamingToolParser:
    """Splits a stream of text deltas into content and calls: text from the call marker on
    is held back from content. A call is sent once its name is written
    (call_text.written_calls: never a part of a name), its arguments as they are written, as
    vLLM and SGLang stream them; what is sent is never taken back, and the whole answer
    keeps it (ToolParser.calls), so the fragments join to the whole answer's calls. Calls
    joined to the first as the format joins them go out as written; calls after text (a
    Hermes block, or a Llama 3 call, after words) go out at the end, read with the rest."""

    def __init__(self, parser: ToolParser, names: Collection[str], *, required: bool = False,
                 named: str | None = None, formatted: bool = False):
        self.parser = parser
        self.names = names
        self.required = required  # the output can only be calls (ToolParser.calls)
        self.named = named  # the function tool_choice named (ToolParser.calls)
        # "auto" beside a content format: text before any call makes the output that
        # format's content, sent as it comes and never read for calls (`plain` from then)
        self.formatted = formatted
        self.plain = False
        self.held = ""  # from the first character not sent (but `blank`)
        # before any call, the whitespace held before `held` (a call may follow it): kept
        # apart, so that a delta does not read it again (a model writing newlines)
        self.blank: list[str] = []
        self.fences = OUTSIDE  # the code blocks of the text sent (call_wrap.Fences)
        self.lead = OUTSIDE  # those of the text sent and `blank`: of the text before held
        self.calling = False
        self.calls: list[ToolCall] = []
        self.sent: list[ToolCall] = []  # the calls sent, with the arguments sent so far
        self.ids: set[str] = set()  # the ids of the calls sent
        self.deltas: list[CallDelta] = []  # the fragments not yet taken
        self.resume = -1  # where written_calls reads on (after the last complete call)
        self.open: OpenValue | None = None  # the last call's arguments, while still open
        self.seen = 0  # no head that leads on starts before it (written_calls)
        self.head_len = max((parser.heads.size(n) for n in names), default=0)

    def feed(self, text: str) -> str:
        """The content that can be sent now: the text before the calls' first opening
        (ToolParser.content_end: never a trailing whitespace, nor a part of an opening, until
        more text comes). The calls' fragments this text completes wait in take()."""
        if self.plain:
            return text
        if self.calling:
            self.held += text
            self._written(text)
            return ""
        # `held` never starts with whitespace: no opening does, so content_end reads the
        # same of it as of the blank before it and it (ToolParser.content_end)
        rest = self._blank(self.held + text)
        if self.formatted and opens_calls(self.parser, rest) is False:
            # the format's content: all of it, as it comes
            self.plain, self.held = True, ""
            out, self.blank = "".join(self.blank) + rest, []
            return out
        at = self.parser.opening(rest, 0, self.lead)
        self.calling = at >= 0
        end = self.parser.content_end(rest, self.lead, at)
        out, held = rest[:end], rest[end:]
        if out:
            self.fences = self.lead = self.lead.after(out, end)
            out, self.blank = "".join(self.blank) + out, []
        if self.calling:
            self.held, self.blank = "".join(self.blank) + held, []
            self.resume = self.held.find(self.parser.start)
            self._written(self.held)
            return out
        self.held = self._blank(held)
        return out

    def _blank(self, held: str) -> str:
        """`held` without the whitespace it starts with, which goes to `blank` (and `lead`,
        the code blocks before what is held)."""
        rest = held.lstrip()
        if len(rest) < len(held):
            self.blank.append(held[:len(held) - len(rest)])
            self.lead = self.lead.after(held, len(held) - len(rest))
        return rest

    def take(self) -> list[CallDelta]:
        """The calls' fragments since the last take, in order."""
        out, self.deltas = self.deltas, []
        return out

    def finish(self, *, cut: bool = False, length: bool = False
               ) -> tuple[str, list[ToolCall]]:
        """At the end of the output: (content still held, the calls, with the ids their
        fragments had). The content sent and this join to the whole answer's content
        (ToolParser.calls of all the text, `cut` and `length` as it takes them); the calls'
        last fragments wait in take()."""
        if self.plain:
            return "", []
        sent = [Written(c.name, c.arguments, c.complete, c.id) for c in self.sent]
        self.held, self.blank = "".join(self.blank) + self.held, []
        content, self.calls = self.parser.calls(self.held, self.names, cut=cut, length=length,
                                                required=self.required, named=self.named,
                                                sent=sent, fences=self.fences)
        self._send(self.calls)
        for call, sent_call in zip(self.calls, self.sent):
            call.id = sent_call.id
        self.held = ""
        return content, self.calls

    def _written(self, text: str) -> None:
        """Sends what the held text, `text` its newest part, adds to the calls written."""
        if self.resume < 0:  # an opening before the first call's `start` (<|python_tag|>)
            start = self.parser.start
            self.resume = self.held.find(start, max(0, len(self.held) - len(text) - len(start)))
            if self.resume < 0:
                return
        last = self.sent[-1] if self.sent else None
        if self.open is not None and text and self.open.extend(text):
            # the last call's arguments, an object or array, are still open: all the text
            # after their start (call_text.value_text), so the new text is theirs, without
            # reading the whole value again
            last.arguments += text
            self.deltas.append(CallDelta(len(self.sent) - 1, text))
            return
        self.open = None
        # the calls read before `resume` are complete and sent: only those after it are
        # read and compared again (a delta's work does not grow with the calls sent)
        done = len(self.sent) - (last is not None and not last.complete)
        more, self.resume = written_calls(self.held, self.resume, self.names,
                                          self.parser.heads, self.parser.joints,
                                          after_call=done > 0, seen=self.seen)
        if not more or more[-1].complete:
            # reading stopped where no head leads on: one can only start in the text to
            # come, so the next delta does not search the text after the calls again
            self.seen = len(self.held) - self.head_len + 1
        self._send([ToolCall(c.name, c.arguments, c.id, c.complete) for c in more], done)
        last = self.sent[-1] if self.sent else None
        if last is not None and not last.complete and last.arguments[:1] in ("{", "["):
            self.open = OpenValue()
            if not self.open.extend(last.arguments):  # not JSON that a delta can extend
                self.open = None

    def _send(self, calls: list[ToolCall], first: int = 0) -> None:
        """Fragments that bring the calls sent from index `first` on up to `calls`, which
        extend them. Raises TakenBack where they do not: a fragment sent cannot be taken
        back, and the answer would no longer join to what the client has."""
        for i, call in enumerate(calls, first):
            if i == len(self.sent):
                # the id the model wrote in the call's head (Heads.call_id), else ours (and
                # where an earlier call has it: each call its own, as ToolParser.calls)
                fresh = call.id and call.id not in self.ids
                cid = call.id if fresh else self.parser.call_id()
                self.sent.append(ToolCall(call.name, "", cid))
                self.ids.add(self.sent[i].id)
                self.deltas.append(CallDelta(i, "", self.sent[i].id, call.name))
            sent = self.sent[i]
            if call.name != sent.name or not call.arguments.startswith(sent.arguments):
                raise TakenBack(
                    f"the {self.parser.name} tool-call stream read call {i} as "
                    f"{call.name!r} ({len(call.arguments)} characters of arguments) after "
                    f"sending {sent.name!r} ({len(sent.arguments)} characters), which it "
                    f"does not extend")
            if len(call.arguments) > len(sent.arguments):
                self.deltas.append(CallDelta(i, call.arguments[len(sent.arguments):]))
                sent.arguments = call.arguments
            sent.complete = call.complete


class TakenBack(RuntimeError):
    """An internal error: the calls read from a stream's output no longer extend the calls
    it has sent (a parser's bug). The stream ends with a 500 error event, the log names the
    calls; it never sends fragments that would not join to the answer."""
