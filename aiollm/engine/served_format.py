"""The start's check of the served chat template against the content format the server was
given (--chat-template-content-format): one message rendered in that form, so that a
template that cannot render it is an error in the start-up log, not first a failed chat
request (each of which says the same, HTTP 500: chat_template.chat_token_ids)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiollm.engine.chat_template import chat_token_ids
from aiollm.engine.template_options import TemplateOptions
from aiollm.errors import ChatTemplateError, InvalidRequest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

FLAG = "--chat-template-content-format"  # how the server's operator gives the format


def check_served_format(tokenizer: PreTrainedTokenizerBase, content_format: str,
                        name: str = FLAG) -> None:
    """Log at error, naming it as `name` (the flag; create_app's caller gave its argument,
    chat_template_content_format) and what to give instead, where `content_format` (not
    "auto") is a form of message content the tokenizer's chat template cannot render one
    user message in while it renders the form it reads. Nothing is refused: a server
    starts as vLLM's does (which only warns that the format is not the one detected)."""
    if content_format == "auto" or not tokenizer.chat_template:
        return
    try:
        chat_token_ids(tokenizer, [{"role": "user", "content": "Hello"}],
                       options=TemplateOptions(content_format=content_format,
                                               content_format_name=name))
    except ChatTemplateError as e:
        log.error("%s; as served, every chat request fails", e)
    except InvalidRequest:
        pass  # the template refuses a lone user message in either form: nothing learnt
