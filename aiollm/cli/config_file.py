"""`aiollm serve --config FILE`: serve's flags read from a YAML file, as `vllm serve --config`
and SGLang's `--config` read theirs. Each key is a flag's long name without its dashes
(`max-model-len`, or `max_model_len`; a JSON flag's key after a dot:
`compilation-config.mode`), each value what the flag takes; every key goes through serve's
own parser, so that a key behaves as its flag does on the command line (aliases, refusals,
flags of no effect). The command line wins over the file, the file over the defaults, and
MODEL on the command line (the positional, or any engine's flag for it) over the file's."""

from __future__ import annotations

import argparse
import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

import yaml

FLAG = "--config"
HELP = ("read flags from a YAML file of `flag-name: value` lines (port: 8000, "
        "enforce-eager: true, served-model-name: [a, b]), as vLLM's and SGLang's --config "
        "do; flags on the command line win over the file's")

# the namespace's records, by option, of the flag that gave it (flag_alias's): the command
# line's parse starts without the file's, so that its flags replace the file's values
# rather than meet them as a second value of one option
_BY_OPTION = ("flags_typed", "values_typed", "outranked")


def add_to(parser: argparse.ArgumentParser) -> None:
    """Add --config FILE to `parser`, whose parse_known_args reads it (parse_known_args
    below): the flag itself is never stored."""
    parser.add_argument(FLAG, metavar="FILE", default=argparse.SUPPRESS, help=HELP)


def named(args: Sequence[str]) -> bool:
    """Whether the command line `args` gives --config (before a bare "--")."""
    for arg in args:
        if arg == "--":
            return False
        if arg == FLAG or arg.startswith(FLAG + "="):
            return True
    return False


def parse_known_args(parser: argparse.ArgumentParser, args: Sequence[str],
                     namespace: argparse.Namespace | None
                     ) -> tuple[argparse.Namespace, list[str]]:
    """`parser`'s parse_known_args of the command line `args`, which gives --config FILE:
    FILE's words (file_words) are parsed first, then the rest of `args`, into the
    namespace the file gave; usage errors about FILE's flags, then and in the checks after
    parsing, are led by "--config FILE: " (lead). parser.error for a second --config, or
    one with no FILE."""
    parser.file_flags = {}
    path, rest = _split(parser, list(args))
    words = file_words(parser, path)
    spellings = getattr(parser, "typed_spellings", {})  # the command line's (flag_spelling)
    parser.typed_spellings, parser.reading = {}, path
    try:
        from_file, extra = parser.parse_known_args(words, namespace)
    finally:
        parser.reading = None
    assert not extra, extra  # each word is a flag or its value (_words)
    left = _left_to_file(parser, words, rest)
    parser.file_flags = dict.fromkeys(left, path)  # lead's
    parser.typed_spellings = {**{flag: typed for flag, typed in parser.typed_spellings.items()
                                 if flag in left}, **spellings}
    kept = {name: vars(from_file).pop(name, {}) for name in _BY_OPTION}
    model = [vars(from_file).pop(name, None) for name in ("model", "model_typed")]
    graphs = getattr(from_file, "vllm_graphs", {})  # vllm_graph_flags' sizes: one option
    sizes = graphs.pop("flags", {})
    parsed, extra = parser.parse_known_args(rest, from_file)
    for name, records in kept.items():
        if records or hasattr(parsed, name):
            setattr(parsed, name, {**records, **getattr(parsed, name, {})})
    if parsed.model is None and model[0] is not None:
        parsed.model, parsed.model_typed = model
    if sizes:
        parsed.vllm_graphs["flags"] = {**sizes, **parsed.vllm_graphs.get("flags", {})}
    return parsed, extra


def gave(parser: argparse.ArgumentParser, flag: str) -> bool:
    """Whether --config's file gave `flag` (an option string) of `parser`, and the command
    line left its option alone (so that its several values cannot have taken a MODEL typed
    after them)."""
    return flag in getattr(parser, "file_flags", {})


