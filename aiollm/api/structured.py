"""The request fields that constrain the output, turned into one aiollm Constraint.

OpenAI: `response_format` ({"type": "text" | "json_object" | "json_schema", "json_schema":
{"name", "schema", "strict", "description"}}; without a schema, any JSON object; vLLM's
"structural_tag", the object an xgrammar structural tag),
`logit_bias` ({"token id in decimal digits": bias}, clipped to [-100, 100]). vLLM's
extensions: `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` (EBNF, as
xgrammar takes it) and the newer `structured_outputs` object ({"json" | "regex" | "choice" |
"grammar" | "json_object" | "structural_tag": ...}), `allowed_token_ids`. SGLang's: `regex`,
`ebnf` and (/v1/completions) `json_schema`. LightLLM's /generate: `guided_json`,
`guided_grammar`, `regular_constraint`, `allowed_token_ids`.

At most one grammar per request: two are refused (400) rather than one silently dropped.
What the grammar library would compile without enforcing (a JSON schema keyword, a regex
escape) is refused where grammars are compiled, for HTTP and Engine callers alike
(aiollm/engine/grammar_check.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from aiollm.errors import InvalidRequest, check_type, missing, shown_json
from aiollm.sampling_params import Constraint, GrammarSpec, is_int

# OpenAI's form of response_format.json_schema.name (as of a function name)
FORMAT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _text(value: Any, param: str) -> str:
    if isinstance(value, str):
        return value
    raise InvalidRequest(f"{param} must be a string", param=param)


def _json(value: Any, param: str) -> Any:
    """`value`, parsed first when it is JSON text (InvalidRequest naming `param` if it is not
    valid JSON)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"{param} is not valid JSON: {e}", param=param) from None


def _schema(value: Any, param: str) -> str:
    """A JSON schema's text; what the grammar cannot enforce is refused where it is compiled
    (aiollm/engine/grammar_check.py), for the Engine API's callers too."""
    value = _json(value, param)
    if value is True:  # any JSON value
        return "{}"
    if value is False:  # the grammar cannot express "nothing" (xgrammar drops "not")
        raise InvalidRequest(f"{param} is false, which no output validates against",
                             param=param)
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON schema object", param=param)
    return _dumps(value, param)


def _dumps(value: Any, param: str) -> str:
    """JSON text of a decoded field; one nested almost as deep as the body's decoder takes
    (~990 levels) overflows the encoder's recursion (it was a 500)."""
    try:
        return json.dumps(value)
    except RecursionError:
        raise InvalidRequest(f"{param} nests too deep", param=param) from None



def _structural_tag(value: Any, param: str) -> str:
    """An xgrammar structural tag's text (its JSON schemas are checked where it compiles)."""
    return _dumps(_json(value, param), param)


def _choice(value: Any, param: str) -> str:
    if not isinstance(value, list) or not value or not all(
            isinstance(c, str) and c for c in value):
        raise InvalidRequest(f"{param} must be a non-empty list of non-empty strings",
                             param=param)
    return json.dumps(value)


def response_format(value: Any) -> GrammarSpec | None:
    """OpenAI's response_format."""
    p = "response_format"
    if value is None:
        return None
    if not isinstance(value, dict) or "type" not in value:
        raise InvalidRequest('response_format must be an object with a "type"', param=p)
    check_type(value["type"], (str,), f"{p}.type", required=True)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", "", p)
    if kind == "json_schema":
        js = value.get("json_schema")
        if not isinstance(js, dict):
            raise InvalidRequest('response_format.json_schema must be an object with a '
                                 '"name" (and a "schema")', param=f"{p}.json_schema")
        # OpenAI requires a name, of this form (its clients name it after the output's type)
        name, form = js.get("name"), "1 to 64 of a-z, A-Z, 0-9, '_' or '-'"
        if name is None:
            raise missing(f"{p}.json_schema.name", f": {form}")
        if not isinstance(name, str) or not FORMAT_NAME.fullmatch(name):
            raise InvalidRequest(f"response_format.json_schema.name must be {form}, got "
                                 f"{shown_json(name)}", param=f"{p}.json_schema.name")
        for field, kinds in (("description", (str,)), ("strict", (bool,))):
            check_type(js.get(field), kinds, f"{p}.json_schema.{field}")
        if js.get("schema") is None:
            # OpenAI's schema is optional: without one the output is any JSON object, as
            # json_object asks (vLLM and SGLang left such a request unconstrained)
            return GrammarSpec("json_object", "", f"{p}.json_schema")
        return GrammarSpec("json_schema", _schema(js["schema"], f"{p}.json_schema.schema"),
                           f"{p}.json_schema.schema")
    if kind == "structural_tag":
        # vLLM's: the whole object is the tag, in xgrammar's form (a "format") or in its
        # first (structures and triggers; engine/grammar_check.py reads it as the same)
        return GrammarSpec("structural_tag", _structural_tag(value, p), p)
    raise InvalidRequest(f'response_format.type must be "text", "json_object", '
                         f'"json_schema" or "structural_tag", got {shown_json(kind)}',
                         param=f"{p}.type")


