"""TemplateOptions: what a caller may ask of a chat template's rendering, and its checks.

As vLLM and SGLang take it: no generation prompt, continuing the final (assistant) message,
the template's own variables (`chat_template_kwargs`, e.g. Qwen3's `enable_thinking`), the
documents of retrieval-augmented generation, the form of message content the template takes
(vLLM's chat-template content format: content_format.py), and (the Python API's alone: the
HTTP API refuses it per request) another template than the tokenizer's. chat_template.py
renders with them (and is where the Python API imports TemplateOptions from, as README
documents it).
Variables pass through to the template as they are, except that those the server gives a
meaning to are type-checked (`enable_thinking` is a boolean: "no" would turn thinking on), and
a typed variable sent as null is left out of the render (`variables`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiollm.engine.content_format import check_content_format
from aiollm.errors import InvalidRequest, check_type, shown_json
from aiollm.model.chat_template_source import check_template_source


# Names a template variable may not take: apply_chat_template's own arguments (transformers
# 5's included; "self" too, which its call would take as a second self) and what the renderer
# puts in the template's context (the special-token texts are added per tokenizer).
_RESERVED = frozenset({
    "self", "conversation", "messages", "tools", "documents", "chat_template",
    "add_generation_prompt", "continue_final_message", "tokenize", "sanitize_control_tokens",
    "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs", "raise_exception", "strftime_now",
    "special_tokens_map"})

# Variables the server gives a meaning to, and the one type each takes (null: not set, left
# out of the render). Templates test enable_thinking with `is false` or plain truth, so "no"
# or 0 would turn thinking on; and the reasoning split reads where the rendered prompt left
# the output (aiollm/api/reasoning.py), so a wrong value answers another question quietly.
_TYPED = {"enable_thinking": bool}


@dataclass(frozen=True, slots=True)
class TemplateOptions:
    """How a conversation is rendered (transformers' apply_chat_template arguments of the
    same names). add_generation_prompt: open the assistant's turn after the messages;
    continue_final_message: end the prompt inside the final message (its end-of-turn left
    out) so that the model continues it, which needs add_generation_prompt false; kwargs:
    variables of the template (`chat_template_kwargs`), each a bool, number, None or a
    string without control-token text, and `enable_thinking` a bool or None (None: not set,
    the template's default); chat_template: a Jinja chat template to render with in place
    of the tokenizer's (vLLM's LLM.chat(chat_template=...); None: the tokenizer's);
    documents: the sources of retrieval-augmented generation, given to the template as its
    `documents` variable (vLLM's chat field; each a dict of strings, such as {"title",
    "text"}; a template that renders none ignores them; control-token text in them stays
    plain text, as in message content); content_format: the form message content takes in
    the template, vLLM's chat_template_content_format (content_format.py): "string" (text
    parts joined), "openai" (a list of text parts) or "auto" (whichever the template
    reads); content_format_name: how its caller names content_format, for the messages
    that quote it (the server's --chat-template-content-format, LLM.chat's
    chat_template_content_format). `check` raises InvalidRequest naming the field
    (`chat_template_kwargs.enable_thinking`; `chat_template` for one that is no string or
    does not compile; `documents[1].text`; chat_template_content_format)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    documents: list[dict[str, str]] | None = None
    content_format: str = "auto"
    content_format_name: str = "content_format"

    def check(self, specials: list[str], reserved: frozenset[str] = frozenset()) -> None:
        """specials: control-token texts a string variable may not hold (it would be
        tokenized as the control token); reserved: more names variables may not take."""
        if self.add_generation_prompt and self.continue_final_message:
            raise InvalidRequest("continue_final_message needs add_generation_prompt false (a "
                                 "final message continued leaves no turn to open)",
                                 param="continue_final_message")
        check_content_format(self.content_format)
        if self.chat_template is not None:
            check_template_source(self.chat_template)
        _check_documents(self.documents)
        if not isinstance(self.kwargs, dict):
            raise InvalidRequest("chat_template_kwargs must be an object",
                                 param="chat_template_kwargs")
        for name, value in self.kwargs.items():
            param = f"chat_template_kwargs.{name}"
            if name in _RESERVED or name in reserved:
                raise InvalidRequest(f"{shown_json(name)} cannot be a template variable: the "
                                     "server sets it", param=param)
            if name in _TYPED:
                check_type(value, (_TYPED[name],), param)
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise InvalidRequest("template variables are booleans, numbers, strings or "
                                     "null", param=param)
            if isinstance(value, str) and any(t in value for t in specials):
                raise InvalidRequest("a template variable cannot hold control-token text",
                                     param=param)

    def variables(self) -> dict[str, Any]:
        """The template variables to render with: `kwargs` less the typed ones sent as null,
        which passed as None would count as set for the template's `is defined` and
        `| default(...)`, not give the template's default."""
        return {k: v for k, v in self.kwargs.items() if v is not None or k not in _TYPED}


def _check_documents(documents: Any) -> None:
    """InvalidRequest naming the place where `documents` is not None or a list of dicts of
    strings (vLLM's list[dict[str, str]])."""
    if documents is None:
        return
    if not isinstance(documents, (list, tuple)):
        raise InvalidRequest("documents must be a list of objects of strings, such as "
                             '{"title": ..., "text": ...}', param="documents")
    for i, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise InvalidRequest("a document must be an object of strings, such as "
                                 '{"title": ..., "text": ...}', param=f"documents[{i}]")
        for key, value in doc.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidRequest("a document's keys and values must be strings",
                                     param=f"documents[{i}].{key}")
