"""Mistral's tool call formats: "mistral", `[TOOL_CALLS]` then a JSON array of calls
(tokenizers before v11: Mistral-7B-Instruct-v0.3, Mixtral), and "mistral_v11",
`[TOOL_CALLS]NAME[ARGS]{...}` one block per call (v11 on: Mistral-Small-3.2, Magistral,
Devstral). aiollm/api/tool_parsers.py picks one from the chat template.
"""

from __future__ import annotations

import random
import re
import string

from aiollm.api.call_text import ID_PATTERN, Heads, Joints, value_text
from aiollm.api.call_wrap import OUTSIDE, block_wrap, text_after, wrap_close
from aiollm.api.json_calls import json_calls
from aiollm.api.tool_calls import (OPTIONAL_NEWLINE, ToolCall, ToolParser, tool_arguments,
                                   tool_name_json)

# Mistral's call ids: 9 of these, drawn from the OS's randomness (not the seeded sampling's)
_ID_CHARACTERS = string.ascii_letters + string.digits
_ID_RANDOM = random.SystemRandom()
ARGS = "[ARGS]"  # Mistral v11's marker between a call's name and its arguments
# Mistral-Small-3.2's (tokenizer v11's own template): between the name and the call's id
CALL_ID = "[CALL_ID]"
# a call's name and its [ARGS], after the marker (whitespace before it is the joint's);
# with [CALL_ID], the name, the marker, the id, [ARGS]
_NAME = r"\s*([^\s\[\]](?:[^\n\[\]]*[^\s\[\]])?)"
_V11_HEAD = re.compile(_NAME + r"\[ARGS\]")
_V11_ID_HEAD = re.compile(_NAME + rf"\[CALL_ID\]({ID_PATTERN})\[ARGS\]")
_ID_FORMAT = {"type": "regex", "pattern": ID_PATTERN}


class MistralParser(ToolParser):
    name, start = "mistral", "[TOOL_CALLS]"
    opens = (start,)
    # an array of calls (or objects one after another), a block a call under "auto"
    joints = Joints(re.compile(r"\[TOOL_CALLS\]\s*\[?\s*"),
                    re.compile(r"\s*\}\s*(?:,|\]?\s*(?:\[TOOL_CALLS\])?\s*\[?)\s*"))

    def call_id(self):
        # Mistral's chat templates refuse a history whose call ids are not 9 letters or
        # digits (raise_exception), so the calls an agent sends back must have such ids, as
        # vLLM's Mistral parser makes them
        return "".join(_ID_RANDOM.choices(_ID_CHARACTERS, k=9))

    def parse(self, text, fences=OUTSIDE):
        # `[TOOL_CALLS]` then a JSON array of calls; "auto" may write one block per call. The
        # next marker is looked for after a block's JSON (an argument may hold the marker)
        content, calls, pos, wrap = [], [], 0, None
        i = text.find(self.start)
        while i >= 0:
            found, end = self._block(text, i + len(self.start))
            if not found:  # a marker in the text that no call follows: the model's text
                i = text.find(self.start, i + 1)
                continue
            # text between blocks keeps the whitespace before it (whitespace alone there,
            # a wrapper's fence before it or not, is the blocks' separator); a fence
            # around blocks is markup (call_wrap)
            wrap, lead = block_wrap(text, i, pos, wrap, self.brackets, fences)
            gap = text[text_after(text, pos) if calls else pos:lead]
            content.append(gap if not calls or gap.strip() else "")
            fences = fences.after(text, lead, pos).ended()  # the content's, not the calls'
            calls += found
            pos = wrap_close(text, end, wrap)
            wrap = wrap if pos == end else None
            # the whitespace the calls' reader passed is the text's (a line break: a
            # fence after it begins a line)
            fences = fences.after(text, pos, text_after(text, pos))
            i = text.find(self.start, pos)
        if not calls:
            return text, []
        content.append(text[text_after(text, pos):])
        return "".join(content).rstrip(), calls

    def _block(self, text: str, at: int) -> tuple[list[ToolCall], int]:
        """(the calls of the block that starts at text[at], after a marker; where it
        ends): a JSON array of calls (or objects one after another); none where none
        parses there."""
        return json_calls(text, at, "arguments", "")

    def tags(self, tools):
        return [{"type": "tag",
                 "begin": f'[TOOL_CALLS][{{"name": {tool_name_json(t)}, "arguments": ',
                 "content": tool_arguments(t), "end": "}]"} for t in tools]

    def calls_format(self, tools, *, parallel):
        # one array of calls: [TOOL_CALLS][{...}, {...}]
        calls = [{"type": "tag", "begin": f'{{"name": {tool_name_json(t)}, "arguments": ',
                  "content": tool_arguments(t), "end": "}"} for t in tools]
        return {"type": "sequence", "elements": [
            {"type": "const_string", "value": "[TOOL_CALLS]["},
            {"type": "tags_with_separator", "tags": calls, "separator": ", ",
             "at_least_one": True, "stop_after_first": not parallel},
            {"type": "const_string", "value": "]"}, OPTIONAL_NEWLINE]}


