"""Tool calls that max_tokens cut off: what of them the output holds, as calls.

Under a tool grammar (tool_choice "required" or a named function, or "auto" once a call's
marker is written) every call is written as `{"name": NAME, "<arguments key>": ARGUMENTS`
(Mistral v11's `NAME[ARGS]ARGUMENTS`, or `NAME[CALL_ID]ID[ARGS]ARGUMENTS`: call_text.Heads)
after its family's marker, so a call cut by max_tokens is still known by its name (and id)
once that head is written. Such an output ends
with finish_reason "length" (or "stop", where a stop string or stop token id ended it inside
a call) and its calls are returned as calls, the cut one with the arguments text written so
far (no complete JSON), as OpenAI answers a call cut by max_tokens; the call markup is never
content. A call cut before its name is complete is no call and is dropped (under a named
tool_choice it is still the named function's call, with no arguments yet: ToolParser.calls);
so is a marker cut part way when the text can only be calls. A marker that goes on as no
call's head does (`{"name": 5}`, free text) is the model's text and stays content. Streamed
and whole answers read the output alike (ToolParser.calls, aiollm/api/tool_calls.py, calls
this for both), and both take the rules of when to look for a cut call and which
finish_reason the calls give from here (may_cut_a_call, finish_with_calls)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from aiollm.api.call_text import Heads, Joints, Written, written_calls

if TYPE_CHECKING:
    from aiollm.api.tool_calls import ToolCall


def cut_calls(content: str, *, marker: str, heads: Heads, joints: Joints,
              names: Collection[str], only_calls: bool, words: Sequence[str] = ()
              ) -> tuple[str, list[tuple[str, str, str]], bool]:
    """(content left, [(name, arguments text, id)], whether the last call is cut) of the text
    a tool parser could not read as complete calls (`content`), from an output that
    max_tokens (or a stop string) cut.

    The calls are read from the last `marker` on (call_text.written_calls): each head
    `{"name": <one of names>` (`heads`: the format's, Heads.named) that `joints` lead to
    starts one, whose arguments are the JSON value after `, "<args_key>": ` (Heads.lead)
    as written or, for the one cut, the text written of it
    ("" when the cut falls in the head, after the name); the id, the one the head wrote
    (Heads.call_id), else "". The content is the text before
    that marker, its trailing whitespace dropped. A marker followed by neither a call nor
    the start of a head (`{"name": 5}`, free text) is the model's text: it stays content.
    `only_calls` (the output can only be calls: "required", or calls already found) also
    drops a marker cut part way at the end. Without a marker the content is returned as it
    is, with no calls. Complete calls that text follows (other than the format's markup:
    closing brackets, separators, `marker` and the other `words`, and a head cut part way)
    are not cut either: call-shaped text the model wrote, content too; nor is a head that
    goes on otherwise than `, "<args_key>": ` (`{"name": "f"} and more`)."""
    at = content.rfind(marker)
    if at < 0:
        return (_without_cut_marker(content, marker) if only_calls else content), [], False
    # the text before the marker as a stream sent it (a separator there, Llama 3's ';' after
    # "Sure", is the model's text: the calls' own separators never reach the content)
    region, before = content[at:], content[:at].rstrip()
    calls, end = written_calls(region, 0, names, heads, joints)
    if (not calls and not _cut_head(region, joints, names, heads)) or (
            calls and calls[-1].complete and not _markup_only(region[end:], (marker, *words),
                                                              names, heads)) or (
            calls and _head_goes_on(region, end, calls[-1], heads)):
        # the marker goes on as no call's head does: the model's text, not markup
        return (_without_cut_marker(content, marker) if only_calls else content), [], False
    cut = bool(calls) and not calls[-1].complete
    return before, [(c.name, c.arguments, c.id) for c in calls], cut


def next_head_cut(text: str, *, marker: str, heads: Heads, joints: Joints,
                  names: Collection[str]) -> str:
    """The text after the last whole call that `text` writes from its first `marker` on
    (call_text.written_calls), where that text is a joint (`joints.between`) and then the
    start of a next call's head cut before its name was whole (`heads`, one of `names`):
    the output ended while that call was being written; "" where it is not. Mistral's array
    (`, {"na`) shows it here only: its plain reading drops that element as the cut one
    does, so that no content tells of it (ChatPlan.stopped_in_call)."""
    at = text.find(marker)
    if at < 0:
        return ""
    calls, end = written_calls(text, at, names, heads, joints)
    if not calls or not calls[-1].complete:
        return ""
    joint = joints.between.match(text, end)
    rest = text[joint.end():] if joint is not None else ""
    return text[end:] if rest and any(heads.begins(rest, n) for n in names) else ""


def may_cut_a_call(finish_reason: str) -> bool:
    """Whether an output that ended with `finish_reason` may have ended inside a tool call,
    whose calls are then read with cut_calls: max_tokens ("length"), a stop string or a stop
    token id ("stop") end it wherever they fall; a grammar never ends an output inside a call
    by itself."""
    return finish_reason in ("length", "stop")


def finish_with_calls(finish_reason: str, calls: Sequence[ToolCall], named: bool = False,
                      in_call: bool = False) -> str:
    """The finish_reason of an answer with `calls`, whose output ended with `finish_reason`:
    "tool_calls" only where it stopped ("stop") after a complete last call; else as it was (a
    call a stop string cut is no complete call, so "stop" stays; a call max_tokens cut keeps
    "length"). `in_call`: the stop fell inside a call all the same (ChatPlan.stopped_in_call:
    a next call's opening or head cut before its name, which the reading drops), so "stop"
    stays too, as /v1/responses then says "incomplete". `named`: the request's tool_choice
    named the function, whose forced call OpenAI's API answers with "stop" (vLLM too, since
    its PR 25054), not "tool_calls"."""
    if calls and finish_reason == "stop" and calls[-1].complete and not named and not in_call:
        return "tool_calls"
    return finish_reason


def _without_cut_marker(text: str, marker: str) -> str:
    """`text` without a start of `marker` that ends it ("<tool_" of "<tool_call>")."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return text[:-k].rstrip()
    return text


def _cut_head(region: str, joints: Joints, names: Collection[str], heads: Heads) -> bool:
    """Whether `region`, a marker and what follows it to the output's end, is a call cut
    before its name was complete: after the marker's lead (`joints`), the start of a head
    `{"name": NAME` of one of `names`."""
    rest = region[joints.lead.match(region).end():]
    return any(heads.begins(rest, n) for n in names)


def _head_goes_on(region: str, end: int, call: Written, heads: Heads) -> bool:
    """Whether `call`, the last that written_calls read of `region` (the previous ones end
    at `end`), stopped at a head that goes on as no call's does: `{"name": NAME` followed by
    what does not begin `, "<args_key>": ` (`}`, text), which no output cut there holds."""
    if call.complete or call.arguments:
        return False
    head = heads.named(call.name)
    at = region.find(head, end)
    rest, between = region[at + len(head):], heads.lead
    return at >= 0 and not (between.startswith(rest) or rest.startswith(between))


def _markup_only(rest: str, words: Sequence[str], names: Collection[str], heads: Heads) -> bool:
    """Whether `rest`, from the end of a complete call's arguments to the output's end, is
    what a format writes there (an output cut in a call's closing, or in the next call's
    head): whitespace, closing brackets, separators and `words` (the format's markers),
    then maybe a word or a head `{"name": NAME` of one of `names` cut part way."""
    i = 0
    while i < len(rest):
        if rest[i] in " \t\n\r}],;[":
            i += 1
            continue
        word = next((w for w in words if rest.startswith(w, i)), None)
        if word is None:
            tail = rest[i:]
            return any(w.startswith(tail) for w in words) or any(
                heads.begins(tail, n) for n in names)
        i += len(word)
    return True
