"""What a chat request asks of the engine (`ChatPlan`): the prompt rendered by the chat
template, each choice's SamplingParams (structured output and the tools' grammar in them),
and how its output is read back (the tool-call parser, the reasoning splitter). Made once,
by `plan_chat`, for /v1/chat/completions and for /v1/responses (which turns its request
into a chat request first), so both ask the engine the same thing for the same
conversation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from aiollm.api import reasoning, tool_parsers, tool_request
from aiollm.api.chat_request import ChatCompletionRequest, message_dicts
from aiollm.api.cut_calls import next_head_cut
from aiollm.api.http_errors import ApiError
from aiollm.api.metadata import check_metadata
from aiollm.api.state import ApiState
from aiollm.api.tool_calls import ToolCall, ToolParser
from aiollm.api.tool_stream import StreamingToolParser
from aiollm.api.tools_or_format import opens_calls, tool_parts, tools_constraint
from aiollm.api.usage import room
from aiollm.engine.content_format import (echoed_text, joined_text, rendering_template,
                                          resolve_content_format)
from aiollm.engine.grammar import GRAMMARS_OFF
from aiollm.errors import shown_json
from aiollm.sampling_params import SamplingParams


@dataclass(slots=True)
class ChatPlan:
    """A checked chat request, ready for the engine."""

    ids: list[int]  # the rendered prompt's token ids
    messages: list[dict]  # the messages as the template saw them
    params: list[SamplingParams]  # one per choice
    role: str  # the answer's role
    mode: str  # tool mode: "none" | "auto" | "required"
    named: bool  # tool_choice named a function (mode "required" then)
    forced: str | None  # that function's name
    parser: ToolParser | None  # reads calls out of the output (None: mode "none")
    names: set[str]  # the functions a call may name
    # tool_choice "auto" beside a content format: calls only where the output opens with
    # one, else the format's content as written (tools_or_format.py)
    formatted: bool
    thinking: str | None  # the reasoning parser's name, None: no split
    shaped: bool  # a grammar holds the output from its first token
    echo: str  # vLLM's echo: the text put before each answer
    logprobs: int | None  # top logprobs per token, None: none asked
    prompt_tail: str  # the prompt's last tokens, where the splitter reads its state
    continued: str | None  # the continued message's content (continue_final_message)

    def splitter(self) -> reasoning.ReasoningSplitter | None:
        """A fresh reasoning splitter for one choice, None without a reasoning parser."""
        if not self.thinking:
            return None
        return reasoning.splitter_for(self.thinking, self.prompt_tail, shaped=self.shaped,
                                      continued=self.continued)

    def calls(self, text: str, *, cut: bool, length: bool = False
              ) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a whole output's content (its reasoning split off); no
        calls where no parser runs. `cut`: the output may end inside a call; `length`:
        max_tokens ended it (ToolParser.calls). Beside a content format (`formatted`),
        an output with text before its first call's opening is all content
        (aiollm/api/tools_or_format.py)."""
        if self.parser is None or (self.formatted and not opens_calls(self.parser, text)):
            return text, []
        return self.parser.calls(text, self.names, cut=cut, length=length,
                                 required=self.mode == "required", named=self.forced)

    def stopped_in_call(self, text: str, finish_reason: str | None,
                        calls: Sequence[ToolCall]) -> bool:
        """Whether a stop (a stop string or stop token id: finish_reason "stop") ended the
        output whose content is `text` (its reasoning split off), read into `calls`,
        inside a call: the last call cut, or a call's opening or head cut before its name
        was whole, which the reading drops as markup (cut_calls.py) so that no call tells
        of it; the cut reading's content then lacks text that a plain reading keeps, or
        both drop a next call's cut head (Mistral's array: cut_calls.next_head_cut).
        False where no parser runs."""
        if finish_reason != "stop" or self.parser is None:
            return False
        if calls and not calls[-1].complete:
            return True
        kept, _ = self.calls(text, cut=True)
        plain, _ = self.calls(text, cut=False)
        if kept.rstrip() != plain.rstrip():
            return True
        # a next call's head cut that both readings drop (Mistral's array), the cut
        # reading's content not keeping it as the model's text
        head = next_head_cut(text, marker=self.parser.start, heads=self.parser.heads,
                             joints=self.parser.joints, names=self.names)
        return bool(head) and not kept.rstrip().endswith(head.rstrip())

    def stream_calls(self) -> StreamingToolParser | None:
        """A fresh streaming tool parser for one choice, None where no parser runs."""
        if self.parser is None:
            return None
        return StreamingToolParser(self.parser, self.names, required=self.mode == "required",
                                   named=self.forced, formatted=self.formatted)


