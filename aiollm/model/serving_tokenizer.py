"""ServingTokenizer: a saved fast tokenizer served without importing transformers.

Importing transformers and building its tokenizer costs 1.5-2.5 s of every start on a CPU;
what serving calls (encode, decode, special ids, chat templates) needs only the `tokenizers`
library (the Rust tokenizer transformers' fast tokenizers wrap) and jinja2. This class reads
a directory that transformers' save_pretrained wrote for a `TokenizersBackend` (the GGUF
conversion that aiollm caches, aiollm/model/derived_cache.py) and answers those calls as
transformers does: same ids, same text, same rendered template (tests/test_serving_tokenizer.py
compares them). Everything else (attributes it does not define, chat-template options it does
not handle) is answered by the transformers tokenizer of the same directory, loaded on first
use (`hf_tokenizer`); xgrammar reads the `tokenizers` backend (aiollm/engine/grammar_vocab.py).

Chat templates are rendered as transformers 4.4x-5.x renders them: a sandboxed jinja2
environment with trim_blocks and lstrip_blocks, the loopcontrols extension, a `tojson` filter
that keeps non-ASCII characters, the globals raise_exception and strftime_now, the special
tokens (bos_token, eos_token, ...) as variables; messages with their None-valued keys dropped
and reasoning aliased under its three names; the result encoded without added special tokens.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
_DECODE_ALONE = 256  # shorter id lists are decoded holding the GIL (no thread hand-off)
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
# apply_chat_template arguments handled here, with the values handled here
_TEMPLATE_DEFAULTS = {"documents": None, "chat_template": None, "continue_final_message": False,
                      "return_dict": False, "return_assistant_tokens_mask": False,
                      "sanitize_control_tokens": False, "tokenizer_kwargs": None,
                      "return_tensors": None, "padding": False, "truncation": False,
                      "max_length": None}


def splitting_copy(backend: Tokenizer) -> Tokenizer:
    """A second `tokenizers` Tokenizer like `backend` that encodes special tokens' text as
    plain text (encode_special_tokens set): transformers flips that flag on its one backend
    for each split_special_tokens encode, which a concurrent encode on another thread
    would read flipped."""
    splitting = Tokenizer.from_str(backend.to_str())
    splitting.encode_special_tokens = True
    return splitting


class NotServedNatively(ValueError):
    """A tokenizer whose transformers behaviour ServingTokenizer does not reproduce (its
    class or options): transformers serves it instead, as it serves an HF directory's."""


