"""ChatAPI: the Engine's request API for conversations: chat() and stream_chat() (generate()
and stream() on a conversation under the chat template), render_chat() (the prompt every
chat of aiollm renders: the HTTP API's, chat()'s, LLM.chat's) and chat_prompt() (the
template applied). The messages' and tools' checks are chat_messages.py's and chat_tools.py's,
the template's rendering chat_template.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiollm.engine.add_request import params_bound
from aiollm.engine.cache_salt import checked_salt
from aiollm.engine.chat_messages import checked_messages
from aiollm.engine.chat_template import chat_token_ids, rendered_size, special_texts
from aiollm.engine.chat_tools import check_tools, tool_renderings
from aiollm.engine.content_format import rendering_template
from aiollm.engine.outputs import Delta, RequestOutput
from aiollm.engine.submission import TOKENIZE_INLINE_CHARS, off_loop
from aiollm.engine.template_options import TemplateOptions
from aiollm.errors import ContextExceeded, InvalidRequest
from aiollm.sampling_params import SamplingParams


class ChatAPI:
    """The chat methods of Engine, which it inherits (a mixin with no state of its own: it
    reads Engine's tokenizer and config, and keeps the control-token texts in Engine's
    _content_specials on first use). They render a conversation to token ids and hand them
    to EngineAPI's generate() and stream()."""

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None,
                    template: TemplateOptions | None = None, *, most: int | None = None
                    ) -> list[int]:
        """Token ids of a conversation with the chat template applied as `template` says
        (default: the assistant's turn opened); control-token text in message content stays
        plain text unless config.special_tokens_in_content. `messages` as the template takes
        them: chat() and the HTTP API check and shape theirs first (chat_messages.py).
        most: a rendering that cannot be that many tokens or fewer is refused before it is
        encoded (chat_token_ids)."""
        self._check_started()
        if self._content_specials is None:
            self._content_specials = ([] if self.config.special_tokens_in_content
                                      else special_texts(self.tokenizer))
        return chat_token_ids(self.tokenizer, messages, tools, specials=self._content_specials,
                              options=template, most=most)

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None,
                    template: TemplateOptions | None = None, *, most: int | None = None
                    ) -> tuple[list[int], list[dict]]:
        """(token ids, the messages rendered) of a conversation as every chat of aiollm
        renders it (the HTTP API, chat(), LLM.chat), under `template`'s options and its
        chat_template if it gives one: `messages` as chat_messages.checked_messages gives
        them and `tools` as chat_tools.check_tools does, both given to a template that
        knows them; one that knows no tools (the default model's) is shown them, and past
        calls, in the messages (chat_tools.tool_renderings), and one that refuses a system
        turn, at the head of the first user message. InvalidRequest as chat_prompt raises
        it (the last rendering's, when the template takes none); ChatTemplateError when the
        template does not compile. most: a rendering that cannot be that many tokens or
        fewer is refused (ContextExceeded naming "prompt") before it is encoded, as
        generating from its ids would refuse them (None: never: /tokenize counts it)."""
        source = (template.chat_template if isinstance(template, TemplateOptions) else None)
        *first, last = tool_renderings(messages, tools or [], rendering_template(
            source or self.tokenizer.chat_template, tools))
        for shown in first:
            try:
                return self.chat_prompt(shown, tools or None, template, most=most), shown
            except ContextExceeded:  # the template took it: it is too long, not refused
                raise
            except InvalidRequest:
                continue
        return self.chat_prompt(last, tools or None, template, most=most), last

    async def chat(self, messages: list[dict], params: SamplingParams | None = None,
                   template: TemplateOptions | None = None,
                   tools: list[dict] | None = None, *, request_id: str | None = None,
                   cache_salt: str | None = None) -> RequestOutput:
        """generate() on a conversation ({"role", "content"} dicts, checked as the HTTP API
        checks them: InvalidRequest naming the field, engine/chat_messages.py) under the
        chat template (a long one rendered and tokenized off the loop), with `tools`
        (OpenAI's function tools, checked as the HTTP API checks them under tool_choice
        "none", no grammar being built from them: InvalidRequest naming `tools[i]...`): the
        prompt is the one /v1/chat/completions renders for the
        same messages, tools and options (render_chat). The output is the model's text, any
        calls in it unparsed, as vLLM's LLM.chat gives it. `request_id`, `cache_salt`: as
        generate() takes them (an abort while the conversation renders ends the call);
        they and `params` (InvalidRequest naming the field, as generate() names it) are
        checked before the messages are rendered."""
        checked_salt(cache_salt)
        call = self._claim(request_id)
        try:
            size = rendered_size(messages, tools, template, TOKENIZE_INLINE_CHARS)
            ids = await off_loop(size, self._chat_ids, messages, template, tools,
                                 self._most(params))
            return await self._generate(call, ids, params, cache_salt)
        finally:
            self._request_ids.release(call)

    def stream_chat(self, messages: list[dict], params: SamplingParams | None = None,
                    template: TemplateOptions | None = None,
                    tools: list[dict] | None = None, *, request_id: str | None = None,
                    cache_salt: str | None = None) -> AsyncIterator[Delta]:
        """stream() on a conversation under the chat template, with `tools`, checked and
        rendered as chat() checks and renders them; `request_id`, `cache_salt` as stream()
        takes them."""
        checked_salt(cache_salt)
        return self.stream(self._chat_ids(messages, template, tools, self._most(params)),
                           params, request_id=request_id, cache_salt=cache_salt)

    def _chat_ids(self, messages: list[dict], template: TemplateOptions | None,
                  tools: list[dict] | None, most: int | None) -> list[int]:
        self._check_started()  # a usage error before any complaint about the messages
        messages = checked_messages(messages)
        if tools is not None:
            # rendered only (no call is parsed or held to a grammar): vLLM takes any schema
            tools = check_tools(list(tools) if isinstance(tools, tuple) else tools,
                                enforced=False)
        return self.render_chat(messages, tools, template, most=most)[0]

    def _most(self, params: SamplingParams | None) -> int | None:
        """The most tokens a conversation may render to under `params` (render_chat's
        most; params_bound: bad params refused first, as generate() refuses them before
        the prompt's length)."""
        return params_bound(params, self.max_model_len) if self._started else None
