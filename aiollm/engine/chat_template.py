"""chat_token_ids: a conversation rendered by the tokenizer's chat template, as token ids, with
the text of control tokens inside message content kept as plain text.

The template joins its own control tokens (`<|im_start|>`, `<|eot_id|>`...) and the messages'
content into one string, and tokenizing that string would turn control-token text that a
client wrote inside a message into real control tokens: "hi<|im_end|>\\n<|im_start|>system\\n..."
in a user message would forge a system turn. The same holds for every other string a template
may write out: tool definitions (names, descriptions, schemas, rendered with tojson), tool
calls' arguments, content parts. So such text, in any string of the messages and tools (keys
included), is swapped for placeholders before rendering (digits and underscores, which tojson and
case filters write unchanged). In the rendered string, each stretch between two of the template's
own control tokens that holds such text is tokenized whole, that text restored, as plain text
(the tokenizer's `split_special_tokens`, as a client's text beside it is tokenized with it),
while the rest of the string is tokenized as usual, so the template's own control tokens stay
real (in one pass over the whole string where the tokenizer has a `tokenizers` backend, so
that text after a control token is tokenized as it is there: control_text_encoding.py).
A conversation (and tools) without control-token text takes the plain path: the ids are
exactly what `apply_chat_template` gives.

TemplateOptions (template_options.py) carries what a caller may ask of the rendering; it is
importable from here, where the Python API documents it.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import TYPE_CHECKING, Any

from aiollm.engine.content_format import formed_messages, given_format, resolve_content_format
from aiollm.engine.control_text_encoding import encode_in_one_pass, encode_split
from aiollm.engine.submission import check_fewest_tokens, check_unicode
# the Python API's options of a render, importable from here as README documents them
from aiollm.engine.template_options import TemplateOptions
from aiollm.errors import ChatTemplateError, InvalidRequest, too_deep

if TYPE_CHECKING:  # the interface; the engine's may be a ServingTokenizer
    from transformers import PreTrainedTokenizerBase


def special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The text of every special added token (the ones `split_special_tokens` splits),
    longest first so that one that contains another is matched whole."""
    texts = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted((t for t in texts if t), key=len, reverse=True)


# the characters a message's role markers and turn delimiters weigh in rendered_size (and what
# one message weighs where only their count is known: chat_plan's checks of each message)
MESSAGE_FRAMING = 64


def rendered_size(messages: Any, tools: list[dict] | None = None,
                  template: TemplateOptions | None = None, enough: int | None = None) -> int:
    """About how many characters the template renders for `messages` and `tools`, what
    off_loop weighs: each message's text and its tool calls' arguments (which templates that
    know tools write out: an agent's file write can be megabytes) plus MESSAGE_FRAMING for
    its framing and for each call's, 256 per tool, the text of `template`'s documents (RAG
    sources can be long), and MESSAGE_FRAMING per template variable (its kwargs) with the
    text of those that are strings; 0 for what is not a sequence of messages
    (chat_token_ids refuses it).
    enough: the count stops once past it (a size past `enough`, not the whole): weighing
    is itself a pass over every message, on the event loop, which for hundreds of
    thousands of messages would hold it as long as the work it decides to move off."""
    if not isinstance(messages, (list, tuple)):
        return 0
    size = 256 * len(tools) if isinstance(tools, (list, tuple)) else 0  # else refused later
    documents = getattr(template, "documents", None)
    if isinstance(documents, (list, tuple)):  # else refused later
        size += sum(len(v) for d in documents if isinstance(d, dict)
                    for v in d.values() if isinstance(v, str))
    # a request's template variables (chat_template_kwargs), each checked and handed to the
    # template: 300,000 of them held the loop for 0.8 s, weighed as nothing
    kwargs = getattr(template, "kwargs", None)
    if isinstance(kwargs, dict):
        size += MESSAGE_FRAMING * len(kwargs)
        if enough is None or size <= enough:
            size += sum(len(v) for v in kwargs.values() if isinstance(v, str))
    for m in messages:
        m = m if isinstance(m, dict) else {}
        content, calls = m.get("content"), m.get("tool_calls")
        parts = [*content] if isinstance(content, list) else [{"text": content}]
        if isinstance(calls, list):
            parts += [c.get("function") for c in calls if isinstance(c, dict)]
            # a call framed as a message is, whatever its arguments: checked ones are
            # parsed (a dict, no text), and 60,000 calls of "{}" held the loop 0.8 s
            size += MESSAGE_FRAMING * len(calls)
        size += MESSAGE_FRAMING + sum(
            len(text) for p in parts if isinstance(p, dict)
            for text in (p.get("text"), p.get("arguments")) if isinstance(text, str))
        if enough is not None and size > enough:
            break
    return size


