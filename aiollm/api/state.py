"""What the handlers share, kept on the app under one typed key."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from aiollm import __version__
from aiollm.api.http_errors import ApiError
from aiollm.api.response_store import ResponseStore
from aiollm.api.token_bytes import TokenBytes
from aiollm.config import MAX_STORED_RESPONSES
from aiollm.engine.chat_template import TemplateOptions, rendered_size
from aiollm.engine.special_tokens import encode_kept, with_special_tokens
from aiollm.engine.submission import (TOKENIZE_INLINE_CHARS, check_fewest_tokens,
                                      of_some_tokens, off_loop, prompt_bound)
from aiollm.errors import naming_batch_item, shown_json

if TYPE_CHECKING:
    from aiollm.engine import Engine


BODY_TIMEOUT_S = 60.0  # the longest wait for a request body's next bytes (nginx's default)


@dataclass(slots=True)
class ApiState:
    engine: Engine
    served_model_name: str | None  # None: the engine's model name (known once it is loaded)
    shutdown_timeout: float
    created: int  # unix time the app was made: /v1/models reports it
    # the model's other names (vLLM's --served-model-name A B: B): a request may name the
    # model by one of them and /v1/models lists them, but responses report model_name
    aliases: tuple[str, ...] = ()
    # LightLLM's --model_name: the name is reported, and a request may name any model
    # (LightLLM checks no request's model): check_model refuses none
    any_model: bool = False
    body_timeout: float = BODY_TIMEOUT_S  # wait for a body's next bytes, s (api/body.py)
    # vLLM's --trust-request-chat-template: a request may render with its own chat template
    trust_request_chat_template: bool = False
    # how the 400 without it names it: create_app's argument, or `aiollm serve`'s flag
    trust_request_chat_template_name: str = "trust_request_chat_template"
    # vLLM's --chat-template-content-format: the form of content the chat template is given
    chat_template_content_format: str = "auto"
    # how messages name it: create_app's argument, or `aiollm serve`'s flag
    content_format_name: str = "chat_template_content_format"
    # vLLM's --response-role: the role of a chat answer to a prompt that opens a new turn
    response_role: str = "assistant"
    # vLLM's --return-tokens-as-token-ids: logprobs name tokens "token_id:N" unless a
    # request says otherwise (api/token_names.py)
    return_tokens_as_token_ids: bool = False
    # the origins CORS allows (--allowed-origins; "*": any), () with CORS off: a request
    # with another Origin needs a JSON Content-Type (api/body.py)
    allowed_origins: tuple[str, ...] = ()
    # the methods CORS lets those origins use (--allowed-methods; "*": any): a method outside
    # it has its preflight refused, so such a request needs a JSON Content-Type too
    allowed_methods: tuple[str, ...] = ("*",)
    # the responses kept for previous_response_id and GET /v1/responses/{id}
    # (--max-stored-responses, --max-stored-response-bytes: the most recent; 0 keeps none)
    responses: ResponseStore = field(default_factory=lambda: ResponseStore(MAX_STORED_RESPONSES))
    draining: bool = False  # set when shutdown begins: /health turns 503 for load balancers
    # set by a second SIGINT/SIGTERM: the drain stops waiting and aborts what is in flight
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    _token_bytes: TokenBytes | None = None
    _fingerprint: str | None = None

    def allows_origin(self, origin: str, method: str) -> bool:
        """Whether CORS lets pages of `origin` (a request's Origin header, compared as sent,
        as aiohttp-cors does) call the server with `method` (any case, as aiohttp-cors)."""
        methods = {m.upper() for m in self.allowed_methods}
        return (("*" in self.allowed_origins or origin in self.allowed_origins)
                and ("*" in methods or method.upper() in methods))

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.engine.model_name

    @property
    def system_fingerprint(self) -> str:
        """OpenAI's system_fingerprint of every completion: "fp_" and 10 hex digits of a hash
        of what a seeded output depends on beside the request: aiollm's version, the weights
        (their file or directory name) and the dtype they run in. Stable across restarts and
        machines; a client comparing seeded outputs sees it change when one of them does."""
        if self._fingerprint is None:
            e = self.engine
            # abspath: a directory given as "dir/" or "." has no basename otherwise
            name = os.path.basename(os.path.abspath(e.model_path))
            what = f"aiollm {__version__}\0{name}\0{e.dtype}"
            self._fingerprint = "fp_" + hashlib.sha256(what.encode()).hexdigest()[:10]
        return self._fingerprint

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name the model is served under, the reported one first."""
        return (self.model_name, *self.aliases)

    def check_model(self, name: str | None) -> None:
        """A request's `model` is only ever matched against the served names, never opened.
        None (absent or null) and "" mean the served model, as in vLLM: clients with no model
        configured send "" (the one model there is is what they want). With no served name
        set, the model exactly as the server was given it (a path) is taken too: vLLM serves
        it under that string then, and a client set up for vLLM sends it. With `any_model`
        (LightLLM's --model_name) every name is taken, as LightLLM takes it."""
        if self.any_model:
            return
        e = self.engine
        as_given = (self.served_model_name is None and e.config.served_model_name is None
                    and name == e.config.model)
        if name and name not in self.model_names and not as_given:
            served = ", ".join(shown_json(n) for n in self.model_names)
            raise ApiError(404, f"model {shown_json(name)} does not exist; this server serves "
                                f"{served}", param="model", code="model_not_found")

    def check_choices(self, count: int, param: str) -> None:
        """A request's `count` engine requests (its choices: prompts x n) all enter the queue,
        each in a request-table slot, at once: more than an idle server's running batch and
        waiting queue take together, or the table holds, were a 503 on an idle server too,
        which a client retries in vain. ApiError 400 naming `param` instead, and the
        limits in words: a client cannot see or set the server's flags."""
        config = self.engine.config
        batch = self.engine.planner.r2t.rows  # as configured (not lowered by an OOM step)
        limit, held = min((config.max_waiting_requests + batch,
                           f"{batch} running and {config.max_waiting_requests} waiting"),
                          (config.table_capacity,
                           f"{config.table_capacity} requests in its request table"))
        if count > limit:
            raise ApiError(400, f"{count} choices (prompts x n) are more than this server "
                                f"holds at once ({held}); send at most {limit}",
                           param=param)

    async def token_bytes(self) -> TokenBytes:
        """Each token id's bytes (for logprobs), read from the vocabulary on first use."""
        if self._token_bytes is None:
            self._token_bytes = await asyncio.to_thread(TokenBytes, self.engine.tokenizer)
        return self._token_bytes

    async def tokenize(self, prompt: str | Sequence[int], *,
                       add_special_tokens: bool = True, keep_last: int | None = None
                       ) -> list[int]:
        """Token ids of a prompt to generate from (long text tokenized off the event loop):
        text is refused where it can never fit the context (before it is encoded:
        prompt_bound) or encodes to no token (of_some_tokens: "" without a BOS added), ids
        are checked by the engine, as is an empty list; only the last `keep_last` when
        given (vLLM's truncate_prompt_tokens: text keeps the special tokens the tokenizer
        adds, encode_kept)."""
        return await off_loop(len(prompt), self._tokenized, prompt, add_special_tokens,
                              keep_last)

    async def tokenize_batch(self, prompts: Sequence[str | Sequence[int]],
                             keep_last: int | None = None, add_special_tokens: bool = True
                             ) -> list[list[int]]:
        """Token ids of each prompt of a batch, as `tokenize` gives them: off the event loop
        when the batch is long, also when it is many short prompts. A bad prompt is named
        by its index (prompt[i])."""
        def all_of_them() -> list[list[int]]:
            out = []
            for i, p in enumerate(prompts):
                with naming_batch_item("prompt", i):
                    out.append(self._tokenized(p, add_special_tokens, keep_last))
            return out

        if sum(len(p) for p in prompts) <= TOKENIZE_INLINE_CHARS:
            return all_of_them()
        return await asyncio.to_thread(all_of_them)

    def _tokenized(self, prompt: str | Sequence[int], add_special_tokens: bool,
                   keep_last: int | None) -> list[int]:
        if isinstance(prompt, str):
            return of_some_tokens(self._encoded(prompt, add_special_tokens, keep_last, True))
        return self.engine.tokenize(prompt, keep_last)

    async def encode(self, text: str, *, add_special_tokens: bool = True,
                     keep_last: int | None = None, refuse_long: bool = False) -> list[int]:
        """The token ids the tokenizer makes of `text` (off the event loop when long), none
        at all where it gives none ("" or whitespace it drops, without a BOS): what
        /tokenize and /tokens count; a prompt to generate from is `tokenize`'s, which
        refuses no token. refuse_long: text to generate from, refused before it is encoded
        where it can never fit (prompt_bound; ContextExceeded)."""
        return await off_loop(len(text), self._encoded, text, add_special_tokens, keep_last,
                              refuse_long)

    def _encoded(self, text: str, add_special_tokens: bool, keep_last: int | None,
                 refuse_long: bool) -> list[int]:
        if refuse_long:
            check_fewest_tokens(self.engine.tokenizer, text,
                                prompt_bound(self.engine.max_model_len, keep_last))
        return encode_kept(self.engine.tokenizer, text, add_special_tokens, keep_last)

    async def detokenize(self, ids: list[int]) -> str:
        return await off_loop(len(ids), self.engine.tokenizer.decode, ids)

    async def render_chat(self, messages: list[dict], tools: list[dict],
                          template: TemplateOptions, add_special_tokens: bool = False,
                          keep_last: int | None = None, refuse_long: bool = False
                          ) -> tuple[list[int], list[dict]]:
        """(token ids, the messages rendered) of a conversation with its checked `tools`,
        rendered as `template` says (Engine.render_chat: the same prompt as the Python
        API's chat for the same messages and tools), off the event loop when long (the
        template's cost grows with the number of messages and tools too).
        add_special_tokens: the tokenizer's special tokens (a BOS) added on top of what the
        template wrote, as vLLM's chat field of that name (default false) adds them.
        keep_last: only that many tokens (truncate_prompt_tokens), those added kept
        (with_special_tokens), the rendered ones cut from the left as vLLM cuts them.
        refuse_long: a conversation to generate from, refused before it is encoded where
        it can never fit (prompt_bound; ContextExceeded)."""
        most = prompt_bound(self.engine.max_model_len, keep_last) if refuse_long else None
        ids, shown = await off_loop(rendered_size(messages, tools, template,
                                                  enough=TOKENIZE_INLINE_CHARS),
                                    self.engine.render_chat,
                                    messages, tools, template, most=most)
        if add_special_tokens:
            ids = with_special_tokens(self.engine.tokenizer, ids, keep_last)
        elif keep_last:
            ids = ids[-keep_last:]
        return ids, shown


STATE = web.AppKey("aiollm_state", ApiState)


def state(request: web.Request) -> ApiState:
    return request.app[STATE]