def lead(parser: argparse.ArgumentParser, message: str) -> str:
    """What the usage error `message` of `parser` begins with: "--config FILE: " while
    FILE's flags are read, or where the flag it names first (argparse's "argument
    FLAG[/FLAG]: ", dashed) is one FILE gave and the command line did not replace (the
    checks after parsing); else ""."""
    path = getattr(parser, "reading", None)
    flags = re.match(r"argument (\S+?):", message)
    if path is None and flags:
        file_flags = getattr(parser, "file_flags", {})
        path = next((file_flags[f] for f in flags[1].split("/") if f in file_flags), None)
    return "" if path is None else f"{FLAG} {path}: "


def _left_to_file(parser: argparse.ArgumentParser, words: list[str],
                  rest: list[str]) -> set[str]:
    """The option strings of the flags the file's `words` give whose options the command
    line's `rest` leaves alone (neither that flag nor another spelling of its option)."""
    actions = parser._option_string_actions

    def given(args: list[str]) -> set[argparse.Action]:
        found = set()
        for arg in args:
            name = arg.partition("=")[0].partition(".")[0]  # --flag=value, --flag.key
            name = name.replace("_", "-") if name.startswith("--") else name
            if name in actions:
                found.add(actions[name])
        return found

    typed = given(rest)
    replaced = {a.dest for a in typed} - {argparse.SUPPRESS}
    return {flag for action in given(words) - typed if action.dest not in replaced
            for flag in action.option_strings}


def _split(parser: argparse.ArgumentParser, args: list[str]) -> tuple[str, list[str]]:
    """--config's FILE, and `args` without --config FILE."""
    paths, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg.startswith(FLAG + "="):
            paths.append(arg.partition("=")[2])
        elif arg == FLAG:
            given = i + 1 < len(args) and not args[i + 1].startswith("-")
            paths.append(args[i + 1] if given else "")  # "": no FILE
            i += given
        else:
            rest.append(arg)
        i += 1
    if "" in paths:
        parser.error(f"argument {FLAG}: expected one argument")
    if len(paths) > 1:
        parser.error(f"argument {FLAG}: given {len(paths)} times ({', '.join(paths)}): "
                     "give one file")
    return paths[0], rest