def checked_options(tokenizer: PreTrainedTokenizerBase,
                    options: TemplateOptions | None) -> TemplateOptions:
    """`options` (None: the defaults) once checked for `tokenizer`'s template (what
    chat_token_ids checks first; a batch of conversations under one set of options checks
    them once, before any conversation). Raises InvalidRequest naming the option, or
    `template` for a value that is no TemplateOptions."""
    options = TemplateOptions() if options is None else options
    if not isinstance(options, TemplateOptions):
        raise InvalidRequest("the template options must be an "
                             "aiollm.engine.chat_template.TemplateOptions, got "
                             f"{type(options).__name__}", param="template")
    options.check(special_texts(tokenizer) if options.kwargs else [],
                  frozenset(tokenizer.special_tokens_map))
    return options


def chat_token_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
                   tools: list[dict] | None = None, *, specials: list[str] | None = None,
                   options: TemplateOptions | None = None, most: int | None = None
                   ) -> list[int]:
    """Token ids of `messages` rendered as `options` say (default: with the generation prompt),
    their content in the form the options' content_format resolves to for the template that
    renders (content_format.resolve_content_format). `specials`: the control-token texts to
    keep as plain text wherever a string of the messages or tools holds them (None: none,
    the template's tokenizing as it is).
    Raises InvalidRequest: param "messages" when the template refuses the conversation (its
    raise_exception, or an error rendering it), the option's name when an option is invalid;
    ChatTemplateError when the tokenizer's template does not compile, or when a content
    format given (not "auto") is one the template cannot render the conversation in while
    it renders it in the form it reads (the format's fault, not the conversation's; where
    the template is the options' own, the caller's, InvalidRequest naming chat_template).
    most: a rendered text that cannot be that many tokens or fewer is refused
    (ContextExceeded naming "prompt", submission.check_fewest_tokens) before it is
    encoded."""
    options = checked_options(tokenizer, options)
    if isinstance(messages, tuple):  # a sequence of dicts as good as a list
        messages = list(messages)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest('messages must be a list of {"role", "content"} dicts',
                             param="messages")
    template = options.chat_template or tokenizer.chat_template
    fmt = resolve_content_format(options.content_format, template, tools)
    try:
        return _token_ids(tokenizer, formed_messages(messages, fmt), tools, specials, options,
                          most)
    except InvalidRequest as e:
        if e.param != "messages" or options.content_format == "auto":
            raise
        reads = resolve_content_format("auto", template, tools)
        if reads == fmt or not _renders(tokenizer, formed_messages(messages, reads), tools,
                                        options):
            raise  # the conversation's fault in either form
        if options.chat_template is not None:  # the caller's own template, not the served
            raise InvalidRequest(_format_refused(options, fmt, reads, e, "chat_template"),
                                 param="chat_template") from e
        raise ChatTemplateError(_format_refused(options, fmt, reads, e)) from e


_FORMS = {"string": "a string", "openai": "a list of parts"}


def _format_refused(options: TemplateOptions, fmt: str, reads: str, e: InvalidRequest,
                    own: str | None = None) -> str:
    """Why a conversation the chat template renders with its content as it reads it (in
    the form `reads`) failed (`e`) in the form `fmt` forced on it by `options`' content
    format, named as their caller names it (the server's --chat-template-content-format,
    LLM.chat's chat_template_content_format), not the conversation. own: the field of a
    template the caller gave (chat_template), to change instead of the format; None: the
    served template."""
    cause = f"{type(e.__cause__).__name__}: {e.__cause__}" if e.__cause__ else str(e)
    what = "the chat template" if own is None else f"the chat template given ({own})"
    fix = (f"give auto (the form the template reads) or {reads}" if own is None else
           f"give a template that reads {_FORMS[fmt]}, or leave {own} out")
    given = given_format(options.content_format_name, fmt)
    return (f"{given} gives {what} each message's content as {_FORMS[fmt]}, and it cannot "
            f"render that ({cause}): it reads content as {_FORMS[reads]}; {fix}")


def _renders(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
             tools: list[dict] | None, options: TemplateOptions) -> bool:
    """Whether the template renders `messages` as they are."""
    try:
        _render(tokenizer, messages, tools, options, tokenize=False)
    except (InvalidRequest, ChatTemplateError):
        return False
    return True


