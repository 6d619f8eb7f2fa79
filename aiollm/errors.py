"""Errors the engine raises at its edge; the HTTP layer maps them to status codes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


# InvalidRequest.code of a prompt (with max_tokens) past the model's context: OpenAI's code,
# which clients read to shorten the conversation and retry
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# InvalidRequest.code of a required field left out ("messages is required"): OpenAI's code
MISSING_REQUIRED_PARAMETER = "missing_required_parameter"


class InvalidRequest(ValueError):
    """Bad input from a caller (HTTP 400). `param` names the offending field when known;
    `code` is OpenAI's error code when it has one (CONTEXT_LENGTH_EXCEEDED,
    MISSING_REQUIRED_PARAMETER), else None."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code

    def within(self, at: str, param: str | None = None) -> "InvalidRequest":
        """This error as the error of one item of a batch: the message prefixed with `at`
        (e.g. "conversations[2]: ..."), the param `param` when given, else `at` followed by
        this one's ("conversations[2].messages[1].role"), or `at` alone when this one names
        none; the code kept."""
        if param is None:
            param = f"{at}.{self.param}" if self.param else at
        return InvalidRequest(f"{at}: {self}", param=param, code=self.code)


def missing(param: str, more: str = "") -> InvalidRequest:
    """The error of the required field `param` left out: "{param} is required" followed by
    `more` (what to send, ": one of user, ..."), with OpenAI's code for it
    (MISSING_REQUIRED_PARAMETER), which its clients read."""
    return InvalidRequest(f"{param} is required{more}", param=param,
                          code=MISSING_REQUIRED_PARAMETER)


def too_deep(param: str) -> InvalidRequest:
    """The error of the field `param` (a call's arguments, a conversation) nested too
    deeply for the decoder, json.dumps or a template's walk to go through: their
    RecursionError, told as the client's input."""
    return InvalidRequest(f"{param} is nested too deeply to render", param=param)


class ContextExceeded(InvalidRequest):
    """A prompt that, with the output asked of it, does not fit the model's context (code
    CONTEXT_LENGTH_EXCEEDED). Its message names the prompt as the Engine API takes it ("the
    prompt"); an endpoint whose clients send it in other fields (chat's messages,
    LightLLM's inputs) has it told in their words (`told`) rather than the engine knowing
    every endpoint. `words` is the message with the places that name the prompt left as
    {subject} ("the prompt has"), {prompt} ("the prompt") and {advice} (what the caller
    may change, in the message of a prompt that fills the context)."""

    ENGINE_NAMING = ("the prompt has", "the prompt",
                     "shorten it (only a prompt scored with max_tokens 0 and prompt_logprobs, "
                     "which generates nothing, may fill the context)")

    def __init__(self, words: str, param: str, naming: tuple[str, str, str] = ENGINE_NAMING):
        subject, prompt, advice = naming
        super().__init__(words.format(subject=subject, prompt=prompt, advice=advice),
                         param=param, code=CONTEXT_LENGTH_EXCEEDED)
        self.words = words

    def told(self, subject: str, prompt: str, advice: str) -> ContextExceeded:
        """This error with the prompt named as an endpoint takes it: `subject` ("the
        messages have"), `prompt` ("the messages") and `advice` in its fields."""
        return ContextExceeded(self.words, self.param, (subject, prompt, advice))


# the most characters of a value an error message shows (a 400-digit max_tokens came back
# whole, twice, in its 400)
SHOWN_CHARS = 24


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(text: str, param: str) -> None:
    """Raise InvalidRequest naming `param` when `text` holds a lone surrogate (U+D800 to
    U+DFFF, which a Python str can hold but UTF-8 cannot encode): the tokenizer would fail on
    it with a TypeError that names neither the field nor the character."""
    if text.isascii():
        return
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise InvalidRequest(f"{param} is not valid Unicode: it holds the lone surrogate "
                             f"U+{ord(bad.group()):04X} at character {bad.start()}",
                             param=param)


ID_CHARS = 100  # the characters of a client's id an error names (a 16 MiB one is cut)


def shown_id(text: str) -> str:
    """A response id as an error names it: its repr, as OpenAI quotes it ("Previous
    response with id 'resp_...' not found"), cut to ID_CHARS characters with "..." after
    where it was longer. Other client values: shown_json."""
    return repr(text[:ID_CHARS]) + ("..." if len(text) > ID_CHARS else "")


def shown_json(value: Any) -> str:
    """A client's value (decoded from a JSON body) as an error quotes it: as JSON spells it
    ("foo", null, true, {"a":1}), not as Python's repr ('foo', None, True); a string cut
    to ID_CHARS characters, another value's JSON text cut to ID_CHARS, "..." after where
    it was longer. Only what is shown is spelled: a huge or deeply nested value costs no
    more than a short one. Never raises: a value no JSON body holds (NaN, bytes, a lone
    surrogate: the Engine API's Python values) is spelled as _spelled says."""
    if isinstance(value, str):
        return _spelled(value, ID_CHARS) + ("..." if len(value) > ID_CHARS else "")
    text = _spelled(value, ID_CHARS + 1)
    return text[:ID_CHARS] + ("..." if len(text) > ID_CHARS else "")


