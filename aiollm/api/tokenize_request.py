"""The bodies of /tokenize (`TokenizeRequest`: a prompt, or messages and tools for the chat
template) and /detokenize (`DetokenizeRequest`).
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from aiollm.api.chat_request import ChatMessage, chat_template_options


class TokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: Any = None  # with messages: rendered as the chat request renders them (vLLM's)
    # the tokenizer's special tokens (a BOS) added: by default to a prompt, not to messages
    # (on top of what the chat template wrote), as vLLM's two tokenize requests take it
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True  # with messages, as in ChatCompletionRequest
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None  # vLLM's, as chat takes it (chat_template_options)
    documents: list[dict[str, str]] | None = None  # as chat takes them
    return_token_strs: bool | None = False  # vLLM's: the tokens' vocabulary strings too

    template_options = chat_template_options


class DetokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    tokens: list[int]
