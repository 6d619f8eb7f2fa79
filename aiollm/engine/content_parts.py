"""The text of a message's content: a string, or a list of content parts walked into text
parts. One walker for chat's messages (engine/chat_messages.py: the Engine API and
/v1/chat/completions) and the Responses API's input items (api/responses_request.py), so a
part one refuses the other refuses with the same words; the caller says where the content
is (the path its errors name) and which parts its API takes besides text parts. The parts
reach the chat template in the form engine/content_format.py resolves (one string, or the
list).
"""

from __future__ import annotations

from typing import Any

from aiollm.engine.submission import check_unicode
from aiollm.errors import InvalidRequest, check_type, json_type, missing, shown_json

# the part types whose `text` field is the part's text: OpenAI's chat part, and the Responses
# API's input and output parts, which vLLM takes in chat messages too
TEXT_PARTS = ("text", "input_text", "output_text")


def text_parts(content: Any, at: str, *, refusal: bool, strings: bool,
               thinking_hint: str = "") -> str | list[dict[str, str]]:
    """`content` (at the path `at`, e.g. "messages[1].content" or "input[0].output") as
    text: a string as it is; a list as its text parts, each {"type": "text", "text": ...}
    (from TEXT_PARTS; refusal parts where `refusal`: chat takes an assistant's, the
    Responses API any role's; plain strings where `strings`, as vLLM's chat takes them),
    as vLLM gives them to a template that reads parts (content_format.joined_text joins
    them for one that reads a string). Each text is checked for lone surrogates by its own
    path (joined, the template's check would name only the content).

    Raises InvalidRequest naming `at` for content neither a string nor a list, else the
    part (`{at}[j]`) or its field (`{at}[j].type`, `.text`, `.refusal`) for a part that is
    no object, has no string type, is of another type (images, audio, vLLM's "thinking":
    not text of the message; `thinking_hint` ends the error for a thinking part), or whose
    text is missing ("... is required") or no string (what was sent named, as the body's
    type errors are: "...text: expected a string, got null")."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{at} must be a string or a list of content parts, got "
                             f"{json_type(content)}", param=at)
    texts = []
    for j, part in enumerate(content):
        where = f"{at}[{j}]"
        if strings and isinstance(part, str):
            check_unicode(part, where)
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise InvalidRequest(f'{where} must be a content part: an object with a "type",'
                                 f" got {json_type(part)}", param=where)
        kind = part.get("type")
        if not isinstance(kind, str):
            # as vLLM: a part says what it is; a text part without its type is refused too
            if "type" not in part:
                raise missing(f"{where}.type", ': "text" or "input_text" for a text part')
            raise InvalidRequest(f"{where}.type: expected a string, got {json_type(kind)} "
                                 '("text" or "input_text" for a text part)',
                                 param=f"{where}.type")
        if kind not in TEXT_PARTS and not (kind == "refusal" and refusal):
            served = ", ".join(TEXT_PARTS) + (", refusal" if refusal
                                              else "; and an assistant's refusal parts")
            hint = thinking_hint if kind == "thinking" else ""
            # the path leads the message: the openai client shows the message, not the param
            raise InvalidRequest(f"{where}.type: {shown_json(kind)} parts are refused, the "
                                 f"model reads text only: only text content parts "
                                 f"({served}) are supported{hint}", param=f"{where}.type")
        field = "refusal" if kind == "refusal" else "text"
        if field not in part:  # told as missing, as a body's own missing field is
            article = "an" if kind[0] in "aeiou" else "a"  # an input_text, a refusal
            raise missing(f"{where}.{field}", f" ({article} {kind} content part's {field})")
        check_type(part[field], (str,), f"{where}.{field}", required=True)
        check_unicode(part[field], f"{where}.{field}")
        texts.append(part[field])
    return [{"type": "text", "text": text} for text in texts]