class ServingTokenizer:
    """The tokenizer in `directory` (tokenizer.json, tokenizer_config.json and optionally
    chat_template.jinja). Raises NotServedNatively (a ValueError) when the directory holds a
    tokenizer whose transformers behaviour this class does not reproduce (use transformers
    for it)."""

    def __init__(self, directory: str, name_or_path: str | None = None):
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            config = json.load(f)
        unsupported = [k for k in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces",
                                   "split_special_tokens") if config.get(k)]
        if config.get("tokenizer_class") != "TokenizersBackend" or unsupported:
            raise NotServedNatively(f"{directory}: tokenizer class "
                                    f"{config.get('tokenizer_class')!r} with "
                                    f"{unsupported or 'no options'} is not served natively")
        self.directory = directory
        self.name_or_path = name_or_path or directory
        self.backend_tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.clean_up_tokenization_spaces = False
        self.chat_template = _chat_template(directory, config)
        self.special_tokens_map = {k: _content(config[k]) for k in SPECIAL_TOKEN_NAMES
                                   if config.get(k) is not None}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        names = list(dict.fromkeys([*self.special_tokens_map.values(),
                                    *(_content(t) for t in extra)]))
        self.all_special_tokens = names
        self.all_special_ids = [self._id_or_unk(t) for t in names]
        self._hf = None
        self._splitting: Tokenizer | None = None
        self._hf_lock = threading.Lock()

    # -- what serving calls ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    # The batch calls release the GIL while they run (the single ones hold it: a long text
    # would stall the event loop, and its streams, for the whole encode).
    def encode(self, text: str, add_special_tokens: bool = True,
               split_special_tokens: bool = False) -> list[int]:
        """split_special_tokens: special tokens' text is encoded as plain text."""
        backend = self._splitting_backend() if split_special_tokens else self.backend_tokenizer
        return backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def _splitting_backend(self) -> Tokenizer:
        # made once, on first use (splitting_copy says why a copy)
        with self._hf_lock:
            if self._splitting is None:
                self._splitting = splitting_copy(self.backend_tokenizer)
            return self._splitting

    def decode(self, token_ids: int | list[int], skip_special_tokens: bool = False) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        if len(ids) < _DECODE_ALONE:
            return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.backend_tokenizer.decode_batch(
            [ids], skip_special_tokens=skip_special_tokens)[0]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self._id_or_unk(tokens)
        return [self._id_or_unk(t) for t in tokens]

    @property
    def added_tokens_decoder(self) -> dict:
        """id -> tokenizers.AddedToken (`.content` is its text)."""
        return dict(sorted(self.backend_tokenizer.get_added_tokens_decoder().items()))

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """tokenizer(text, ...): transformers' BatchEncoding (not used while serving)."""
        return self.hf_tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # bos_token, eos_token_id, ...: from the config
        base = name.removesuffix("_id")
        if base in SPECIAL_TOKEN_NAMES:
            token = self.__dict__.get("special_tokens_map", {}).get(base)
            return token if name == base or token is None else self._id_or_unk(token)
        if name.startswith("_"):  # copy/pickle probes must not load transformers
            raise AttributeError(name)
        return getattr(self.hf_tokenizer, name)

    # -- chat templates -------------------------------------------------------------------
    def apply_chat_template(self, conversation: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = True,
                            **kwargs: Any) -> list[int] | str | Any:
        """The conversation rendered by the chat template: its token ids (tokenize=True; a
        list, as transformers' return_dict=False gives them) or its text.

        `chat_template`: the template to render with (the tokenizer's when None), or the
        name of one of the tokenizer's named templates, as transformers takes it.
        Options other than documents=None, continue_final_message=False and the tokenizer's
        own defaults go to transformers' apply_chat_template, as do inputs that are not plain
        JSON data. Raises ValueError without a template, and jinja2's TemplateError for what
        the template refuses (its raise_exception; TemplateSyntaxError: it does not
        compile)."""
        options = {k: kwargs.pop(k) for k in _TEMPLATE_DEFAULTS if k in kwargs}
        source = options.pop("chat_template", None)
        named = self.chat_template if isinstance(self.chat_template, dict) else {}
        source = self.chat_template if source is None else named.get(source, source)
        messages = _plain_messages(conversation)
        if (any(v != _TEMPLATE_DEFAULTS[k] for k, v in options.items()) or messages is None
                or not _is_plain(tools) or not _is_plain(kwargs)
                or not isinstance(source, str)):  # named templates, or none
            return self.hf_tokenizer.apply_chat_template(
                conversation, tools=tools, add_generation_prompt=add_generation_prompt,
                tokenize=tokenize, chat_template=source if isinstance(source, str) else None,
                **options, **kwargs)
        template = compile_chat_template(source)
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation. "
                             "Provide at least one message.")
        text = template.render(messages=messages, tools=tools, documents=None,
                               add_generation_prompt=add_generation_prompt,
                               **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- the transformers tokenizer, for everything else -----------------------------------
    @property
    def hf_tokenizer(self):
        """The transformers tokenizer of the same directory (imports transformers once)."""
        with self._hf_lock:
            if self._hf is None:
                from transformers import AutoTokenizer

                log.debug("loading the transformers tokenizer of %s", self.directory)
                self._hf = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
                self._hf.name_or_path = self.name_or_path
            return self._hf

    def _id_or_unk(self, token: str) -> int | None:
        i = self.backend_tokenizer.token_to_id(token)
        if i is None and self.special_tokens_map.get("unk_token") is not None:
            return self.backend_tokenizer.token_to_id(self.special_tokens_map["unk_token"])
        return i


def _content(token: str | dict) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def _chat_template(directory: str, config: dict) -> str | dict | None:
    path = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(path):
        with open(path) as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates, as transformers saves several
        return {t["name"]: t["template"] for t in template}
    return template


_JSON_SCALARS = (str, int, float, bool, type(None))


def _is_plain(value: Any) -> bool:
    """Whether `value` is JSON data of exact built-in types (what the sandbox may see as is)."""
    if type(value) in _JSON_SCALARS:
        return True
    if type(value) is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    if type(value) in (list, tuple):
        return all(_is_plain(v) for v in value)
    return False


def _plain_messages(conversation: Any) -> list[dict] | None:
    """The messages with their None-valued keys dropped and reasoning under all three names
    (as transformers passes them to templates); None when they are not plain JSON data."""
    if type(conversation) not in (list, tuple) or not _is_plain(list(conversation)):
        return None
    messages = []
    for m in conversation:
        if type(m) is not dict:
            return None
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_KEYS if k in m), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        messages.append(m)
    return messages


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks the assistant's tokens for training
    masks): rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _SafeDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type's other attributes."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _SafeNamespace(jinja2.utils.Namespace):
    """jinja2's namespace() refusing underscore-prefixed names (no reach into internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates may not set underscore-prefixed names, got {name!r}")


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes HTML characters, which no chat template wants
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


# compiled chat templates kept, the most recently used: the served template (or its named
# ones) is used by every chat and stays; a Python caller's per-chat templates (LLM.chat's
# chat_template) beyond these are compiled again when used again (milliseconds)
COMPILED_TEMPLATES = 16
_compile_lock = threading.Lock()


def compile_chat_template(source: str) -> jinja2.Template:
    """The chat template `source` compiled as transformers compiles it (its extensions and
    globals), kept among the COMPILED_TEMPLATES used last; jinja2.TemplateSyntaxError for
    one that does not compile."""
    with _compile_lock:  # two threads asking for the same template compile it once
        return _compile(source)


@functools.lru_cache(maxsize=COMPILED_TEMPLATES)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=_SafeDict(), namespace=_SafeNamespace)
    return env.from_string(source)