class MistralV11Parser(MistralParser):
    """Mistral's tokenizers from v11 on (Mistral-Small-3.2, Magistral, Devstral):
    `[TOOL_CALLS]NAME[ARGS]{...}`, one block per call, the name bare ([ARGS] ends it).
    `call_ids` (where the chat template writes them: Mistral-Small-3.2's):
    `[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}`, ID 9 letters or digits, which the grammar
    makes the model write and which is the call's id in the answer: the tool result the
    client sends back under it renders as the model wrote the call."""

    name, heads, special = "mistral_v11", Heads(marked=ARGS), (ARGS,)
    separator = MistralParser.start  # between the calls of a "required" output
    closing = json_end = re.compile("")  # a call ends with its arguments: nothing closes it
    joints = Joints(re.compile(r"\[TOOL_CALLS\]\s*"), re.compile(r"\s*\[TOOL_CALLS\]\s*"))

    def __init__(self, call_ids: bool = False):
        self.call_ids = call_ids
        self.heads = Heads(marked=ARGS, call_id=CALL_ID if call_ids else "")
        self.special = (ARGS, CALL_ID) if call_ids else (ARGS,)

    def _block(self, text, at):
        # one call: a name, [ARGS] (after [CALL_ID] and the id, with call_ids), its
        # arguments as written (call_text.value_text); a marker no such head follows is
        # the model's text
        m = (_V11_ID_HEAD if self.call_ids else _V11_HEAD).match(text, at)
        if m is None:
            return [], at
        args, end, complete = value_text(text, m.end())
        if not complete:
            return [], at
        call = ToolCall(m.group(1), args)
        if self.call_ids:
            call.id = m.group(2)
        return [call], end

    def _call(self, tool: dict, begin: str = "") -> dict:
        """The tag of a call to `tool`, after `begin`: the name, the id with call_ids,
        [ARGS], the arguments under the tool's schema; nothing closes it."""
        name = tool["function"]["name"]
        if not self.call_ids:
            return {"type": "tag", "begin": f"{begin}{name}{ARGS}",
                    "content": tool_arguments(tool), "end": ""}
        return {"type": "tag", "begin": f"{begin}{name}{CALL_ID}", "end": "",
                "content": {"type": "sequence", "elements": [
                    _ID_FORMAT, {"type": "const_string", "value": ARGS},
                    tool_arguments(tool)]}}

    def tags(self, tools):
        return [self._call(t, self.start) for t in tools]

    def calls_format(self, tools, *, parallel):
        # [TOOL_CALLS]a[ARGS]{...}[TOOL_CALLS]b[ARGS]{...}: the marker between the calls
        return {"type": "sequence", "elements": [
            {"type": "const_string", "value": self.start},
            {"type": "tags_with_separator", "tags": [self._call(t) for t in tools],
             "separator": self.separator, "at_least_one": True,
             "stop_after_first": not parallel}, OPTIONAL_NEWLINE]}