def _spelled(value: Any, room: int) -> str:
    """`value` as compact JSON; where that is longer than `room` characters (>= 0), at least
    its first `room` of it, the rest left out: a container's items are spelled only while
    room is left, so each level of nesting takes a character of room and the recursion is
    at most `room` deep. A string's characters are cut to `room`, one that prints as
    nothing or as a blank (a zero-width or no-break space, a lone surrogate: not
    str.isprintable) written as JSON's escape for it, as repr() escaped it: JSON would
    leave it as it is, and a tool name with a zero-width space was quoted as if it were
    right. A value JSON has no spelling for (NaN, bytes, another type) as Python's repr,
    an integer past Python's digits (sys.get_int_max_str_digits) by its size in bits."""
    if isinstance(value, str):
        text = json.dumps(value[:room], ensure_ascii=False)  # escapes controls and quotes
        if text.isprintable():
            return text
        # json.dumps' ASCII form escapes the one character (a pair of escapes past U+FFFF)
        return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        try:
            return repr(value)
        except ValueError:  # more digits than Python converts
            return f"(an integer of {value.bit_length()} bits)"
    if isinstance(value, (list, tuple, dict)):
        pairs = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        text = "{" if isinstance(value, dict) else "["
        for n, (key, item) in enumerate(pairs):
            if len(text) >= room:
                break
            text += "," if n else ""
            if isinstance(value, dict):
                text += _spelled(key, max(room - len(text), 0)) + ":"
            text += _spelled(item, max(room - len(text), 0))
        return text + ("}" if isinstance(value, dict) else "]")
    return repr(value)[:room + 1]  # a finite float as JSON spells it; NaN, bytes: Python's


def shown(value: Any) -> str:
    """`value` as an error message shows it: its repr, or for one longer than SHOWN_CHARS
    its first characters and its length ("100000000000...(401 digits)" for an integer; a
    number in a JSON body may have any number of digits)."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{text[:SHOWN_CHARS - 12]}...({len(text.lstrip('-'))} digits)"
    return f"{text[:SHOWN_CHARS - 12]}...({len(text)} characters)"


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object", type(None): "null"}


def json_type(value: Any) -> str:
    """What `value`, decoded from a JSON body, is in JSON's words, as an error names what
    was sent ("an integer", "an object", "null"; a type JSON does not have by its name)."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def check_type(value: Any, kinds: tuple[type, ...], param: str, *, required: bool = False
               ) -> Any:
    """`value`, when it is null (unless `required`) or of one of `kinds` (JSON's types as
    Python decodes them); InvalidRequest naming `param` otherwise, worded as the body's own
    type errors are ("response_format.json_schema.strict: expected a boolean, got a
    string"). For a field the body's Struct does not type: one nested in a free-form object
    (response_format, tools, chat_template_kwargs)."""
    if (value is None and not required) or (
            isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
        return value
    want = " or ".join(_TYPE_NAMES[k] for k in kinds)
    raise InvalidRequest(f"{param}: expected {want}, got {json_type(value)}", param=param)


def of_batch_item(exc: InvalidRequest, field: str, index: int,
                  name: str | None = None) -> InvalidRequest:
    """`exc` told of item `index` of the batch in `field` ("prompt" -> "prompt[3]"; `name`:
    the batch's own name when it differs, LLM.generate's "prompts"): an error about the item
    (param `field`) is named after it, and one about its length (a prompt and max_tokens past
    the context) says which item it counted, keeping its param; others come back as they
    are."""
    if exc.param != field and exc.code != CONTEXT_LENGTH_EXCEEDED:
        return exc
    item = f"{name or field}[{index}]"
    if exc.param != field:
        return exc.within(item, param=exc.param)
    # a place in the item ("prompt[2] is -1") is told as one in the batch ("prompt[3][2]")
    return InvalidRequest(f"{item}: {str(exc).replace(f'{field}[', f'{item}[')}", param=item,
                          code=exc.code)


@contextmanager
def naming_batch_item(field: str, index: int | None, name: str | None = None
                      ) -> Iterator[None]:
    """An InvalidRequest raised in the block is raised as of_batch_item(exc, field, index,
    name) tells it; with index None (no batch), as it is."""
    try:
        yield
    except InvalidRequest as e:
        if index is None:
            raise
        raise of_batch_item(e, field, index, name) from None


@contextmanager
def naming_params_item(index: int | None) -> Iterator[None]:
    """An InvalidRequest about a field of params (not the prompt, not the context's
    length) raised in the block is raised as params[index]'s (param
    "params[1].stop_token_ids"; one about params itself, "params[1]"): a batch given one
    SamplingParams per prompt. With index None (params the batch shares), as it is."""
    try:
        yield
    except InvalidRequest as e:
        if index is None or e.param in (None, "prompt") or e.code is not None:
            raise
        if e.param == "params":  # not SamplingParams at all
            raise e.within(f"params[{index}]", f"params[{index}]") from None
        if e.param.startswith("params"):
            raise
        raise e.within(f"params[{index}]", f"params[{index}].{e.param}") from None


class Overloaded(RuntimeError):
    """The waiting queue is full (HTTP 503 with Retry-After)."""


class EngineStopped(Overloaded):
    """The engine is stopped (Engine.stop() has run): it takes no request until it is
    started again, so retrying on it cannot help. An Overloaded, so that a server's
    request racing its shutdown still gets HTTP 503 (its client retries elsewhere, or once
    the server is back); the Engine API's callers catch it first to stop retrying."""


class ChatTemplateError(RuntimeError):
    """The chat template the engine serves with does not compile (a syntax error in the
    model's template), or is given message content in a form it cannot render (the
    server's --chat-template-content-format, where the form it reads renders): no
    conversation can be rendered, whatever the request holds. The server's fault, not the
    caller's (HTTP 500); what a template refuses of a conversation (its raise_exception)
    is an InvalidRequest naming messages."""


class RequestFailed(RuntimeError):
    """Serving one request failed inside the engine (HTTP 500); other requests go on."""
