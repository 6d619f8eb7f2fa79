"""OpenAI's request fields that change nothing here (caching hints, a processing tier, a
verbosity hint, a predicted output, the end user's safety_identifier), taken by
/v1/chat/completions and /v1/responses: their values checked as OpenAI's API checks them
(the enumerations of openai 3.x's completion_create_params, the shape of its
ChatCompletionPredictionContentParam, safety_identifier's length), so that a
request OpenAI answers with a 400 naming the field gets that 400 here too, rather than an
answer to a request that no server of this API takes ("verbosity": "loud").

prompt_cache_options is a Struct of OpenAI's keys (chat's two; /v1/responses' four, with
comparison_response_id and prewarm, whose true asks for no output and is refused), so that
another key in it is named in the unknown-field line of the log (unknown_fields.py), as an
unknown top-level field is, and left out of the Response that echoes the options. OpenAI
answers an unknown key at any depth with a 400 (unknown_parameter); this server refuses none
at the top level (vLLM's way), and a key inside this object is held to the same rule.

Every chat answer and Response reports the tier that served it (SERVED_TIER), as OpenAI
does, not the service_tier the request asked for.

Two lists OpenAI keeps growing are held to their type alone: service_tier (its SDK added
"fast", then "ultrafast" on /v1/responses) and prompt_cache_options.ttl ("30m" is "currently
the only supported value"). Their new values change nothing here either, and a client that a
newer SDK lets send one must not be refused for it.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from aiollm.errors import InvalidRequest, check_type, shown_json

# each field's values, as openai 3.x's completion_create_params (and response_create_params)
# spell them
VERBOSITIES = ("low", "medium", "high")
# "in-memory" as OpenAI first spelt it (the SDK's types of 2025), before "in_memory"
PROMPT_CACHE_RETENTIONS = ("in_memory", "in-memory", "24h")
PROMPT_CACHE_MODES = ("implicit", "explicit")
# OpenAI's bound on safety_identifier (openai 3.x's docstring: "a maximum length of 128
# characters"; 64 in its 2025 text); OpenAI answers a longer one with a 400 naming it
SAFETY_IDENTIFIER_CHARS = 128
# the tier every answer reports, whatever service_tier asked for: OpenAI reports the tier
# that served the request ("default" for a normal one, also where "auto" was asked; "flex"
# or "priority" only where that processing ran), and this server has one way of serving
SERVED_TIER = "default"


class PromptCacheOptions(Struct, kw_only=True, omit_defaults=True):
    """Chat's prompt_cache_options (openai 3.x's PromptCacheOptions): `mode` (one of
    PROMPT_CACHE_MODES) and `ttl` (a string: "30m" is its only value today), each checked
    by check_prompt_cache. Encoded with the keys the request sent (omit_defaults), as the
    Response echoes it; a key sent as null is left out too."""

    mode: str | None = None
    ttl: str | None = None


class ResponsePromptCacheOptions(PromptCacheOptions, kw_only=True, omit_defaults=True):
    """/v1/responses' prompt_cache_options (openai 3.x's response_create_params
    .PromptCacheOptions): chat's mode and ttl, and `comparison_response_id` (a response
    whose cache reuse OpenAI's diagnostics compare: echoed, as OpenAI's Response carries
    it back, and otherwise unused) and `prewarm` (fill the prompt cache and generate no
    output: true is refused by check_prompt_cache, as the output would not be the one
    asked for)."""

    comparison_response_id: str | None = None
    prewarm: bool | None = None


def check_choice(value: Any, choices: tuple[str, ...], param: str) -> None:
    """InvalidRequest naming `param` where `value` (a string, its type already checked) is
    neither null nor one of `choices`."""
    if value is not None and value not in choices:
        raise InvalidRequest(f"{param} must be one of {', '.join(choices)} (or null); got "
                             f"{shown_json(value)}", param=param)


def check_prompt_cache(retention: str | None, options: PromptCacheOptions | None) -> None:
    """prompt_cache_retention and prompt_cache_options.mode, each one of OpenAI's values
    (ttl, a string, was typed as the body was decoded: its list grows); InvalidRequest
    naming the first that is not, or naming prompt_cache_options.prewarm where it is true
    (/v1/responses': OpenAI then generates nothing, and this server serves no such
    request)."""
    check_choice(retention, PROMPT_CACHE_RETENTIONS, "prompt_cache_retention")
    if options is not None:
        check_choice(options.mode, PROMPT_CACHE_MODES, "prompt_cache_options.mode")
    if isinstance(options, ResponsePromptCacheOptions) and options.prewarm:
        raise InvalidRequest("prompt_cache_options.prewarm true (fill the prompt cache and "
                             "generate no output) is not served: every request here is "
                             "answered with output (the prefix cache keeps each prompt it "
                             "serves); send false or leave it out",
                             param="prompt_cache_options.prewarm")


def check_safety_identifier(value: str | None) -> None:
    """InvalidRequest naming safety_identifier where `value` (a string, its type already
    checked) is longer than SAFETY_IDENTIFIER_CHARS characters, as OpenAI refuses it."""
    if value is not None and len(value) > SAFETY_IDENTIFIER_CHARS:
        raise InvalidRequest(f"safety_identifier has {len(value)} characters: at most "
                             f"{SAFETY_IDENTIFIER_CHARS} are taken (a hash of the user's "
                             "name or address fits)", param="safety_identifier")


def check_prediction(prediction: dict[str, Any] | None) -> None:
    """A chat request's predicted output, as OpenAI takes it: {"type": "content", "content":
    a string, or a list of text parts ({"type": "text", "text": a string})}. InvalidRequest
    naming the field (prediction.type, prediction.content[1].type...) otherwise: an image or
    an audio part predicts no text."""
    if prediction is None:
        return
    kind = check_type(prediction.get("type"), (str,), "prediction.type", required=True)
    check_choice(kind, ("content",), "prediction.type")
    content = check_type(prediction.get("content"), (str, list), "prediction.content",
                         required=True)
    for i, part in enumerate(content if isinstance(content, list) else ()):
        param = f"prediction.content[{i}]"
        check_type(part, (dict,), param)
        kind = check_type(part.get("type"), (str,), f"{param}.type", required=True)
        if kind != "text":
            raise InvalidRequest(f"{param}.type must be text: a predicted output is text; got "
                                 f"{shown_json(kind)}", param=f"{param}.type")
        check_type(part.get("text"), (str,), f"{param}.text", required=True)


def check_chat_hints(req: Any) -> None:
    """The fields of a ChatCompletionRequest this module names, each as OpenAI checks it
    (service_tier: its type alone, checked as the body is decoded); InvalidRequest naming
    the first that OpenAI would refuse."""
    check_choice(req.verbosity, VERBOSITIES, "verbosity")
    check_prompt_cache(req.prompt_cache_retention, req.prompt_cache_options)
    check_safety_identifier(req.safety_identifier)
    check_prediction(req.prediction)
