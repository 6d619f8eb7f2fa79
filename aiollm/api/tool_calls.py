"""A tool call (`ToolCall`) and what every model family's parser shares (`ToolParser`):
reading the calls of a whole output, the ones max_tokens or a stop cut included
(aiollm/api/cut_calls.py), and the xgrammar structural tag that enforces them. The families
themselves, and the choice among them, are in aiollm/api/tool_parsers.py; a stream's calls
are read in aiollm/api/tool_stream.py.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field

from aiollm.api.call_text import ID_PATTERN, Heads, Joints, Written, written_calls
from aiollm.api.call_wrap import (OUTSIDE, Fences, skip_space, wrap_before, wrap_part,
                                  without_wrap_end)
from aiollm.api.cut_calls import cut_calls
from aiollm.engine.grammar_check import grammar_schema
from aiollm.sampling_params import GrammarSpec


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the model wrote it (aiollm/api/call_text.py)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    complete: bool = True  # False: the output ended inside it (its arguments are cut)

    def as_openai(self) -> dict:
        """The call as a chat message's tool_calls entry (a stream sends it in fragments:
        aiollm/api/tool_stream.py)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


# an id a call's head wrote (Heads.call_id): the call's own; a call read without one has
# ToolCall's default ("call_...", never such an id) or "", and gets ours (call_id)
_MODEL_ID = re.compile(ID_PATTERN)


