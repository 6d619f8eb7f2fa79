"""The body of /v1/chat/completions (`ChatCompletionRequest`): its messages (`ChatMessage`),
tools, logprobs, reasoning and chat-template options (a request's own template only where
the server trusts it), OpenAI's fields it takes without effect (caching hints, identifiers),
and the fields, vLLM's and OpenAI's, it refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Union

import msgspec
from msgspec import Meta, Struct

from aiollm.api.openai_hints import PromptCacheOptions, check_chat_hints
from aiollm.api.protocol import check_max_tokens
from aiollm.api.sampling_fields import SamplingFields
from aiollm.engine.content_format import PARAM
from aiollm.engine.chat_messages import checked_message
from aiollm.engine.chat_template import MESSAGE_FRAMING, TemplateOptions
from aiollm.engine.submission import TOKENIZE_INLINE_CHARS, off_loop
from aiollm.errors import InvalidRequest, shown_json
from aiollm.sampling_params import MAX_LOGPROBS

if TYPE_CHECKING:
    from aiollm.api.tokenize_request import TokenizeRequest


TRUST_FLAG = "--trust-request-chat-template"  # `aiollm serve`'s name for the setting
TRUST_PARAM = "trust_request_chat_template"  # create_app's

# reasoning_effort's values, vLLM's ("max" is DeepSeek V4's, "xhigh" and "none" OpenAI's
# newer ones)
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

# OpenAI's `moderation` (chat and /v1/responses), refused: ignored, the answer would come
# unmoderated, with none of the scores or blocking it asks for
MODERATION_REFUSED = ("moderation is not served: the server runs no moderation model on the "
                      "input or the output; leave it out")


def chat_template_options(req: ChatCompletionRequest | TokenizeRequest,
                          trust_request_chat_template: bool,
                          content_format: str = "auto",
                          content_format_name: str = PARAM,
                          trust_name: str = TRUST_PARAM) -> TemplateOptions:
    """The request's chat-template options (the method of both request types that take them),
    with the server's `content_format` (--chat-template-content-format, or create_app's
    chat_template_content_format: `content_format_name` says which, for the messages of a
    template that cannot render it). A template of its
    own, `chat_template` (or vLLM's other place for it, `chat_template_kwargs.chat_template`;
    the field wins), renders the messages only where
    the server trusts request templates (TRUST_FLAG, as vLLM's): it runs the client's Jinja
    on the server, sandboxed by transformers but unbounded in time. Else InvalidRequest
    naming the field and the setting, as `trust_name` (create_app's argument, TRUST_PARAM,
    or `aiollm serve`'s flag, TRUST_FLAG); the template itself is checked as the engine
    renders.
    InvalidRequest too for a reasoning_effort not of vLLM's values. A chat request's
    reasoning_effort is the template's variable of that name, and sets enable_thinking
    (false for "none") where chat_template_kwargs leaves it out, as vLLM renders it."""
    kwargs = dict(req.chat_template_kwargs or {})
    in_kwargs = kwargs.pop("chat_template", None)
    effort = getattr(req, "reasoning_effort", None)  # a chat request's, not /tokenize's
    if effort is not None and effort not in REASONING_EFFORTS:
        raise InvalidRequest(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}"
                             f" (or null); got {shown_json(effort)}", param="reasoning_effort")
    if effort is not None:
        # as vLLM: the field over chat_template_kwargs' variable of that name, and thinking
        # on unless its effort is "none", where the client's enable_thinking says nothing
        kwargs["reasoning_effort"] = effort
        kwargs.setdefault("enable_thinking", effort != "none")
    template = req.chat_template if req.chat_template is not None else in_kwargs
    if template is not None and not trust_request_chat_template:
        param = ("chat_template" if req.chat_template is not None
                 else "chat_template_kwargs.chat_template")
        setting = trust_name if trust_name.startswith("--") else f"{trust_name}=True"
        raise InvalidRequest(f"a request's own chat template ({param}) is taken only by a "
                             f"server started with {setting}: leave it out to render with "
                             "the server's template", param=param)
    return TemplateOptions(req.add_generation_prompt, req.continue_final_message, kwargs,
                           template, req.documents, content_format, content_format_name)


class ContentPart(Struct, kw_only=True):
    """A part of a message's content; engine/chat_messages.py says which types are served
    (text parts, and an assistant's refusal parts)."""
    type: str
    text: str | None = None
    refusal: str | None = None  # an assistant's refusal part


class ChatMessage(Struct, kw_only=True):
    role: str
    # a plain string in the list is a text part, as vLLM takes it
    content: Union[str, list[Union[str, ContentPart]], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls, in the history
    tool_call_id: str | None = None  # a tool message answers this call
    # an assistant's reasoning, sent back in the history (DeepSeek's and SGLang's name, and
    # vLLM's newer one): templates such as Qwen3's render it (transformers also passes it as
    # `thinking`)
    reasoning_content: str | None = None
    reasoning: str | None = None

    def as_dict(self, index: int) -> dict[str, Any]:
        """The message as the chat template wants it (engine/chat_messages.py, the Engine
        API's check too). Raises InvalidRequest naming the field for a role or shape OpenAI
        refuses."""
        return checked_message(msgspec.to_builtins(self), f"messages[{index}]")


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    # a bool as vLLM's pydantic model reads one (1, "true": api/lax_bool.py), made one by
    # chat_completions before anything reads it
    logprobs: Any = False
    # -1 (vLLM's whole vocabulary) passes here to be refused by SamplingParams.check, which
    # says why (past the limit, as vLLM's default --max-logprobs refuses it)
    top_logprobs: Annotated[int, Meta(ge=-1, le=MAX_LOGPROBS)] | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    # vLLM's and SGLang's rendering options (TemplateOptions)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: the tokenizer's special tokens (a BOS) on top of what the template wrote
    add_special_tokens: bool = False
    # with --reasoning-parser: vLLM's include_reasoning false leaves the reasoning out of the
    # answer; SGLang's separate_reasoning false leaves the output unsplit (aiollm/api/reasoning.py)
    include_reasoning: bool = True
    separate_reasoning: bool = True
    # vLLM's: the rendered conversation's logprobs, beside the choices (chat_completions.py)
    prompt_logprobs: int | None = None
    # vLLM's: the request's own template (chat_template_options says when it is taken)
    chat_template: str | None = None
    # vLLM's: sources for retrieval-augmented generation, the template's `documents`
    documents: list[dict[str, str]] | None = None
    # OpenAI's, as vLLM takes it: the chat template's variable (chat_template_options)
    reasoning_effort: str | None = None
    # vLLM's: the last message's text before the answer where it is in the answer's role
    # (chat_completions.py)
    echo: bool | None = False
    # OpenAI's audio output: served as text alone (check_unserved)
    modalities: Any = None
    audio: Any = None
    # OpenAI's: the client's key-value pairs, read and checked (api/metadata.py), unused
    metadata: dict[str, Any] | None = None
    # OpenAI's, taken (types and values checked as OpenAI checks them: openai_hints.py) and
    # without effect here: caching hints (the prefix cache reuses every shared prefix, keyed
    # by none of them), the end user's id for abuse checks (`user`'s successors), a
    # processing tier, storage for OpenAI's evals (nothing is kept: the stored-completion
    # routes say so, stored_chat.py), a verbosity hint of its models, a predicted output
    # (which speeds up, never changes, OpenAI's answer). vLLM's ChatCompletionRequest names
    # them in its log.
    prompt_cache_key: str | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    verbosity: str | None = None
    prediction: dict[str, Any] | None = None
    # OpenAI's web search before the answer, and moderation of input and output: not served,
    # refused when sent (check_unserved)
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    def check_max_tokens(self) -> None:
        """The length field the request uses (max_completion_tokens over max_tokens) is >= 1,
        as vLLM takes it on chat: a prompt scored (prompt_logprobs) comes with an answer."""
        if self.max_completion_tokens is not None:
            check_max_tokens(self.max_completion_tokens, "max_completion_tokens")
        else:
            check_max_tokens(self.max_tokens, "max_tokens")

    template_options = chat_template_options

    def check_unserved(self) -> None:
        """Refuse the chat fields (vLLM's, OpenAI's) the server does not serve, when they would
        change the prompt or the output: ignored, they would answer another question than the
        one asked."""
        SamplingFields.check_unserved(self)
        if self.modalities is not None and not (
                isinstance(self.modalities, list)
                and all(m == "text" for m in self.modalities)):
            raise InvalidRequest('modalities other than ["text"] are not served: the model '
                                 'writes text alone (no audio)', param="modalities")
        if self.audio is not None:  # OpenAI's voice and format of an audio answer
            raise InvalidRequest("audio output is not served: the model writes text alone; "
                                 "leave audio out", param="audio")
        # ignored, they would answer without the search, or unmoderated (no scores, nothing
        # blocked): not what the client asked for
        if self.web_search_options is not None:
            raise InvalidRequest("web_search_options is not served: the server searches no "
                                 "web before answering; leave it out", param="web_search_options")
        if self.moderation is not None:
            raise InvalidRequest(MODERATION_REFUSED, param="moderation")
        check_chat_hints(self)  # taken, without effect, where OpenAI would take them


async def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Each of `messages` as the chat template wants it (ChatMessage.as_dict: InvalidRequest
    naming `messages[i]...`), checked off the event loop when they are many (off_loop
    weighing each message, each of its content parts and each of its tool calls
    MESSAGE_FRAMING characters): the checks of the hundreds of thousands of messages (or
    of one message's calls) a 16 MiB body holds take about a second, which would hold
    every other request's stream that long."""
    def checked() -> list[dict[str, Any]]:
        return [m.as_dict(i) for i, m in enumerate(messages)]

    size = MESSAGE_FRAMING * len(messages)
    if size <= TOKENIZE_INLINE_CHARS:  # a few messages: their parts and calls counted
        size += MESSAGE_FRAMING * sum(
            len(m.tool_calls or ()) + (len(m.content) if isinstance(m.content, list) else 0)
            for m in messages)
    return await off_loop(size, checked)
