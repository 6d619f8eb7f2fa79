"""vLLM's structured outputs config read as aiollm's grammar options: `vllm serve
--structured-outputs-config JSON` (or its keys one by one, `--structured-outputs-config.backend
xgrammar`) and `LLM(structured_outputs_config={...})` (or a StructuredOutputsConfig object),
vLLM's current names for its grammar library (`--guided-decoding-backend` before), were an
unrecognized argument and a TypeError.

vLLM's StructuredOutputsConfig (vllm/config/structured_outputs.py) has seven keys:

- backend: "auto" (vLLM's default, which picks a library per request) and "xgrammar" are
  --grammar-backend xgrammar, aiollm's one grammar library; "guidance", "outlines" and
  "lm-format-enforcer" stop the start naming what aiollm has (vLLM has no value that turns
  structured output off: --grammar-backend none does);
- reasoning_parser: --reasoning-parser ("", vLLM's default, is not set), whose grammar shapes
  the output from its first token, reasoning included, as vLLM's enable_in_reasoning true
  (vLLM's default false starts it after the reasoning: the log line says so);
- disable_fallback (either value), disable_any_whitespace true (a response format's JSON
  here always has fixed whitespace; tool calls' arguments may hold whitespace, which the log
  line says), disable_additional_properties false, reasoning_parser_plugin "" and
  enable_in_reasoning true (a grammar here always shapes the output from its first token)
  ask for what aiollm does: taken, with a log line saying they change nothing, as -cc's keys;
  so are disable_any_whitespace false and enable_in_reasoning false without a reasoning
  parser, under which vLLM's output may be what aiollm's is;
- what would change outputs stops the start naming the key: enable_in_reasoning false given
  with a reasoning parser (vLLM lets the model reason before the grammar starts; here a
  request with a grammar has no reasoning; left out, it is --reasoning-parser's way), a
  reasoning_parser_plugin (no code is loaded), disable_additional_properties true (vLLM's
  guidance backend's alone);
- what vLLM refuses is refused too: a key it lacks, a value of the wrong kind, and
  disable_any_whitespace true under backend "auto" (vLLM takes it with xgrammar only).

Given beside --grammar-backend (LightLLM's --output_constraint_mode) or --reasoning-parser
with another value, the start stops naming both, as two spellings of one option do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

from aiollm import vllm_value_checks
from aiollm.config import REASONING_PARSERS

BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")
_OURS = ("auto", "xgrammar")  # both are xgrammar here
_BOOLEANS = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties",
             "enable_in_reasoning")
KEYS = ("backend", *_BOOLEANS, "reasoning_parser", "reasoning_parser_plugin")
FLAG = "--structured-outputs-config"
KEYWORD = "structured_outputs_config"  # LLM(...)'s (aiollm/vllm_names.py hands it here)

_EXAMPLE = "'{\"backend\": \"xgrammar\"}'"
_FIRST_TOKEN = "a grammar shapes the output from its first token"


@dataclass(frozen=True, slots=True)
class StructuredSettings:
    """What a structured outputs config asks of aiollm. grammar_backend: "xgrammar", or None
    where no backend was given; reasoning_parser: a name of REASONING_PARSERS, or None where
    none was given (""); said: one line per key given, what it does here."""

    grammar_backend: str | None
    reasoning_parser: str | None
    said: tuple[str, ...]


def parse_config(value: Any) -> dict[str, Any]:
    """A structured outputs config (vLLM's --structured-outputs-config: a JSON object; as
    LLM(...)'s keyword a dict, or its JSON text) as a dict of its keys, each checked as
    vLLM's config checks it. Raises ValueError naming the key and its value (a backend of
    another library: naming what aiollm has), or saying the JSON does not parse or is no
    object."""
    config = vllm_value_checks.config_keys(value, "StructuredOutputsConfig", KEYS, _EXAMPLE)
    for key, item in config.items():
        if (why := _misfit(key, item)) is not None:
            raise ValueError(why)
    return config


def _misfit(key: str, item: Any) -> str | None:
    """Why `item` is no value of structured outputs config `key` that aiollm takes (the
    message, naming both), or None."""
    got = f"; got {item!r}"
    if key == "backend":
        if item in _OURS:
            return None
        if item == "none":
            return ("backend \"none\" is none of vLLM's backends (vLLM cannot turn structured "
                    "output off): to turn it off, give --grammar-backend none instead")
        if item in BACKENDS:
            return (f"backend {json.dumps(item)} is a library aiollm does not have: grammars "
                    "run on xgrammar, the one grammar library here; give \"xgrammar\" or "
                    "\"auto\" (or --grammar-backend none to turn structured output off)")
        return (f"backend takes one of vLLM's {', '.join(BACKENDS)}, of which aiollm runs "
                f"\"xgrammar\" and \"auto\" (both xgrammar){got}")
    if key in _BOOLEANS:
        if not isinstance(item, bool):
            return f"{key} takes true or false{got}"
        if key == "disable_additional_properties" and item:
            return ("disable_additional_properties true is an option of vLLM's guidance "
                    "backend alone (vLLM refuses it with any other), and grammars run on "
                    "xgrammar here: leave it out (objects take only the properties their "
                    "schema names, as OpenAI's strict mode)")
        return None
    if not isinstance(item, str):
        return f"{key} takes a string{got}"
    if key == "reasoning_parser" and item and item not in REASONING_PARSERS:
        return (f"reasoning_parser {item!r} is none of aiollm's reasoning parsers "
                f"({', '.join(REASONING_PARSERS)}, vLLM's names of them)")
    if key == "reasoning_parser_plugin" and item:
        return (f"reasoning_parser_plugin {item!r}: no code is loaded to add a reasoning "
                f"parser; aiollm's own are {', '.join(REASONING_PARSERS)} "
                "(--reasoning-parser): leave it out")
    return None


def settings(config: dict[str, Any], shown: str, grammar_backend: tuple[str, str] | None,
             reasoning_parser: tuple[str, str] | None) -> StructuredSettings:
    """What `config` (parse_config's) asks of aiollm, beside the options given otherwise:
    `grammar_backend` and `reasoning_parser` (None: not given) are (the option as given,
    for the messages, "--grammar-backend none"; its value). Each line in `said` names its
    key as `shown` and the key ("--structured-outputs-config.backend=\"auto\"").
    Raises ValueError naming the key and the option given beside it where they disagree,
    where enable_in_reasoning false meets a reasoning parser, and, as vLLM's config does,
    where disable_any_whitespace true has no backend "xgrammar"."""
    if config.get("disable_any_whitespace") is True and config.get("backend", "auto") == "auto":
        raise ValueError("disable_any_whitespace true needs backend \"xgrammar\", as vLLM "
                         "requires (its \"auto\" may pick a library without the option): "
                         "give both, or leave disable_any_whitespace out (JSON output here "
                         "has fixed whitespace anyway)")
    backend = "xgrammar" if "backend" in config else None
    if backend is not None and grammar_backend is not None and grammar_backend[1] != backend:
        raise ValueError(f"backend {json.dumps(config['backend'])} (xgrammar here) and "
                         f"{grammar_backend[0]} disagree: give one of them")
    parser = config.get("reasoning_parser") or None
    if (parser is not None and reasoning_parser is not None
            and reasoning_parser[1] != parser):
        raise ValueError(f"reasoning_parser {json.dumps(parser)} and {reasoning_parser[0]} "
                         "disagree: give one of them")
    reasoning = parser is not None or reasoning_parser is not None
    if config.get("enable_in_reasoning") is False and reasoning:
        raise ValueError("enable_in_reasoning false asks for the model to reason before the "
                         f"grammar starts, and aiollm has no such mode: {_FIRST_TOKEN}, so a "
                         "request with a grammar has no reasoning (enable_in_reasoning "
                         "true's way); leave it out, or give true")
    said = [f"{shown}.{key}={json.dumps(item)}{_said(key, item, reasoning)}"
            for key, item in config.items()]
    return StructuredSettings(backend, parser, tuple(said))


def _said(key: str, item: Any, reasoning: bool) -> str:
    """What a key taken does here, as the end of its log line."""
    if key == "backend":
        return ": grammars run on xgrammar, as --grammar-backend xgrammar"
    if key == "reasoning_parser":
        if not item:
            return " has no effect: no parser named"
        return (f": as --reasoning-parser {item} ({_FIRST_TOKEN}, reasoning included, as "
                "vLLM's enable_in_reasoning true; vLLM's default starts it after the "
                "reasoning)")
    if key == "disable_fallback":
        return (" has no effect: xgrammar is the one grammar library, with none to fall back "
                "to; a grammar it refuses gets 400")
    if key == "disable_any_whitespace":
        # vLLM's forced tool calls are grammars of this backend too, compact under true
        return (" has no effect: a response format's JSON has fixed whitespace (one space "
                "after ':' and ','), which vLLM's grammar allows too; tool calls' arguments "
                "may still hold runs of whitespace (up to 16 characters), which vLLM's "
                "forced calls (tool_choice required or named) would not")
    if key == "disable_additional_properties":
        return " has no effect: vLLM's guidance backend's option, false as it is here"
    if key == "reasoning_parser_plugin":
        return " has no effect: no plugin named"
    assert key == "enable_in_reasoning", key
    if item:
        return f" has no effect: {_FIRST_TOKEN}, as it asks"
    return f" has no effect: no reasoning parser is set, so {_FIRST_TOKEN}, as in vLLM"


class _StructuredFlag(argparse.Action):
    """--structured-outputs-config: its value checked (a usage error naming the flag and the
    value where parse_config refuses it) and kept in the namespace's `vllm_structured`
    ((the flag as typed, dict)) for serve's checks; two are one, the later's keys over the
    earlier's."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS,
                         **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        earlier = getattr(namespace, "vllm_structured", (None, {}))[1]
        try:
            config = parse_config(values)
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        namespace.vllm_structured = (option_string, {**earlier, **config})


def add_to(group: argparse._ArgumentGroup) -> None:
    """Add --structured-outputs-config to `group` (vLLM's flags)."""
    group.add_argument(FLAG, action=_StructuredFlag, metavar="JSON",
                       help="vLLM's StructuredOutputsConfig: backend auto or xgrammar is "
                            "--grammar-backend xgrammar (guidance, outlines and "
                            "lm-format-enforcer are refused); reasoning_parser is "
                            "--reasoning-parser; the other keys change nothing, or are "
                            "refused where they would")


def applied(namespace: argparse.Namespace, options: dict[str, Any],
            spelt: dict[str, str]) -> tuple[str, ...]:
    """The --structured-outputs-config the namespace holds (none: no lines) applied to
    serve's `options` (EngineConfig's fields, as the flags give them): its backend as
    grammar_backend, its reasoning_parser as reasoning_parser. Returns the lines to log.
    `spelt`: a flag's dashed name -> as typed (--output_constraint_mode). Raises ValueError
    beginning "argument --structured-outputs-config: " (settings')."""
    flag, config = getattr(namespace, "vllm_structured", (None, None))
    if config is None:
        return ()
    typed = getattr(namespace, "flags_typed", {}).get("grammar_backend")
    backend = (None if typed is None
               else (f"{spelt.get(typed, typed)} {options['grammar_backend']}",
                     options["grammar_backend"]))
    parser = options.get("reasoning_parser")
    reasoning = (None if parser is None
                 else (f"{spelt.get('--reasoning-parser', '--reasoning-parser')} {parser}",
                       parser))
    shown = spelt.get(flag, flag)
    try:
        taken = settings(config, shown, backend, reasoning)
    except ValueError as e:
        raise ValueError(f"argument {shown}: {e}") from None
    _apply(taken, options)
    return taken.said


def keyword_taken(value: Any, ours: dict[str, Any],
                  as_keywords: Callable[[str], str]) -> tuple[str, ...]:
    """LLM(structured_outputs_config=`value`) (a dict, its JSON text, or vLLM's
    StructuredOutputsConfig object, whose fields set are its keys; None: not given), as vLLM's
    LLM takes it, applied to aiollm's options `ours` (EngineConfig's fields, as the other
    keywords give them), as `applied` applies the flag. Returns the lines to log. Raises
    ValueError naming the keyword and its value (and the option given beside it that
    disagrees), its message in the keywords' terms (`as_keywords`)."""
    if value is None:
        return ()
    given = {k: (f"{k}={ours[k]!r}", ours[k]) for k in ("grammar_backend", "reasoning_parser")
             if ours.get(k) is not None}
    try:
        if not isinstance(value, (str, dict)) and not _is_config_object(value):
            raise ValueError("takes a dict of vLLM's StructuredOutputsConfig keys (or its JSON "
                             "text), such as {\"backend\": \"xgrammar\"}, or a "
                             f"StructuredOutputsConfig; got {type(value).__name__}")
        taken = settings(parse_config(_set_fields(value)), KEYWORD,
                         given.get("grammar_backend"), given.get("reasoning_parser"))
    except ValueError as e:
        raise ValueError(f"{KEYWORD}={value!r}: {as_keywords(str(e))}") from None
    _apply(taken, ours)
    return taken.said


def _is_config_object(value: Any) -> bool:
    """Whether `value` is a dataclass object (vLLM's StructuredOutputsConfig is one)."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _set_fields(value: Any) -> Any:
    """A config object (vLLM's StructuredOutputsConfig(...)) as a dict of the fields its
    caller set, those that differ from their defaults: a default is what leaving the key
    out asks for (a field a newer vLLM adds, left at its default, is no key given); any
    other value as it is."""
    if not _is_config_object(value):
        return value
    keys = {}
    for field in dataclasses.fields(value):
        default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                   else field.default)
        if (item := getattr(value, field.name)) != default:
            keys[field.name] = item
    return keys


def _apply(taken: StructuredSettings, options: dict[str, Any]) -> None:
    """`taken`'s backend and reasoning parser, where given, as `options`' own."""
    if taken.grammar_backend is not None:
        options["grammar_backend"] = taken.grammar_backend
    if taken.reasoning_parser is not None:
        options["reasoning_parser"] = taken.reasoning_parser