def file_words(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The command-line words of the YAML file `path`'s keys, in the file's order, as vLLM
    reads them: true gives a switch, false its --no- form where the parser has one (else
    nothing); a list gives the values of a flag taking several, else its JSON, as does a
    mapping; null, or an empty list, leaves the key out. parser.error naming the file for
    a file that cannot be read, is not YAML (a key given twice too) or is not a mapping,
    for a key that is no flag of the parser (or is --config or --help) or is another's
    spelling (max_num_seqs beside max-num-seqs), for a switch given no true or false, and
    for a list item that argparse would read as a flag."""
    try:
        settings = _mapping(path)
    except ValueError as e:
        parser.error(f"{FLAG} {path}: {e}")
    words, keys = [], {}
    for key, value in settings.items():
        name, dot, inner = str(key).partition(".")
        name = name.replace("_", "-")
        action = parser._option_string_actions.get(f"--{name}")
        if not isinstance(key, str) or not name or action is None:
            parser.error(f"{FLAG} {path}: unknown key {key!r}: `aiollm serve` has no such "
                         f"flag{_close_to(parser, name)}")
        # max-num-seqs and max_num_seqs: one key spelt twice (other names of its option meet
        # as they do on the command line: "two values of one option")
        same = keys.setdefault(f"--{name}{dot}{inner}", key)
        if same != key:
            parser.error(f"{FLAG} {path}: keys {same!r} and {key!r} are one flag: keep one")
        if f"--{name}" == FLAG:
            parser.error(f"{FLAG} {path}: key {key!r}: a config file cannot name another; "
                         "give its flags in this one")
        if isinstance(action, argparse._HelpAction):
            parser.error(f"{FLAG} {path}: key {key!r} is no setting: `aiollm serve --help` "
                         "lists the flags")
        words += _words(parser, path, key, action, value)
    return words


def _mapping(path: str) -> dict:
    """The YAML file `path`'s top-level mapping ({} for an empty file); ValueError saying
    why there is none. A top-level number is kept as the text the file gives, so that its
    flag reads it as the command line's (`api-key: 0123` is "0123", not YAML 1.1's octal 83;
    `served-model-name: 1.10` is "1.10", not 1.1)."""
    try:
        with open(path, "rb") as f:  # (bytes: YAML's own reader names a bad character)
            loader = _Loader(f)
            try:
                node = loader.get_single_node()
                if isinstance(node, yaml.MappingNode):
                    for _, value in node.value:
                        if isinstance(value, yaml.ScalarNode) and value.tag in _NUMBERS:
                            value.tag = "tag:yaml.org,2002:str"
                data = None if node is None else loader.construct_document(node)
            finally:
                loader.dispose()
    except OSError as e:
        raise ValueError(f"cannot be read: {e.strerror or e}") from None
    except yaml.MarkedYAMLError as e:
        where = e.problem_mark or e.context_mark
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        tabs = "; use spaces, not tabs" if "'\\t'" in str(e.problem) else ""
        raise ValueError(f"is not valid YAML: {e.problem or e.context}{at}{tabs}") from None
    except yaml.reader.ReaderError as e:  # a binary file, or not UTF-8/16 text
        raise ValueError(f"is not YAML text: character #x{e.character:02x} at position "
                         f"{e.position}: {e.reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {"list": "a list", "str": "a string"}.get(type(data).__name__, "a value")
        raise ValueError(f"holds {kind}, not a mapping of flag names to values "
                         "(`port: 8000` lines)")
    return data


_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that a mapping gives twice (which PyYAML reads
    as the last one given: the YAML spec has a mapping's keys unique)."""

    def construct_mapping(self, node, deep=False):
        lines: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = lines.setdefault(key.value, key.start_mark.line + 1)
                if line != key.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} is given twice, on lines {line} and "
                        f"{key.start_mark.line + 1}: keep one", None)
        return super().construct_mapping(node, deep)


def _words(parser: argparse.ArgumentParser, path: str, key: str, action: argparse.Action,
           value: Any) -> list[str]:
    """The words of `key: value` (file_words' rules) for the flag of `action`."""
    flag = f"--{key}"  # as spelt in the file: usage errors name it so (flag_spelling)
    if value is None or value == []:
        return []
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            parser.error(f"{FLAG} {path}: key {key!r} is a switch: give true or false "
                         f"(unquoted), got {value!r}")
        negated = "--no-" + key.partition(".")[0].replace("_", "-")
        if value:
            return [flag]
        return [negated] if negated in parser._option_string_actions else []
    several = action.nargs in ("+", "*") or (isinstance(action.nargs, int)
                                             and action.nargs > 1)
    if isinstance(value, list) and several:
        texts = [_text(item) for item in value]
        for text in texts:  # argparse would read it as a flag, not one of the values
            if parser._parse_optional(text) is not None:
                parser.error(f"{FLAG} {path}: key {key!r}: the item {text!r} reads as a "
                             f"flag: give it as the flag's only value (`{key}: {text}`)")
        return [flag, *texts]
    return [f"{flag}={_text(value)}"]


def _text(value: Any) -> str:
    """A YAML value as a command line gives it: true/false, JSON for a list or a mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _close_to(parser: argparse.ArgumentParser, name: str) -> str:
    """" (did you mean ...?)" naming the parser's flags closest to `name`, else where
    they are listed."""
    names = [o[2:] for o in parser._option_string_actions if o.startswith("--")]
    name = name.lstrip("-")  # `--port:`, the flag as typed: its name alone is the key
    close = [name] if name in names else difflib.get_close_matches(name, names, n=3)
    if close:
        return f" (did you mean {' or '.join(close)}?)"
    return " (`aiollm serve --help` lists them)"