# vLLM's options beside the grammar, with their types: its output here is already strict JSON
# of fixed whitespace (json.dumps' own: '{"a": 1, "b": 2}'), so they change nothing, but a
# value of the wrong type is refused as vLLM refuses it
_STRUCTURED_OPTIONS = {"disable_fallback": (bool,), "disable_any_whitespace": (bool,),
                       "disable_additional_properties": (bool,), "whitespace_pattern": (str,)}
# vLLM's whitespace pattern (a regex for the whitespace between JSON's tokens) is an option of
# its outlines and guidance backends; xgrammar, aiollm's only one, takes no such pattern (vLLM's
# xgrammar backend drops it unread). Refused wherever it is sent, rather than ignored: the
# output would not follow it
WHITESPACE_PATTERN_REFUSED = ("a whitespace pattern is not supported: grammars run on "
                              "xgrammar, which takes none, and JSON output has fixed "
                              "whitespace (one space after ':' and ',', no newline); leave it "
                              "out")


def structured_outputs(value: Any) -> GrammarSpec | None:
    """vLLM's structured_outputs object: exactly one of its grammar fields (json_object
    true, if given: false is refused, as vLLM refuses it)."""
    p = "structured_outputs"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("structured_outputs must be an object", param=p)
    makers = {
        "json": lambda v, q: GrammarSpec("json_schema", _schema(v, q), q),
        "regex": lambda v, q: GrammarSpec("regex", _text(v, q), q),
        "choice": lambda v, q: GrammarSpec("choice", _choice(v, q), q),
        "grammar": lambda v, q: GrammarSpec("ebnf", _text(v, q), q),
        "json_object": _json_object,
        "structural_tag": lambda v, q: GrammarSpec("structural_tag", _structural_tag(v, q), q),
    }
    unknown = [k for k in value if k not in makers and k not in _STRUCTURED_OPTIONS]
    if unknown:  # a misspelt grammar field would leave the output free
        raise InvalidRequest(f"structured_outputs has no field {shown_json(unknown[0])}; it "
                             f"takes one of {', '.join(makers)}", param=f"{p}.{unknown[0]}")
    for option, kinds in _STRUCTURED_OPTIONS.items():
        check_type(value.get(option), kinds, f"{p}.{option}")
    if value.get("whitespace_pattern") is not None:
        raise InvalidRequest(f"{p}.whitespace_pattern: {WHITESPACE_PATTERN_REFUSED}",
                             param=f"{p}.whitespace_pattern")
    given = [k for k, v in value.items() if k in makers and v is not None]
    if not given:  # as vLLM refuses it: options alone would leave the output free, unasked
        raise InvalidRequest(f"structured_outputs gives no grammar: send one of "
                             f"{', '.join(makers)}, or leave structured_outputs out", param=p)
    specs = [makers[k](value[k], f"{p}.{k}") for k in given]
    if len(specs) > 1:
        raise InvalidRequest("structured_outputs takes one of json, regex, choice, grammar, "
                             "json_object, structural_tag", param=p)
    return specs[0]


def _json_object(value: Any, param: str) -> GrammarSpec:
    """json_object true: any JSON object. False asks for no grammar, and vLLM refuses it
    (a 400 naming the field: its grammar backends would fail on it), beside another grammar
    too; it was taken here as no constraint, or as the grammar beside it."""
    if not check_type(value, (bool,), param):
        raise InvalidRequest(f"{param}: expected true (any JSON object), got false; to leave "
                             "the output free, leave structured_outputs out", param=param)
    return GrammarSpec("json_object", "", param)


# a field of one grammar -> (its GrammarSpec kind, the reading of its value): vLLM's guided_*,
# LightLLM's regular_constraint, SGLang's regex, ebnf (xgrammar's EBNF, as its default
# backend reads it) and json_schema (JSON text; /v1/completions' alone, as in SGLang)
_GUIDED = {"guided_json": ("json_schema", _schema), "guided_regex": ("regex", _text),
           "regular_constraint": ("regex", _text), "guided_choice": ("choice", _choice),
           "guided_grammar": ("ebnf", _text), "regex": ("regex", _text),
           "ebnf": ("ebnf", _text), "json_schema": ("json_schema", _schema)}
# those /v1/completions and /v1/chat/completions read (a field a body lacks is None)
GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "regex",
                 "ebnf", "json_schema")


def guided(fields: dict[str, Any], prefix: str = "") -> list[GrammarSpec]:
    """The grammars of `fields` (a field of _GUIDED -> its value, None where not sent);
    errors name prefix + field."""
    specs = []
    for name, (kind, conv) in _GUIDED.items():
        param = prefix + name
        if fields.get(name) is not None:
            specs.append(GrammarSpec(kind, conv(fields[name], param), param))
    return specs


