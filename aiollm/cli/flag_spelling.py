"""Flags spelt as vLLM's parser reads them, which launch lines written for `vllm serve` use:
names with underscores (`--max_model_len 512`) as their dashed names, and a JSON flag's keys
given one by one (`--eplb-config.window_size 1000`, or after its short name: `-cc.mode 3`;
a number as vLLM writes it there too: `-cc.max_cudagraph_capture_size 1k`) as its JSON
object."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Collection, Sequence
from typing import Any

from aiollm.cli import config_file
from aiollm.cli.help_format import ShortUsage
from aiollm.cli.token_counts import token_count


def dashed(args: Sequence[str]) -> list[str]:
    """`args` with each long flag's name dashed (--max_num_seqs=8 is --max-num-seqs=8);
    values, a JSON flag's keys after its name (--eplb_config.window_size is
    --eplb-config.window_size), single-dash flags and every word after a bare "--" stay
    as given."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            flag, dot, keys = name.partition(".")  # a JSON flag's keys keep their spelling
            arg = flag.replace("_", "-") + dot + keys + eq + value
        out.append(arg)
    return out


# a flag's name: long, or short (-cc, -O), never a negative number (-0.5) given as a value
_FLAG = re.compile(r"--|-[A-Za-z]")


def json_keys(args: Sequence[str], known: Collection[str] | None = None) -> list[str]:
    """`args` with each JSON flag's keys given one by one, `--FLAG.KEY[.KEY...] VALUE` (or
    `=VALUE`; `KEY+` appends VALUE's comma-separated items to a list; a short name too,
    `-cc.KEY VALUE`), gathered into one `--FLAG JSON` after the other flags, as vLLM's
    parser reads them: VALUE is JSON where it parses as JSON (1000, true), else a whole
    number with a suffix (1k, 8K: _json_or_text), else the string. Only flags of `known` (a
    parser's option strings; None: any flag), or the start of one (argparse's
    abbreviation), are gathered: another dotted word (a model path
    beginning with "-", a misspelt flag) stays as given, for argparse to name as typed. A
    dotted flag with no value after it, and every word from a bare "--" on, stay as
    given."""
    args = list(args)
    rest = args[args.index("--"):] if "--" in args else []
    args = args[:len(args) - len(rest)]
    out: list[str] = []
    objects: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if (not _FLAG.match(name) or "." not in name or (not eq and i + 1 == len(args))
                or not _known(name.split(".", 1)[0], known)):
            out.append(args[i])
            i += 1
            continue
        if not eq:
            value = args[i + 1]
        i += 1 if eq else 2
        flag, *inner, last = name.split(".")
        node = objects.setdefault(flag, {})
        for key in inner:  # a later nested key replaces a value given before
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if last.endswith("+"):
            items = node.get(last[:-1])
            node[last[:-1]] = (items if isinstance(items, list) else []) + value.split(",")
        else:
            node[last] = _json_or_text(value)
    for flag, obj in objects.items():
        out += [flag, json.dumps(obj)]
    return out + rest


def _known(flag: str, known: Collection[str] | None) -> bool:
    return known is None or any(option.startswith(flag) for option in known)


def _json_or_text(value: str) -> Any:
    """A dotted key's value as vLLM's parser reads it: JSON where it parses, else a whole
    number with a suffix (1k is 1000, 1K 1024: token_counts' forms, the ones vLLM's
    human_readable_int takes), else the text, for the flag's own check to take or refuse."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        return token_count(value)
    except argparse.ArgumentTypeError:
        return value


class ArgumentParser(ShortUsage):
    """argparse's parser, reading long flags spelt with underscores as their dashed names and
    a JSON flag's keys given one by one as its JSON (and printing a short usage line with
    its errors: ShortUsage). Its usage errors name a flag as the command line spelt it
    (LightLLM's --eos_id, not the --eos-id it is read as): `typed_spellings`, dashed name
    -> the spelling typed, is set by the parser given the command line, and shared with
    its subcommands' parsers, which report the errors of their flags. A parser with a
    --config flag reads it as config_file.py does."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        if config_file.FLAG in self._option_string_actions and config_file.named(args):
            return config_file.parse_known_args(self, args, namespace)
        as_read = dashed(args)
        spelt = {_flag_name(read): _flag_name(arg) for arg, read in zip(args, as_read)
                 if arg != read and arg.startswith("--")}
        # a subcommand's parser is given the words already dashed (nothing spelt): it keeps
        # the spellings the parser of the whole command line shared with it
        if spelt or any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            self._share_spellings(spelt)
        return super().parse_known_args(json_keys(as_read, self._option_string_actions),
                                        namespace)

    def _share_spellings(self, spelt: dict[str, str]) -> None:
        """`spelt` as this parser's and its subcommands' parsers' typed_spellings."""
        self.typed_spellings = spelt
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    parser.typed_spellings = spelt

    def error(self, message: str):
        """argparse's, with each flag the message names by its dashed name named as typed,
        and led by "--config FILE: " where it is about a flag of that file
        (config_file.lead)."""
        lead = config_file.lead(self, message)
        for name, typed in getattr(self, "typed_spellings", {}).items():
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", typed, message)
        super().error(lead + message)


def _flag_name(arg: str) -> str:
    """A long flag's name, without what `=` or a JSON flag's `.KEY` adds after it."""
    return arg.partition("=")[0].partition(".")[0]
