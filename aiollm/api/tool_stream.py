"""Tool calls in a stream of text deltas, for /v1/chat/completions with stream true: the
content sent as it comes, the calls read (ToolParser.calls) once the output ends.
"""

from __future__ import annotations

from collections.abc import Collection

from aiollm.api.tool_calls import ToolCall, ToolParser


class StreamingToolParser:
    """Splits a stream of text deltas into content and complete calls: text from the call
    marker on is held back until the output ends, then parsed; each call is sent as one
    delta.tool_calls fragment (its whole arguments string at once, which OpenAI clients
    accumulate like smaller fragments)."""

    def __init__(self, parser: ToolParser, names: Collection[str], *, required: bool = False,
                 named: str | None = None):
        self.parser = parser
        self.names = names
        self.required = required  # the output can only be calls (ToolParser.calls)
        self.named = named  # the function tool_choice named (ToolParser.calls)
        self.held = ""  # from the first character not sent
        self.calling = False
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> str:
        """The content that can be sent now: never a trailing whitespace, which the whole
        answer drops when calls follow (ToolParser.parse), until more text comes."""
        self.held += text
        if self.calling:
            return ""
        marker = self.parser.start
        i = self.held.find(marker)
        if i >= 0:
            self.calling = True
            end = i
        else:  # keep a tail that may be the start of the marker
            end = len(self.held)
            for k in range(min(len(marker) - 1, len(self.held)), 0, -1):
                if marker.startswith(self.held[-k:]):
                    end -= k
                    break
        end = len(self.held[:end].rstrip())
        out, self.held = self.held[:end], self.held[end:]
        return out

    def finish(self, *, cut: bool = False) -> tuple[str, list[ToolCall]]:
        """At the end of the output: (content still held, the calls). The content sent and
        this join to the whole answer's content (ToolParser.calls of all the text, `cut`
        when max_tokens ended it)."""
        content, self.calls = self.parser.calls(self.held, self.names, cut=cut,
                                                required=self.required, named=self.named)
        self.held = ""
        return content, self.calls
