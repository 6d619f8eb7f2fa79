"""A chat template given in place of the tokenizer's (`aiollm serve --chat-template`, the
engine's chat_template option, a Python caller's per-chat template): read from a file or taken
as the text itself, and checked to be a Jinja template that compiles.

Imports neither torch nor transformers: `aiollm serve` checks its --chat-template here before
its Ctrl-C handling and the seconds of torch's imports (a bad template is a usage error at
once).
"""

from __future__ import annotations

from typing import Any

from aiollm.errors import InvalidRequest


def read_chat_template(value: str) -> str:
    """The chat template that `value` gives, as vLLM's --chat-template reads it: the text of
    the file at that path, or, when no file can be opened there and the value holds "{",
    "}" or a newline (no path does), the value itself (used as it is: backslash escapes
    are not decoded). The text of a template read once reads the same again. Raises
    ValueError, its message led by "chat_template", for a value that looks like a path but
    cannot be read, or a template that does not compile."""
    what = "chat_template"
    try:
        with open(value, encoding="utf-8") as f:
            text = f.read()
        what = f"chat_template file {value}"
    except (OSError, ValueError) as e:  # ValueError: a NUL in it; a file not UTF-8
        if isinstance(e, UnicodeDecodeError) or not any(c in value for c in "{}\n"):
            reason = "it is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e
            raise ValueError(f"chat_template {value!r} looks like a file path, but it cannot "
                             f"be read ({reason}); give a readable file of a Jinja chat "
                             "template, or the template itself") from None
        text = value
    else:  # the hints of check_template_source's messages are for a template given as text
        if not text:
            raise ValueError(f"{what} is empty: give a Jinja chat template")
        if not _has_tag(text):
            raise ValueError(f"{what} has no Jinja tag ({{{{ }}}} or {{% %}}), so it would "
                             "render the same text for every conversation, its messages "
                             "unread")
    try:
        check_template_source(text)
    except InvalidRequest as e:  # a config's error: not a request's
        raise ValueError(f"{what}{str(e).removeprefix('chat_template')}") from None
    return text


def check_template_source(source: Any) -> None:
    """Raise InvalidRequest naming chat_template unless `source` is a Jinja chat template
    that compiles (as transformers compiles templates: the same sandbox and extensions; one
    nested past Python's recursion limit does not) and has a tag (one without renders no
    message)."""
    from jinja2 import TemplateError

    from aiollm.model.serving_tokenizer import compile_chat_template

    if not isinstance(source, str) or not source:
        raise InvalidRequest("chat_template must be a Jinja template (a non-empty string; "
                             f"None: the tokenizer's own), got {source!r:.80}",
                             param="chat_template")
    if not _has_tag(source):  # a file's path given as the template
        raise InvalidRequest(f"chat_template has no Jinja tag ({{{{ }}}} or {{% %}}), so it "
                             "would render the same text for every conversation, its "
                             f"messages unread (a file's path, not its text?): got "
                             f"{source!r:.80}", param="chat_template")
    try:
        compile_chat_template(source)
    except TemplateError as e:
        raise InvalidRequest(f"chat_template does not compile ({type(e).__name__}: {e})",
                             param="chat_template") from None
    except RecursionError:  # jinja2 parses and compiles by recursion
        raise InvalidRequest("chat_template is nested too deeply to compile (brackets, "
                             "filters or blocks inside one another past Python's recursion "
                             "limit)", param="chat_template") from None


def _has_tag(source: str) -> bool:
    return "{{" in source or "{%" in source
