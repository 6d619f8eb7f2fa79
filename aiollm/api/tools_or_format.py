"""Tools beside a grammar on the content (`response_format`, vLLM's `guided_*` and
`structured_outputs`): the one grammar a chat request's output is held to.

OpenAI's rule, followed for every content grammar: the format describes the content of an
assistant message, and the tools the calls. So
- tool_choice "auto" (or absent): the output is either calls, in the model's call format and
  nothing else, or a content that matches the format; the model picks at its first token;
- tool_choice "required" or a named function: calls only (a calls-only message has no
  content for the format to shape);
- tool_choice "none": the format only (no parser runs, as without tools).
An xgrammar structural tag (`structured_outputs.structural_tag`) is no content format: it
shapes the whole output, calls included, so beside tools (other than "none") it is refused.

Under "auto" no text comes before a call, neither free text nor the format's content: the
openai SDK's parse() validates any content a message has against the format, calls or not
(free text would raise there), and a content that is the format's answer beside calls is
no message an agent loop can act on. vLLM holds "auto" beside a format to the format alone
(no call can be written at all).

Reading such an output back (ChatPlan.calls, StreamingToolParser's `formatted`:
`opens_calls`): it is calls only where it opens with a call's opening (whitespace aside),
as the calls branch writes it; text before the first opening (a wrapper the parser reads
elsewhere too: a code fence, Llama 3's '[') means the model took the format's
branch, and the whole output is that content as written, never read for calls, call
markup in it included (a regex that spells "Answer: <tool_call>...", a JSON answer
holding a Llama 3 call's JSON as a value, or a list of such). vLLM runs its tool parser
over the format's output there, and so reads as a call whatever call the format spells.
An output that opens with a call and goes on with other text cannot be told apart before
its end, by which a stream has sent the call: it is read as the parser reads it
elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import replace

from aiollm.api.http_errors import ApiError
from aiollm.api.tool_calls import ToolParser, tool_schema
from aiollm.engine.grammar_build import grammar_error, grammar_of
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import Constraint, GrammarSpec


def tools_constraint(parser: ToolParser, tools: list[dict], *, required: bool, parallel: bool,
                     constraint: Constraint | None, sent: str,
                     parts: tuple[tuple[str, str], ...] = ()) -> Constraint:
    """The request's constraint with its tools' grammar in it. `sent` names the tool_choice
    as the client sent it, for the 400 on a structural tag; `parts`, the tools' schemas by
    their fields (tool_parts), for the 400 on a schema xgrammar refuses. The content
    grammar is turned into EBNF here (xgrammar's JSON schema conversion: milliseconds for
    any schema the checks let through); call it off the event loop. Raises InvalidRequest
    naming the content grammar's field where that grammar is bad, whether or not it shapes
    the output (a calls-only answer checks it too: a bad field is a 400 whatever the
    tool_choice)."""
    content = constraint.grammar if constraint is not None else None
    if content is not None and content.kind == "structural_tag":
        raise ApiError(400, f"{sent} and {content.param} both constrain the calls; send one "
                       f"(or tool_choice \"none\")", param="tool_choice")
    fmt = content_format(content) if content is not None else None  # checked in any mode
    if fmt is None or required:
        spec = parser.grammar(tools, required=required, parallel=parallel)
    else:  # named "tools" in its errors, but a compile timeout names the format if it is slow
        spec = replace(parser.either(tools, fmt, parallel=parallel), embeds=(content,))
    kept = (constraint.allowed_token_ids, constraint.logit_bias) if constraint else ()
    return Constraint(replace(spec, parts=parts), *kept)


def tool_parts(tools: list[dict], callable_tools: list[dict]) -> tuple[tuple[str, str], ...]:
    """(field, JSON schema text) of the parameters of each of `callable_tools`, its field
    named by the tool's place in the request's `tools` (GrammarSpec.parts)."""
    return tuple((f"tools[{i}].function.parameters", json.dumps(tool_schema(t)))
                 for i, t in enumerate(tools) if any(t is c for c in callable_tools))


def content_format(spec: GrammarSpec) -> dict:
    """A structural tag format (an EBNF grammar) that holds text to `spec` exactly as `spec`
    compiled alone would (both read it through engine/grammar_build.py). Raises
    InvalidRequest naming spec.param where the grammar checks refuse it."""
    try:
        grammar = grammar_of(spec)  # checked (a schema rewritten) as when compiled alone
    except InvalidRequest:
        raise
    except Exception as e:  # the library's own error types: the client's grammar is bad
        raise grammar_error(spec, e) from e
    return {"type": "grammar", "grammar": str(grammar)}


def opens_calls(parser: ToolParser, text: str) -> bool | None:
    """Whether an output `text` (its start so far, under tool_choice "auto" beside a
    format) opens with one of `parser.opens`, whitespace aside, as the calls branch of the
    grammar writes it: True; False where it opens with anything else (the format's
    content); None while it cannot tell yet (blank, or a part of an opening)."""
    head = text.lstrip()
    if any(head.startswith(o) for o in parser.opens):
        return True
    return None if any(o.startswith(head) for o in parser.opens) else False
