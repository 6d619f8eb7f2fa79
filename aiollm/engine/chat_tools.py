"""A conversation's tools (OpenAI's function tools): checked as OpenAI takes them
(InvalidRequest naming the field otherwise), and shown to a chat template that knows nothing
of them (the default model's) in the messages themselves. One rendering for every caller of
a chat with tools: the HTTP API (api/tool_request.py, /tokenize), Engine.chat and
stream_chat, and LLM.chat, through Engine.render_chat, so that the same messages and tools
give the same prompt everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiollm.engine.content_format import joined_text
from aiollm.engine.grammar_check import check_nesting, check_schema
from aiollm.errors import InvalidRequest, check_type, shown_json, too_deep

# OpenAI's rule for a function's name (it answers 400 otherwise): names go into the grammar's
# tags and the chat template's text, and clients match calls back to tools by them
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# OpenAI's limit. The template render, its tokenizing and the grammar of the tools all grow
# faster than the list: 20,000 tools took 30 s of CPU (slowing every stream), 100,000 over 10 min
MAX_TOOLS = 128


def _root_type(schema: dict) -> Any:
    """The "type" of a schema's root, through a root "$ref" into the schema itself: pydantic
    writes a recursive model as {"$defs": {"Node": {"type": "object", ...}}, "$ref":
    "#/$defs/Node"}, an object schema whose type sits in its definition."""
    node: Any = schema
    for _ in range(8):  # a reference to a reference; a loop of them ends here
        ref = node.get("$ref")
        if "type" in node or not (isinstance(ref, str) and ref.startswith("#/")):
            break
        node = schema
        for step in ref[2:].split("/"):
            step = step.replace("~1", "/").replace("~0", "~")
            node = node.get(step) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None
    return node.get("type")


def check_tools(tools: Any, *, enforced: bool = True) -> list[dict]:
    """`tools` as OpenAI takes them (InvalidRequest naming the field otherwise): at most
    MAX_TOOLS functions with unique names of TOOL_NAME's form, each `parameters` an object
    schema; one the grammar can enforce (grammar_check.check_schema) where `enforced`,
    false where no call may come (tool_choice "none", chats that only render them: no
    grammar is built from them, as vLLM builds none), where it is only held to the depth
    bound (grammar_check.check_nesting) the template's rendering needs."""
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools, got {len(tools)}", param="tools")
    seen: dict[str, int] = {}  # name -> its tool's index
    for i, t in enumerate(tools):
        _check_tool_shape(t, f"tools[{i}]")
        name = t["function"]["name"]
        if not TOOL_NAME.fullmatch(name):
            raise InvalidRequest(f"a function name must be 1 to 64 letters, digits, '_' or "
                                 f"'-', got {shown_json(name)}", param=f"tools[{i}].function.name")
        if name in seen:  # a call names its function: which schema would hold it?
            raise InvalidRequest(f"tools[{seen[name]}] and tools[{i}] are both named "
                                 f"{shown_json(name)}; function names must be unique",
                                 param=f"tools[{i}].function.name")
        seen[name] = i
        for field, kinds in (("description", (str,)), ("strict", (bool,))):
            check_type(t["function"].get(field), kinds, f"tools[{i}].function.{field}")
        params = t["function"].get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest("parameters must be a JSON schema object",
                                 param=f"tools[{i}].function.parameters")
        root = _root_type(params) if params else None
        if params and root != "object":  # as OpenAI refuses a string, an array
            raise InvalidRequest(f'parameters must be an object schema ({{"type": "object", '
                                 f'"properties": ...}}): a call\'s arguments are a JSON object, '
                                 f'got type {shown_json(root)}',
                                 param=f"tools[{i}].function.parameters")
        if params is not None:
            (check_schema if enforced else check_nesting)(
                params, f"tools[{i}].function.parameters")
        _check_json(t["function"], f"tools[{i}].function")
    return tools