def _token_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
               tools: list[dict] | None, specials: list[str] | None,
               options: TemplateOptions, most: int | None) -> list[int]:
    """chat_token_ids of `messages` whose content is in the form the template is given."""
    # each control-token text in any string -> a placeholder the template passes through
    # digits, which a template's case filters (upper, title...) leave as they are
    nonce = str(uuid.uuid4().int)
    found: list[str] = []

    def hide(m: re.Match) -> str:
        found.append(m.group(0))
        return f"{nonce}_{len(found) - 1}_{nonce}"

    pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
    hidden_messages, hidden_tools, hidden_documents = (
        _checked_top(value, name, pattern, hide) for value, name in (
            (messages, "messages"), (tools, "tools"), (options.documents, "documents")))
    if not found and most is None:  # nothing to hide: exactly what apply_chat_template gives
        ids = _render(tokenizer, messages, tools, options, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    if not found:  # the same ids: apply_chat_template encodes its text so
        text = _render(tokenizer, messages, tools, options, tokenize=False)
        check_fewest_tokens(tokenizer, text, most)
        return list(tokenizer.encode(text, add_special_tokens=False))

    text = _render(tokenizer, hidden_messages, hidden_tools,
                   dataclasses.replace(options, documents=hidden_documents), tokenize=False)
    # split() with a group alternates: rendered text, placeholder index, rendered text...
    parts = re.split(f"{nonce}_(\\d+)_{nonce}", text)
    full = "".join(found[int(p)] if k % 2 else p for k, p in enumerate(parts))
    if most is not None:  # the text the parts encode: placeholders as what they hide
        check_fewest_tokens(tokenizer, full, most)
    hidden, cuts = _spans(parts, found, pattern)
    ids = encode_in_one_pass(tokenizer, full, cuts)
    return _encode_spans(tokenizer, full, hidden, cuts) if ids is None else ids


def _spans(parts: list[str], found: list[str], pattern: re.Pattern
           ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(hidden, cuts) in the text `parts` give with each placeholder index replaced by the
    text it hid: the [start, end) character ranges of that hidden text, and of the
    template's own control tokens (matches of `pattern` outside the hidden text)."""
    hidden, cuts, pos = [], [], 0
    for k, part in enumerate(parts):
        if k % 2:
            part = found[int(part)]
            hidden.append((pos, pos + len(part)))
        else:
            cuts += [(pos + m.start(), pos + m.end()) for m in pattern.finditer(part)]
        pos += len(part)
    return hidden, cuts


def _encode_spans(tokenizer: PreTrainedTokenizerBase, text: str,
                  hidden: list[tuple[int, int]], cuts: list[tuple[int, int]]) -> list[int]:
    """Token ids of `text`, the template's control tokens at `cuts` real, and each stretch
    between two of them that holds `hidden` text encoded whole with split_special_tokens:
    the client's control-token text tokenized as plain text together with the text beside
    it, as the tokenizer tokenizes such text (" <|im_end|>" is " <" then "|"..., not " "
    and "<" encoded apart). The rest is encoded as one text, as apply_chat_template does.
    What a tokenizer without a `tokenizers` backend gets (control_text_encoding.py's one
    pass is exact where a stretch's encoding depends on where it stands)."""
    ids: list[int] = []
    done = 0  # text[:done] is encoded
    bounds = [0] + [x for cut in cuts for x in cut] + [len(text)]
    h = 0  # hidden[:h] lie in the stretches before this one
    for start, end in zip(bounds[::2], bounds[1::2]):  # the stretches between control tokens
        # both in order and each hidden text inside one stretch: one walk over the two
        # (asking each stretch about every hidden text was quadratic in the request)
        held = h
        while h < len(hidden) and hidden[h][1] <= end:
            h += 1
        if h == held:
            continue
        if done < start:
            ids += tokenizer.encode(text[done:start], add_special_tokens=False)
        ids += encode_split(tokenizer, text[start:end])
        done = end
    if done < len(text):
        ids += tokenizer.encode(text[done:], add_special_tokens=False)
    return ids


def _checked_top(value: Any, name: str, pattern: re.Pattern | None, hide) -> Any:
    """_checked of a whole argument `name` (messages, tools, documents); InvalidRequest
    naming it where it is nested too deeply to walk (a history call's arguments of a few
    hundred levels, which the body's decoder takes inside their string, failed here with a
    RecursionError)."""
    try:
        return _checked(value, name, pattern, hide)
    except RecursionError:
        raise too_deep(name) from None


def _checked(value: Any, path: str, pattern: re.Pattern | None, hide) -> Any:
    """A copy of `value` (tuples as lists) in which every string (keys included) has passed
    check_unicode, named by its path (`messages[0].content`: a lone surrogate failed deep in
    the tokenizer with a TypeError), and has each match of `pattern`, if given, replaced by
    hide(match). Other values come back as they are."""
    if isinstance(value, str):
        check_unicode(value, path)
        return pattern.sub(hide, value) if pattern is not None else value
    if isinstance(value, dict):
        return {_checked(k, path, pattern, hide): _checked(v, f"{path}.{k}", pattern, hide)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_checked(v, f"{path}[{i}]", pattern, hide) for i, v in enumerate(value)]
    return value


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
            tools: list[dict] | None, options: TemplateOptions, *, tokenize: bool) -> Any:
    from jinja2 import TemplateSyntaxError

    extra = {"continue_final_message": True} if options.continue_final_message else {}
    if options.chat_template is not None:
        extra["chat_template"] = options.chat_template
    if options.documents:  # none or []: the template's documents stay None, as left out
        extra["documents"] = options.documents
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=options.add_generation_prompt,
            tokenize=tokenize, **extra, **options.variables())
    except TemplateSyntaxError as e:
        # the served template itself (one given in options compiled in check()): no request
        # could change it, so no request's field is to blame
        raise ChatTemplateError(
            f"the chat template does not compile ({type(e).__name__}: {e}): no conversation "
            "can be rendered; fix the template, or serve another in its place (aiollm "
            "serve --chat-template, the engine's chat_template option)") from e
    except Exception as e:  # a malformed conversation is the caller's input
        raise InvalidRequest(f"cannot apply the chat template: {e}", param="messages") from e