async def plan_chat(st: ApiState, req: ChatCompletionRequest) -> ChatPlan:
    """Checks `req` (InvalidRequest / ApiError naming the field at fault), renders its
    messages and builds its SamplingParams; the grammar, if any, is compiled before it
    returns. Call inside the endpoint's param_names and context_told."""
    engine = st.engine
    st.check_model(req.model)
    req.check_unserved()
    check_metadata(req.metadata)
    req.check_max_tokens()
    st.check_choices(req.n, "n")
    keep = req.kept_prompt_tokens(engine.max_model_len)
    # as vLLM: only a count that asks for alternatives needs the flag (0 asks for none)
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, f"top_logprobs {req.top_logprobs} needs logprobs set to true "
                       "(send logprobs true, or top_logprobs 0)", param="top_logprobs")
    if req.functions is not None or req.function_call is not None:
        raise ApiError(400, "functions and function_call are deprecated and not supported: "
                       "send tools and tool_choice", param="functions" if req.functions
                       is not None else "function_call")
    tools, mode, callable_tools = tool_request.choose(req.tools, req.tool_choice)
    # as vLLM: the served role for a new turn, else the role of the message it continues
    role = st.response_role if req.add_generation_prompt else req.messages[-1].role
    named = isinstance(req.tool_choice, dict)  # choose() made it mode "required"
    # the named function: a cut output is its call, as vLLM answers it (ToolParser.calls)
    forced = callable_tools[0]["function"]["name"] if named else None
    constraint = req.constraint()
    # where grammars are off, before the tools' grammar would take the format in (xgrammar)
    engine.grammars.refuse_off(constraint.grammar if constraint is not None else None)
    formatted = mode == "auto" and constraint is not None and constraint.grammar is not None
    # a grammar that holds the output from its first token leaves no room to reason first
    shaped = mode == "required" or constraint is not None and constraint.grammar is not None
    # SGLang's separate_reasoning false: the output unsplit, tags and all, in content
    thinking = engine.config.reasoning_parser if req.separate_reasoning else None
    if thinking and any(tool_parsers.marker_is_skipped(engine.tokenizer, tag)
                        for tag in (reasoning.START, reasoning.END)):
        req.skip_special_tokens = False  # the splitter must see the tags in the text
    options = req.template_options(st.trust_request_chat_template,
                                   st.chat_template_content_format, st.content_format_name,
                                   st.trust_request_chat_template_name)
    # the template the messages are rendered with says which tool-call format to read
    template = options.chat_template or engine.tokenizer.chat_template
    dicts = await message_dicts(req.messages)
    parser = None
    names = {t["function"]["name"] for t in callable_tools}
    if mode != "none":
        parser = tool_parsers.parser_for(rendering_template(template, tools),
                                         engine.config.tool_call_parser)
        if any(tool_parsers.marker_is_skipped(engine.tokenizer, m)
               for m in (parser.start, *parser.special)):
            req.skip_special_tokens = False  # the parser must see it in the text
        if named:  # not the "required" it was turned into
            sent = f"tool_choice naming the function {shown_json(forced)}"
        elif req.tool_choice is not None:
            sent = f"tool_choice {shown_json(mode)}"
        else:
            sent = "tools (with tool_choice absent, \"auto\")"
        if not engine.grammars.enabled:
            # "auto": calls are read from the output's text alone, as vLLM reads them
            if mode == "required":
                raise ApiError(400, f"{sent} holds the output to calls, which takes a "
                               f"grammar: {GRAMMARS_OFF}; send tool_choice \"auto\" (calls "
                               "read from the output's text) or \"none\"", param="tool_choice")
        else:
            # a named function is one call, as vLLM and SGLang answer it; else several may
            # come unless parallel_tool_calls is false. A response format beside: calls or
            # the format's content under "auto", calls only else (api/tools_or_format.py)
            combine = partial(tools_constraint, parser, callable_tools,
                              required=mode == "required",
                              parallel=req.parallel_tool_calls is not False and not named,
                              constraint=constraint, sent=sent,
                              parts=tool_parts(tools, callable_tools))
            # a content grammar is converted to EBNF: off the event loop
            constraint = (await asyncio.to_thread(combine) if constraint is not None
                          and constraint.grammar is not None else combine())
    # the template is applied here rather than by engine.chat so that a request without
    # max_tokens can be given the rest of the context
    # past calls reach a template that knows none in any mode: the follow-up turn (often
    # tool_choice "none", or no tools) must show the model what it called. Under "none" the
    # model still sees the tools (vLLM's default; OpenAI's model sees them and calls none)
    # unless the server was told to leave them out
    shown = [] if mode == "none" and engine.config.exclude_tools_when_tool_choice_none else tools
    ids, messages = await st.render_chat(dicts, shown, options, req.add_special_tokens, keep,
                                         refuse_long=True)
    # vLLM's echo: the last message's text, as the template was given it (its parts joined,
    # or each part's text: content_format.echoed_text), comes before each answer where the
    # message is in the answer's role (the one it continues)
    fmt = resolve_content_format(options.content_format, template, shown or None)
    echo = (echoed_text(dicts[-1].get("content"), fmt) if req.echo
            and req.messages[-1].role == role else "")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else (
        req.max_tokens if req.max_tokens is not None else room(st, len(ids), req.min_tokens))
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    # vLLM's prompt_logprobs: the rendered conversation scored once, by choice 0 (the
    # others share its prompt)
    params = [req.sampling_params(defaults=engine.sampling_defaults, max_tokens=max_tokens,
                                  logprobs=logprobs, choice=j, constraint=constraint,
                                  prompt_logprobs=req.prompt_logprobs if j == 0 else None)
              for j in range(req.n)]
    await engine.compile_grammar(params[0])
    prompt_tail = engine.tokenizer.decode(ids[-16:], skip_special_tokens=False) if thinking else ""
    # a continued message's own tags say whether it stopped inside its reasoning
    continued = (joined_text(messages[-1].get("content")) if req.continue_final_message
                 else None)
    return ChatPlan(ids, messages, params, role, mode, named, forced, parser, names, formatted,
                    thinking, shaped, echo, logprobs, prompt_tail, continued)