def logit_bias(value: Any) -> dict[int, float] | None:
    """OpenAI's {"token id": bias}; ranges are checked against the vocabulary by the engine.
    InvalidRequest naming logit_bias for a key that is no token id in decimal digits, two
    keys naming one token ("1", "01"), a bias that is no number. A bias past [-100, 100] is
    clipped to it, as vLLM's server clips it (SamplingParams.from_optional): OpenAI's range,
    which a client's -1000 for "never" means as -100 does.

    A whole vocabulary's worth (49,152 keys) is checked by whole-list passes in C (one
    regex over the joined keys, numpy over the biases): a per-key Python loop held the
    event loop for ~80 ms; what the passes refuse is looked at key by key (_checked_bias)
    for the message."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("logit_bias must be an object of token id -> bias", param="logit_bias")
    out = _bias_at_once(value)
    return out if out is not None else _checked_bias(value)


def _bias_at_once(value: dict) -> dict[int, float] | None:
    """`value` as logit_bias() returns it when every key and bias is good; None when one is
    not (or the dict is empty), for _checked_bias to name it."""
    keys = list(value)
    # the keys are JSON's strings, joined by a separator that no digit run holds; a key
    # holding it ("1\u00002" would read as two ids) adds one more than the joins
    if not keys or set(map(type, keys)) != {str}:
        return None
    joined = "\x00".join(keys)
    if joined.count("\x00") != len(keys) - 1 or not _TOKEN_IDS.fullmatch(joined):
        return None
    ids = list(map(int, keys))
    if len(set(ids)) != len(ids):  # "1" and "01"
        return None
    biases = list(value.values())
    if not set(map(type, biases)) <= {int, float}:  # bool, None, str, ...
        return None
    try:
        arr = np.fromiter(biases, np.float64, len(biases))
    except OverflowError:  # an int past a double: clipped below, one by one
        return None
    return dict(zip(ids, np.clip(arr, -100.0, 100.0).tolist()))


def _checked_bias(value: dict) -> dict[int, float] | None:
    """logit_bias() key by key: the first bad key or bias named."""
    out: dict[int, float] = {}
    keys: dict[int, str] = {}  # token id -> the key that named it
    for k, v in value.items():
        # int() would read " 1", "+1", "1_0" and non-ASCII digits as ids: a key is the id
        # written in decimal digits, nothing else
        if not isinstance(k, str) or not _TOKEN_ID.fullmatch(k):
            raise InvalidRequest(f"logit_bias key {shown_json(k)} is not a token id: keys are "
                                 'token ids written in decimal digits ("1234")',
                                 param="logit_bias")
        if len(k) > _MAX_ID_DIGITS:  # past any vocabulary (and past int()'s digit limit)
            raise InvalidRequest(f"logit_bias key {shown_json(k[:20])}... is past any vocabulary",
                                 param="logit_bias")
        t = int(k)
        if t in keys:  # "1" and "01": which bias would hold?
            raise InvalidRequest(f"logit_bias keys {shown_json(keys[t])} and {shown_json(k)} "
                                 f"both name token {t}", param="logit_bias")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            # shown as the client wrote it (true, null), not as Python would (True, None)
            shown = json.dumps(v)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            raise InvalidRequest(f"logit_bias[{k}] must be a number (clipped to [-100, 100]), "
                                 f"got {shown}", param="logit_bias")
        # compared before float(): an int past a double (10**400) has no float
        keys[t], out[t] = k, 100.0 if v > 100 else -100.0 if v < -100 else float(v)
    return out or None


_TOKEN_ID = re.compile(r"[0-9]+")  # ASCII digits only (\d takes any script's)
_MAX_ID_DIGITS = 12
# the keys joined by NUL, each a token id of at most _MAX_ID_DIGITS digits
_TOKEN_IDS = re.compile(rf"[0-9]{{1,{_MAX_ID_DIGITS}}}(?:\x00[0-9]{{1,{_MAX_ID_DIGITS}}})*")


def constraint(grammars: list[GrammarSpec | None], *, allowed_token_ids: Any = None,
               bias: dict[int, float] | None = None, allowed_param: str = "allowed_token_ids"
               ) -> Constraint | None:
    """One Constraint from the request's grammar fields (at most one may be set)."""
    specs = [g for g in grammars if g is not None]
    if len(specs) > 1:
        raise InvalidRequest(f"{specs[0].param} and {specs[1].param} both constrain the output; "
                             f"send one", param=specs[1].param)
    if allowed_token_ids is not None and (not isinstance(allowed_token_ids, list)
                                          or not all(map(is_int, allowed_token_ids))):
        raise InvalidRequest("allowed_token_ids must be a list of token ids", param=allowed_param)
    if not specs and allowed_token_ids is None and not bias:
        return None
    return Constraint(specs[0] if specs else None, allowed_token_ids, bias)