class ToolParser:
    """One family's call format. `start` opens a call in the text (the head a call's JSON
    begins with, or the marker before it); `opens`, the markups that open the calls (`start`,
    and Llama 3's <|python_tag|>): a stream sends the text before the first as content and
    holds the rest back; `separator` goes between the calls of a "required" output."""

    name = ""
    start = ""
    opens: tuple[str, ...] = ()  # none given: `start` alone
    words: tuple[str, ...] = ()  # the format's markup besides `start` (Hermes' end tag)
    separator = "\n"
    args_key = "arguments"  # a call's JSON: {"name": ..., "<args_key>": {...}}
    brackets = False  # a JSON list around calls is markup (call_wrap: bare JSON calls)
    # what closes a call after its arguments (the tool grammar's tag end, whitespace aside):
    # an output max_tokens cut whose last call stops short of it was cut in that call
    closing = re.compile(r"\s*\}")
    # what closes a call's JSON after its arguments: an output a stop (a stop string, kept in
    # the text by include_stop_str_in_output or not) ended before it ended inside that call,
    # its arguments whole or not; a stop may leave out only the markup after it (Hermes'
    # </tool_call>, a stop string the client named)
    json_end = closing
    # what leads from `start` to a call's head, and from one call's arguments to the next
    # (call_text.written_calls: where a stream may send a call)
    joints = Joints(re.compile(r"\s*"), re.compile(r"\s*\}\s*"))
    # markup besides `start` a tokenizer may hold as special tokens, which the text must
    # keep (decoded with skip_special_tokens false: aiollm/api/chat_plan.py)
    special: tuple[str, ...] = ()

    @property
    def heads(self) -> Heads:
        """How the format writes a call's head (call_text.Heads): JSON, with `args_key`."""
        return Heads(self.args_key)

    def parse(self, text: str, fences: Fences = OUTSIDE) -> tuple[str, list[ToolCall]]:
        """(the text outside calls, the calls); text that does not parse stays content. With
        calls, the content's trailing whitespace is dropped (what a model writes before a call
        or after the last), its leading kept: a stream has sent that before any call came.
        `fences`: the code blocks before the text (call_wrap.Fences)."""
        raise NotImplementedError

    def parse_tail(self, text: str, names: Collection[str] | None = None,
                   fences: Fences = OUTSIDE) -> tuple[str, list[ToolCall], int]:
        """parse(), and where in its content the text after the last call starts: a call
        max_tokens cut is read there only (cut_calls), as a whole answer reads what comes
        before as content and calls; 0 where the family does not tell (all its content).
        `names`, the request's functions: a family whose calls are plain JSON (Llama 3)
        reads one naming none of them as text; the others return it (calls() then makes
        the whole text content)."""
        content, calls = self.parse(text, fences)
        return content, calls, 0

    def opening(self, text: str, pos: int = 0, fences: Fences = OUTSIDE) -> int:
        """Where the first of `opens` is in text[pos:] (an index into `text`), or the
        opening of a wrapper (call_wrap: a code fence, a list) that leads to it; -1: none.
        `fences`: the code blocks before text[pos] (call_wrap.Fences)."""
        found = [i for i in (text.find(o, pos) for o in self.opens or (self.start,)) if i >= 0]
        at = min(found, default=-1)
        wrap = wrap_before(text, at, pos, self.brackets, fences) if at > pos else None
        return at if wrap is None else wrap.start

    def opening_part(self, text: str, fences: Fences = OUTSIDE) -> int:
        """The length of the longest end of `text` that begins one of `opens`, or a
        wrapper's opening that may lead to one (a stream holds it back: the next text
        may complete it); 0: none."""
        opens = self.opens or (self.start,)
        wrapped = wrap_part(text, opens, self.brackets, fences)
        for k in range(min(max(map(len, opens)) - 1, len(text)), wrapped, -1):
            if any(o.startswith(text[-k:]) for o in opens):
                return k
        return wrapped

    def content_end(self, text: str, fences: Fences = OUTSIDE, at: int | None = None) -> int:
        """Where the content a stream sends before any call ends: the first of `opens`, or
        the start of a part of one that ends the text; its trailing whitespace held too
        (parse drops it where calls follow). `at`: opening(text, 0, fences) where the
        caller has it already."""
        if at is None:
            at = self.opening(text, 0, fences)
        end = at if at >= 0 else len(text) - self.opening_part(text, fences)
        return len(text[:end].rstrip())

    def calls(self, text: str, names: Collection[str], *, cut: bool = False,
              length: bool = False, required: bool = False, named: str | None = None,
              sent: list[Written] | None = None, fences: Fences = OUTSIDE
              ) -> tuple[str, list[ToolCall]]:
        """parse(), where a call to a function not among `names` makes the whole text
        content: free text that only looked like a call (Llama 3's format is any JSON object
        that starts with "name", so there that object alone is text: parse_tail; the grammar
        holds only what follows its trigger).

        `cut`: max_tokens, a stop string or a stop token id ended the output, maybe inside
        a call:
        the calls it holds are returned with the cut one's arguments as written so far, and
        no call markup stays content (aiollm/api/cut_calls.py). `length`: max_tokens ended
        it (finish_reason "length"), so a last call whose arguments are whole but whose
        markup is left open (`closing`) was cut there, not complete either; a stop that
        falls after the call's JSON (the model's end token, a client's stop string
        "</tool_call>") ended a whole call, as vLLM's Hermes parser reads a last call
        without its end tag, but one that falls before the JSON's end (`json_end`: a stop
        string "}" kept by include_stop_str_in_output, whose arguments then parse) ended
        the output inside the call, which is not complete.
        `required`: the output can only be calls (tool_choice "required" or a named
        function). `named`: the function tool_choice named, whose call a cut output is
        even before the call's name was written, with no arguments yet, as vLLM answers
        a named tool_choice (its output is the arguments alone, given as that function's
        call whatever was written).

        The text before the calls (content_end) is content as it is: a stream has sent it
        before any call came, and reads the rest (the text it held) with this same method,
        so that the two join to this answer's content by construction.

        The calls a stream has sent by the output's end (`sent`, which a stream passes; else
        call_text.written_calls from the first `start` on) are never taken back: where this
        reading does not extend them (their markup turned out not to parse), the answer is
        those calls, the last one incomplete, and the text before `start` its content, as
        the stream read it. `fences`: the code blocks before the text (a stream's
        held text: call_wrap.Fences)."""
        head = text[:self.content_end(text, fences)]
        text, fences = text[len(head):], fences.after(head, len(head))
        content, calls = self._read(text, names, cut, required, named, fences)
        at = text.find(self.start)
        if sent is None:
            sent = (written_calls(text, at, names, self.heads, self.joints)[0] if at >= 0
                    else [])
        if not _extends(calls, sent):
            content = without_wrap_end(text[:at], self.brackets, fences)
            calls = [ToolCall(c.name, c.arguments, c.id, c.complete) for c in sent]
            calls[-1].complete = False
        if cut and calls and calls[-1].complete and not self._closed(
                text, at, names, calls, self.closing if length else self.json_end):
            calls[-1].complete = False
        taken: set[str] = set()
        for call in calls:  # the id the model wrote in the call's head is the call's,
            # unless an earlier call has it (a client matches results to calls by id)
            if not (self.heads.call_id and _MODEL_ID.fullmatch(call.id)) or call.id in taken:
                call.id = self.call_id()
            taken.add(call.id)
        return head + content, calls

    def _closed(self, text: str, at: int, names: Collection[str], calls: list[ToolCall],
                closing: re.Pattern) -> bool:
        """Whether the last of `calls`, read of `text` (its first call marker at `at`) with
        its arguments whole, has its markup closed there too (`closing`: the parser's
        `closing` after max_tokens, its `json_end` after a stop): an output cut after the
        arguments but before the call's end (the "}" of its object, and after max_tokens
        Hermes' </tool_call>) was cut in the call, which OpenAI's items then say is
        incomplete.
        The call is read as written (call_text.written_calls) from the last marker on (a
        run of calls after the model's text, which ends a reading from the first call:
        "auto"'s blocks), else from the first: where neither reading ends with it, it is
        taken as closed (the parser read it so; a marker may stand in its arguments)."""
        last = calls[-1]
        # (where a reading starts, whether it must read every call: from the first marker)
        for i, every in ((text.rfind(self.start), False), (max(at, 0), True)):
            written, end = written_calls(text, max(i, 0), names, self.heads, self.joints)
            if written and written[-1].complete and (written[-1].name, written[-1].arguments) \
                    == (last.name, last.arguments) and not (every and len(written) != len(calls)):
                return closing.match(text, end) is not None
        return True

    def _read(self, text: str, names: Collection[str], cut: bool, required: bool,
              named: str | None, fences: Fences) -> tuple[str, list[ToolCall]]:
        content, calls, tail = self.parse_tail(text, names, fences)
        if any(c.name not in names for c in calls):
            return text, []
        if cut:
            rest, more, last_cut = cut_calls(
                content[tail:], marker=self.start, heads=self.heads,
                joints=self.joints, names=names, only_calls=required or bool(calls),
                words=self.words)
            left, after = content[tail:], fences.after(content, tail)
            # call markup dropped (a cut call, a head cut before its name): a wrapper's
            # opening that ends where it begins is markup too (backticks it follows on
            # their line open no fence: the model's text, as before a whole call)
            if (more or rest != left) and wrap_before(
                    left, skip_space(left, len(rest)), 0, self.brackets, after) is not None:
                rest = without_wrap_end(rest, self.brackets, after)
            content = content[:tail] + rest
            calls += [ToolCall(name, arguments, id) for name, arguments, id in more]
            if tail and calls:  # else the text as written (ToolParser.parse)
                content = content.rstrip()
            if named is not None and not calls:
                calls, last_cut = [ToolCall(named, "")], True
            if last_cut:
                calls[-1].complete = False
        return content, calls

    def call_id(self) -> str:
        """A new call's id: OpenAI's form, `call_` and 24 hex digits."""
        return f"call_{uuid.uuid4().hex[:24]}"

    def tags(self, tools: list[dict]) -> list[dict]:
        """xgrammar structural tags: one per tool, its arguments under its schema."""
        raise NotImplementedError

    def grammar(self, tools: list[dict], *, required: bool, parallel: bool) -> GrammarSpec:
        """"required": calls only (no text around them, the grammar ends after the last);
        else text until a call's marker, then the call."""
        if required:
            return structural_tag(self.calls_format(tools, parallel=parallel))
        return structural_tag({
            "type": "triggered_tags", "triggers": [self.start], "tags": self.tags(tools),
            "at_least_one": False, "stop_after_first": not parallel})

    def calls_format(self, tools: list[dict], *, parallel: bool) -> dict:
        """The structural tag format of an output of calls only: one or more (one when not
        `parallel`), each valid for its tool, nothing around them."""
        return {"type": "sequence", "elements": [
            {"type": "tags_with_separator", "tags": self.tags(tools),
             "separator": self.separator, "at_least_one": True,
             "stop_after_first": not parallel}, OPTIONAL_NEWLINE]}

    def either(self, tools: list[dict], content: dict, *, parallel: bool) -> GrammarSpec:
        """tool_choice "auto" beside a response format: the output is calls only
        (calls_format) or a content of format `content` (tools_or_format.content_format), chosen
        at its first token, as OpenAI answers such a request."""
        return structural_tag({"type": "or", "elements": [
            self.calls_format(tools, parallel=parallel), content]})