def _check_json(function: dict, at: str) -> None:
    """InvalidRequest naming `at`.parameters, else `at` (a tool's function), where the
    Python API's tool holds a value JSON cannot write (bytes, a set, NaN, an integer of
    over 4300 digits): templates write the tools as JSON, and its TypeError or ValueError
    named no tool (NaN was written into the prompt). A request's JSON always passes."""
    for param, value in ((f"{at}.parameters", function.get("parameters")), (at, function)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"{param} is not JSON: {e}", param=param) from None
        except RecursionError:
            raise too_deep(param) from None


def _check_tool_shape(tool: Any, at: str) -> None:
    """InvalidRequest naming the first field of `tool` (at the path `at`) that is not
    OpenAI's {"type": "function", "function": {"name": ...}}."""
    shape = 'each tool must be {"type": "function", "function": {"name", "parameters"}}'
    check_type(tool, (dict,), at, required=True)
    if tool.get("type") != "function":
        raise InvalidRequest(f'{shape}: {at}.type must be "function", got '
                             f"{shown_json(tool.get('type'))}", param=f"{at}.type")
    if not isinstance(tool.get("function"), dict):
        raise InvalidRequest(f"{shape}: {at}.function must be an object", param=f"{at}.function")
    if not isinstance(tool["function"].get("name"), str):
        raise InvalidRequest(f"{shape}: {at}.function.name must be a string",
                             param=f"{at}.function.name")


def template_messages(messages: list[dict], tools: list[dict], template: str | None, *,
                      in_system: bool = True) -> list[dict]:
    """Messages for a chat template that knows nothing of tools (the default model's):
    the tools go in a system message in the Hermes format (with in_system false, at the head
    of the first user message), past calls into the assistant's text (a message so written
    to holds one string: its text parts joined). Templates that render tools themselves get
    the messages unchanged."""
    t = template or ""
    out = messages
    if "tool_calls" not in t and any(m.get("tool_calls") for m in messages):
        out = []
        for k, m in enumerate(messages):
            if m.get("tool_calls"):
                calls = "\n".join(_call_text(c, f"messages[{k}].tool_calls[{j}]")
                                  for j, c in enumerate(m["tool_calls"]))
                m = {**m, "content": (joined_text(m.get("content")) + "\n" + calls).strip()}
                m.pop("tool_calls")
            out.append(m)
    if tools and "tools" not in t:
        listing = "\n".join(json.dumps(x["function"]) for x in tools)
        system = ("You may call functions. Their signatures, in <tools></tools>:\n<tools>\n"
                  f"{listing}\n</tools>\nTo call one, answer with <tool_call>\n"
                  '{"name": <function name>, "arguments": <arguments object>}\n</tool_call>')
        if not in_system:
            i = next((i for i, m in enumerate(out) if m.get("role") == "user"), None)
            if i is not None:
                text = system + "\n\n" + joined_text(out[i].get("content"))
                return [*out[:i], {**out[i], "content": text}, *out[i + 1:]]
        if out and out[0].get("role") == "system":
            out = [{**out[0], "content": joined_text(out[0]["content"]) + "\n\n" + system},
                   *out[1:]]
        else:
            out = [{"role": "system", "content": system}, *out]
    return out


def _call_text(call: dict, at: str) -> str:
    """A past call (`at`: its place, messages[k].tool_calls[j]) as the Hermes format writes
    it, <tool_call> around its name and arguments as JSON; InvalidRequest naming its
    arguments where they are nested too deeply to write (the decoder took them a few frames
    shallower than json.dumps runs here: it was a 500)."""
    fn = call["function"]
    try:
        text = json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")})
    except RecursionError:
        raise too_deep(f"{at}.function.arguments") from None
    return f"<tool_call>\n{text}\n</tool_call>"


def tool_renderings(messages: list[dict], tools: list[dict], template: str | None
                     ) -> list[list[dict]]:
    """The messages to render a conversation with `tools` in, in the order to try them:
    template_messages' (the tools in a system message), then, where it differs, the tools at
    the head of the first user message, for a template that refuses the system message
    (Mistral's and Mixtral's v0.1 templates take alternating user and assistant turns only,
    and raise otherwise) and expects instructions in the user's turn."""
    shown = template_messages(messages, tools, template)
    user_turn = template_messages(messages, tools, template, in_system=False)
    # the same: no tools listed apart from the template, or no user turn
    return [shown] if user_turn == shown else [shown, user_turn]
