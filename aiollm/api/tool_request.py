"""A chat request's `tools` and `tool_choice`, checked as OpenAI takes them (a 400 naming
the field otherwise) and turned into the mode a call is made in ("none", "auto" or
"required", and the tools a call may use). The tools' own check, and how a chat template
that knows nothing of tools is shown them, are the engine's (aiollm/engine/chat_tools.py),
shared with the Python API. Reading the calls out of the model's output, and the grammar
that enforces them, is aiollm/api/tool_parsers.py.
"""

from __future__ import annotations

import json
from typing import Any

from aiollm.engine.chat_tools import check_tools
from aiollm.errors import InvalidRequest, shown_json


def choose(tools: Any, tool_choice: Any) -> tuple[list[dict], str, list[dict]]:
    """(all tools, mode "none" | "auto" | "required", the tools a call may use).
    An empty list is no tools: clients (LangChain, some SDK wrappers) send `tools: []`, with
    tool_choice "auto" or none, as vLLM takes it; "auto" with nothing to call is "none".
    InvalidRequest naming tool_choice when it asks for a call ("required", a named function)
    and there are no tools, or is none of OpenAI's forms."""
    if tools is None or tools == []:
        if tool_choice in (None, "none", "auto"):
            return [], "none", []
        if tool_choice == "required" or _named_function(tool_choice) is not None:
            sent = "tools is empty" if tools == [] else "no tools were sent"
            raise InvalidRequest(f"tool_choice {_choice_text(tool_choice)} asks for a call, "
                                 f"but {sent}: send the tools, or tool_choice \"auto\" or "
                                 f"\"none\"", param="tool_choice")
        raise InvalidRequest(_choice_forms(tool_choice), param="tool_choice")
    choice = "auto" if tool_choice is None else tool_choice
    name = _named_function(choice)
    if name is None and choice not in ("none", "auto", "required"):
        # before the tools: their check depends on the mode ("None" was told to remove
        # what "none" takes)
        raise InvalidRequest(_choice_forms(choice), param="tool_choice")
    # under "none" no call comes: the schemas are shown to the model, never compiled
    tools = check_tools(tools, enforced=choice != "none")
    if name is None:
        return tools, choice, tools
    named = [t for t in tools if t["function"]["name"] == name]
    if not named:
        raise InvalidRequest(f"tool_choice names {shown_json(name)}, which is not among "
                             "the tools", param="tool_choice")
    return tools, "required", named


def _named_function(tool_choice: Any) -> str | None:
    """The function name of a tool_choice of the form {"type": "function", "function":
    {"name": NAME}}, None for anything else (a dict of another shape is no call asked for:
    it was told "asks for a call, but no tools were sent" where tools were absent)."""
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    return None


def _choice_forms(tool_choice: Any) -> str:
    """The message for a tool_choice of none of OpenAI's forms, showing it as JSON."""
    got = json.dumps(tool_choice, ensure_ascii=False)
    got = got if len(got) <= 80 else got[:77] + "..."
    return ('tool_choice must be "none", "auto", "required" or {"type": "function", '
            f'"function": {{"name": ...}}}}, got {got}')


def _choice_text(tool_choice: Any) -> str:
    """A tool_choice that asks for a call as a message names it: "required", or the
    function it names."""
    name = _named_function(tool_choice)
    return (f"naming the function {shown_json(name)}" if name is not None
            else shown_json(tool_choice))
