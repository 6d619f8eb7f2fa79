"""Tool calls in the model's output, for /v1/chat/completions: each model family's parser,
which turns the model's text into OpenAI's `tool_calls` and builds the grammar that enforces
a call, and the choice of one. What the parsers share (`ToolCall`, `ToolParser`) is in
aiollm/api/tool_calls.py; a stream is read with one of them by aiollm/api/tool_stream.py.

Model families write calls differently; one `ToolParser` per family, chosen from the chat
template (or `--tool-call-parser`):

- "hermes": `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call
  (Qwen2.5/Qwen3, Hermes, SmolLM2);
- "llama3": a JSON object `{"name": ..., "parameters": {...}}`, after `<|python_tag|>` or alone
  (Llama 3.1/3.2);
- "mistral": `[TOOL_CALLS]` then a JSON array of `{"name": ..., "arguments": {...}}`
  (Mistral's tokenizers before v11: Mistral-7B-Instruct-v0.3, Mixtral);
- "mistral_v11": `[TOOL_CALLS]NAME[ARGS]{...}`, one block per call (tokenizer v11 on:
  Mistral-Small-3.2, Magistral, Devstral), where the template writes calls with `[ARGS]`;
  where the template writes `[CALL_ID]ID` before `[ARGS]` (v11's own, Mistral-Small-3.2's),
  `[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}`, the model's ID the call's id.
  Both Mistral forms are in aiollm/api/mistral_calls.py.

A markdown code fence around calls, and a JSON list around Llama 3's, are markup too, not
content (aiollm/api/call_wrap.py). The calls' JSON values are read by
aiollm/api/json_calls.py.

tool_choice "required" and a named function are enforced with an xgrammar structural tag
built from the tools' parameter schemas (calls and nothing else, each one valid for its tool:
one or more for "required", exactly one for a named function); "auto" constrains a call once
its opening marker appears (the tag's trigger), so a call the model starts always parses;
"none" leaves the output free and parses nothing; "auto" beside a response format is calls
or that format's content (aiollm/api/tools_or_format.py). The request's `tools` and `tool_choice`
are checked, and turned into that mode, in aiollm/api/tool_request.py.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from aiollm.api.call_text import Joints, decode_json
from aiollm.api.call_wrap import (OUTSIDE, WRAP_MAX, block_wrap, skip_space, text_after,
                                  without_wrap_end, wrap_before, wrap_close)
from aiollm.api.json_brackets import Brackets
from aiollm.api.json_calls import json_call, json_calls, list_calls, value_end
from aiollm.api.mistral_calls import ARGS, CALL_ID, MistralParser, MistralV11Parser
from aiollm.api.tool_calls import ToolParser, tool_arguments, tool_name_json
from aiollm.config import TOOL_CALL_PARSERS

PARSERS = TOOL_CALL_PARSERS  # EngineConfig checks --tool-call-parser against them


TAG = "<|python_tag|>"  # Llama 3's marker before calls (a special token)


def _tags_before(text: str, i: int) -> int:
    """Where the run of <|python_tag|>s (whitespace between them) that ends at text[i]
    starts; `i` where none does."""
    start = k = i
    while True:
        while k > 0 and text[k - 1].isspace():
            k -= 1
        if not text.endswith(TAG, 0, k):
            return start
        start = k = k - len(TAG)


class HermesParser(ToolParser):
    name, start, end = "hermes", "<tool_call>", "</tool_call>"
    opens, words = (start,), (end,)
    closing = re.compile(r"\s*\}\s*</tool_call>")
    joints = Joints(re.compile(r"<tool_call>\s*"),
                    re.compile(r"\s*\}\s*</tool_call>\s*<tool_call>\s*"))

    def parse(self, text, fences=OUTSIDE):
        # each block read as JSON, so markers inside an argument's string are its text; a
        # block that does not hold one call (or misses its end before more text) stays content
        calls, content, pos, wrap = [], [], 0, None
        i = text.find(self.start)
        while i >= 0:
            at = skip_space(text, i + len(self.start))
            try:
                obj, j = decode_json(text, at)
            except ValueError:
                obj = j = None
            call = json_call(obj, "arguments", text, at) if j is not None else None
            if call is not None:
                j = skip_space(text, j)
                if text.startswith(self.end, j):
                    j += len(self.end)
                elif j < len(text):
                    call = None
            if call is None:
                i = text.find(self.start, i + 1)
                continue
            # whitespace alone between two blocks is their separator (Qwen's "\n"); a
            # fence around blocks is markup (call_wrap), closed after any block in it
            wrap, lead = block_wrap(text, i, pos, wrap, self.brackets, fences)
            content.append("" if calls and not text[pos:lead].strip() else text[pos:lead])
            fences = fences.after(text, lead, pos).ended()  # the content's, not the call's
            calls.append(call)
            pos = wrap_close(text, j, wrap)
            wrap = wrap if pos == j else None
            i = text.find(self.start, pos)
        content.append(text[pos:])
        return "".join(content).rstrip() if calls else text, calls

    def tags(self, tools):
        return [{"type": "tag",
                 "begin": f'<tool_call>\n{{"name": {tool_name_json(t)}, "arguments": ',
                 "content": tool_arguments(t), "end": "}\n</tool_call>"} for t in tools]


class Llama3Parser(ToolParser):
    name, start, separator, args_key = "llama3", '{"name": ', ";", "parameters"
    brackets = True  # bare JSON: parallel calls may come as a JSON list of them
    # <|python_tag|> (in the text with skip_special_tokens false) opens the calls too, as
    # vLLM's llama3_json reads it: a stream holds it back until it knows what follows
    opens, words = (TAG, start), (TAG,)
    # the marker is the head itself; calls are separated by ';', whitespace or the tag
    # (Llama 3.2 writes one before each of its parallel calls), or ',' in a JSON list
    joints = Joints(re.compile(""), re.compile(r"\s*\}(?:[;,\s]|<\|python_tag\|>)*"))

    def parse(self, text, fences=OUTSIDE):
        content, calls, _ = self.parse_tail(text, fences=fences)
        return content, calls

    def parse_tail(self, text, names=None, fences=OUTSIDE):
        # every call is read wherever it stands, as vLLM's llama3_json reads them and as the
        # "auto" grammar holds each head it meets to a tool's schema: runs of calls joined by
        # separators, text between runs content. A call opens as the grammar's trigger does
        # (JSON spelt otherwise was never held to a tool's schema); a head that does not
        # parse ({"name": 5}), or names no tool ({"name": "Bob", "age": 3}: the format is
        # any such object), is the model's text, and ends the run it stands in; an object
        # it opens is text whole (a call's JSON among its values too)
        gaps, calls, pos, read = [], [], 0, 0  # read: the end of the last such object
        mark = 0  # `fences`: the code blocks of the content before text[mark] (>= pos)
        # matched once for all the readings below: a list nested in itself that the text
        # ends (a looping model) is read once, not once for each of its levels
        brackets = Brackets(text)
        i = text.find(self.start)
        while i >= 0:
            # decoded once where no JSON parses there (json_calls), twice else
            if (end := value_end(text, i, brackets)) > i:
                # a list or a fence around the run is markup (call_wrap): the list read
                # whole where it parses, else its calls one by one (it may be cut). The
                # code blocks are read on from the last head's (objects of text: not from
                # `pos` again each time); a wrapper before this head starts after `mark`
                # <|python_tag|> between a wrapper and the head is markup with them (the
                # text decoded skipping special tokens reads the same)
                at = _tags_before(text, i)
                if at - WRAP_MAX > mark:
                    fences, mark = fences.after(text, at - WRAP_MAX, mark), at - WRAP_MAX
                wrap = wrap_before(text, at, mark, self.brackets, fences)
                found, stop, kept = [], i, ""
                if wrap is not None and wrap.bracket:
                    # a whole list of calls and other values: the others stay a list,
                    # content (the first call may have been streamed before they came);
                    # a list of calls only, the run goes on after it
                    listed = list_calls(text, text.rindex("[", wrap.start, i),
                                        self.args_key, names, (TAG,), brackets)
                    if listed is not None:  # its ']' read with it
                        found, kept, stop = listed
                        if not kept:
                            more, stop = json_calls(text, stop, self.args_key, ";,", (TAG,),
                                                    names, brackets)
                            found += more
                        wrap = dataclasses.replace(wrap, bracket=False)
                if not found:
                    found, stop = json_calls(text, i, self.args_key, ";,", (TAG,), names,
                                             brackets)
                if found:
                    lead = i if wrap is None else wrap.start
                    # whitespace alone between runs separates them, a fence around
                    # either or not (as it does without one)
                    gap = text[pos:lead]
                    gaps += [gap if not calls or gap.replace(TAG, "").strip() else "", kept]
                    # the code blocks of the content, not of the calls (their arguments)
                    fences = fences.after(text, lead, mark).ended()
                    calls += found
                    stop = wrap_close(text, stop, wrap)
                    pos, end = text_after(text, stop), stop
                    mark = pos
                else:
                    read = end
            i = text.find(self.start, max(end, i + 1))
        if not calls:  # a cut call is looked for after the objects read as text only
            return text, [], read
        # the tag is markup wherever calls are: the text decoded skipping special tokens
        # (the default) has none, and reads the same
        before = "".join(gaps).replace(TAG, "")
        content = (before + text[pos:].replace(TAG, "")).rstrip()
        tail = len(before) + len(text[pos:max(pos, read)].replace(TAG, ""))
        return content, calls, min(tail, len(content))

    def calls(self, text, names, *, cut=False, length=False, required=False, named=None,
              sent=None, fences=OUTSIDE):
        content, calls = super().calls(text, names, cut=cut, length=length, required=required,
                                       named=named, sent=sent, fences=fences)
        if cut:
            # what follows the tag can only be calls: the tag and a head cut part way
            # ('{"na', or nothing yet) are markup wherever max_tokens or a stop fell, and
            # so is a wrapper's opening before them, as before Hermes' cut <tool_call>:
            # one that the tags follow, as a stream reads it ('```json<|python_tag|>'
            # opens none, the fence's line unended: a stream sent it as content)
            i = content.rfind(TAG)
            if i >= 0 and self.start.startswith(content[i + len(TAG):].lstrip()):
                at = _tags_before(content, i)
                wrap = wrap_before(content, at, 0, self.brackets, fences)
                content = content[:at if wrap is None else wrap.start].rstrip()
            elif calls and (last := text.rstrip()).endswith(TAG) and wrap_before(
                    last, _tags_before(last, len(last) - len(TAG)), 0, self.brackets,
                    fences) is not None:
                # one the calls' reader dropped: a wrapper's opening that ends the content,
                # where one opens right before the tags (backticks the tag follows on their
                # line open none) and it is the text's before them (not a '[' before calls
                # that read the tag after them)
                kept = without_wrap_end(content, self.brackets, fences)
                if last[:-len(TAG)].rstrip().endswith(content[len(kept):].strip()):
                    content = kept
        if calls:  # the tag before a cut call, or the calls a stream sent, is markup too
            content = content.replace(TAG, "").rstrip()
        return content, calls

    def tags(self, tools):
        return [{"type": "tag", "begin": f'{{"name": {tool_name_json(t)}, "parameters": ',
                 "content": tool_arguments(t), "end": "}"} for t in tools]


_BY_NAME = {p.name: p for p in (HermesParser, Llama3Parser, MistralParser, MistralV11Parser)}


def parser_for(template: str | None, override: str | None = None) -> ToolParser:
    """The parser named by `override`, else the one the chat template's format implies
    (hermes when the template shows none: the default model's family). Raises ValueError
    naming an unknown `override`. "mistral" is either of Mistral's forms, as the template
    writes calls: with `[ARGS]` (tokenizer v11 on) "mistral_v11", else the JSON array, as
    vLLM's mistral parser reads by the tokenizer's version; "mistral_v11" (named or so
    picked) writes and reads the call's id after `[CALL_ID]` where the template does."""
    t = template or ""
    if override and override not in ("mistral", "mistral_v11"):
        if override not in _BY_NAME:
            raise ValueError(f"unknown tool call parser {override!r}; one of {PARSERS}")
        return _BY_NAME[override]()
    if "[TOOL_CALLS]" in t or override in ("mistral", "mistral_v11"):
        # v11's templates write a call's arguments after [ARGS]; the older ones a JSON
        # array; Mistral-Small-3.2's the call's id before [ARGS], after [CALL_ID]
        if ARGS in t or override == "mistral_v11":
            return MistralV11Parser(call_ids=CALL_ID in t)
        return MistralParser()
    if "<|python_tag|>" in t or "ipython" in t:
        return Llama3Parser()
    return HermesParser()


@functools.lru_cache(maxsize=8)  # per (tokenizer, marker): asked on every request with tools
def marker_is_skipped(tokenizer, marker: str) -> bool:
    """Whether text decoded without special tokens loses the call marker: it is a special
    token (Mistral's [TOOL_CALLS]). Asked of the decoder, not of the special-token lists: a
    tokenizer.json may mark an added token special without the config listing it."""
    ids = tokenizer.encode(marker, add_special_tokens=False)
    return marker not in tokenizer.decode(ids, skip_special_tokens=True)