def _extends(calls: list[ToolCall], sent: list[Written]) -> bool:
    """Whether `calls` begin with the calls `sent`, each one's arguments where they left off."""
    return len(calls) >= len(sent) and all(
        c.name == w.name and c.arguments.startswith(w.arguments) for c, w in zip(calls, sent))


# may end a "required" output: models write one after a call, then the end (else the
# separator "\n" would oblige them to open another call)
OPTIONAL_NEWLINE = {"type": "optional", "content": {"type": "const_string", "value": "\n"}}


def structural_tag(fmt: dict) -> GrammarSpec:
    """The grammar of a structural tag of format `fmt`, named "tools" in its errors."""
    return GrammarSpec("structural_tag", json.dumps({"type": "structural_tag", "format": fmt}),
                       "tools")


# Whitespace a call's JSON may have in one run: enough to pretty-print a few levels, and a
# bound on a model that would otherwise write newlines forever (seen: a tool without
# parameters, whose `{}` the default model never closed)
MAX_WHITESPACE = 16


def tool_arguments(tool: dict) -> dict:
    """A tag's content: the tool's arguments under its parameter schema."""
    return {"type": "json_schema", "json_schema": grammar_schema(tool_schema(tool)),
            "max_whitespace_cnt": MAX_WHITESPACE}


def tool_name_json(tool: dict) -> str:
    """The tool's name as a JSON string (a name may hold quotes or backslashes)."""
    return json.dumps(tool["function"]["name"])


def tool_schema(tool: dict) -> dict:
    """The tool's parameter schema (an object of no properties where it gives none)."""
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}
