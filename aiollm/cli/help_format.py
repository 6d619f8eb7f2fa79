"""How the command line presents itself: HelpFormatter lays out `aiollm serve --help`'s
options; ShortUsage makes a usage error one short usage line and the error, and reads vLLM's
`--help=VALUE` (help_for)."""

from __future__ import annotations

import argparse
import copy
import re
import sys
import textwrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it tells something: not where the help already names it,
    not a None, not the True of a --no-X switch (which reads as the opposite)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS)
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return super()._get_help_string(action)

    # flag names are not broken at their hyphens ("--gpu-" / "memory-utilization")
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width,
                             break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width,
                             initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class ShortUsage(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors print `short_usage` (if given) as their usage
    line, not the synopsis of every flag that --help still shows (serve's is ~50 lines,
    above the one line that says what is wrong), as `vllm serve` prints its own. Arguments
    none of a command's flags take are reported by that command's parser (the namespace's
    command_parser), with its usage line: the top-level one named no command's flags."""

    def __init__(self, *args, short_usage: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.short_usage = short_usage

    def format_usage(self) -> str:
        if self.short_usage is None:
            return super().format_usage()
        return f"usage: {self.short_usage}\n"

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, but `--help=VALUE` (or -h=VALUE; before a bare "--") prints
        help_for's part of the help and exits 0, on a parser with no subcommands (the
        command's own); where VALUE matches nothing, a tip of where to look instead (the
        groups --help=GROUP takes by name), and
        exits 0 too, as `vllm serve --help=VALUE` answers it (it asked for help, and got
        an answer: no error). On the parser of subcommands (`aiollm --help=foo`, before
        the command's name), whose own options are only -h and -v, a tip of each command's
        --help=VALUE and its groups (_commands_tip), exit 0 (argparse said "ignored
        explicit argument", exit 2)."""
        args = sys.argv[1:] if args is None else list(args)
        commands = next((a.choices for a in self._actions
                         if isinstance(a, argparse._SubParsersAction)), None)
        for arg in args:
            if arg == "--" or (commands is not None and arg in commands):
                break  # a command's words are its parser's to read
            flag, eq, value = arg.partition("=")
            if eq and flag in ("--help", "-h"):
                if commands is None:
                    text = help_for(self, value)
                    if text is None:
                        text = (f"No option or group matching {value!r}: --help (or "
                                "--help=all) shows every option, by group; --help=GROUP "
                                f"one group's (groups: {', '.join(_group_list(self))}), "
                                "--help=WORD the options with WORD in their name.\n")
                else:
                    text = _commands_tip(self.prog, commands, value)
                self._print_message(text, sys.stdout)  # as --help prints
                self.exit(0)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        """argparse's, but arguments no flag takes are reported by the command's parser,
        and then an error an action left in the namespace's `deferred_error`, one that such
        an argument may have caused (flag_alias.ModelFlag's two models)."""
        parsed, extra = self.parse_known_args(args, namespace)
        reporter = getattr(parsed, "command_parser", self)
        if extra:
            reporter.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(parsed, "deferred_error", None) is not None:
            reporter.error(parsed.deferred_error)
        return parsed


def _commands_tip(prog: str, commands: dict[str, argparse.ArgumentParser],
                  value: str) -> str:
    """The answer to `PROG --help=VALUE` on a parser of subcommands: VALUE is looked up in a
    command's options, so the line names each command's --help=VALUE and the groups its
    --help=GROUP takes (_group_list)."""
    each = "; ".join(f"`{prog} {name} --help={value}` (groups: "
                     f"{', '.join(_group_list(parser))})" for name, parser in commands.items())
    return (f"--help={value} looks in a command's options: {each}. There --help=GROUP "
            "shows one group's options, --help=WORD those with WORD in their name, "
            f"--help=all every option; `{prog} --help` lists the commands.\n")


def help_for(parser: argparse.ArgumentParser, value: str) -> str | None:
    """`--help=VALUE`'s text, as `vllm serve` reads it: "all" is the whole --help; a group's
    name (_group_names: `--help=tensor-parallelism`, `--help=sglang`) is that group's
    description and options; else the options whose flag holds VALUE (case, leading dashes
    and "_" for "-" aside: `--help=max_model_len`, `--help=eplb`), or where none does, the
    options of the aliases --help hides that do (`--help=context-length`, SGLang's, is
    --max-model-len's, titled "--context-length, an alias of"); an empty word (`--help=`,
    `--help=--`) too is the whole --help, as every option's name holds it (vLLM lists every
    option for it). A WORD lists too, after them, the flags --help hides that hold it
    and say why they are refused (_hidden_with_help: `--help=guided` is vLLM's
    --guided-decoding-backend). None where nothing matches."""
    key = value.lstrip("-").lower().replace("_", "-")
    if value == "all" or not key.strip():
        return parser.format_help()
    formatter = parser._get_formatter()
    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS]
    group = next((g for g in parser._action_groups if _group_key(value) in _group_names(g)),
                 None)
    if group is not None:
        title, actions = group.title, [a for a in group._group_actions if a in shown]
        description = group.description
    else:
        title, description = f"options with {value!r} in their name", None
        actions = [a for a in shown if _named(a, key)]
        if not actions:  # an alias --help hides (SGLang's --context-length): what it sets
            aliases = [a for a in parser._actions if a.help == argparse.SUPPRESS
                       and a.dest != argparse.SUPPRESS and _named(a, key)]
            actions = [a for a in shown if a.dest in {alias.dest for alias in aliases}]
            title = ", ".join(o for alias in aliases for o in alias.option_strings)
            title += ", an alias of" if len(aliases) == 1 else ", aliases of"
    refused = [] if group is not None else _hidden_with_help(parser, key)
    if not actions and not description and not refused:
        return None
    if actions or description:
        formatter.start_section(title)
        formatter.add_text(description)
        formatter.add_arguments(actions)
        formatter.end_section()
    if refused:
        formatter.start_section(f"other engines' flags refused here, with {value!r} in "
                                "their name")
        formatter.add_arguments(refused)
        formatter.end_section()
    return formatter.format_help()


def _hidden_with_help(parser: argparse.ArgumentParser, key: str) -> list[argparse.Action]:
    """The actions --help hides that say why themselves (a `hidden_help()` method: another
    engine's refused flags, vllm_flags.Refuse) whose flag holds `key`, each as a copy
    whose help is that line, for --help=WORD to list (`--help=guided`:
    --guided-decoding-backend); a flag taking a value shows it as VALUE."""
    shown = []
    for action in parser._actions:
        if callable(getattr(action, "hidden_help", None)) and _named(action, key):
            line = copy.copy(action)
            line.help = action.hidden_help().replace("%", "%%")  # argparse's % formatting
            line.metavar = "VALUE" if action.nargs != 0 else None
            shown.append(line)
    return shown


def _named(action: argparse.Action, key: str) -> bool:
    """Whether one of `action`'s flags holds `key` (lower case, dashed, no leading dashes)."""
    return bool(key) and any(key in o.lstrip("-").lower() for o in action.option_strings)


def _group_key(text: str) -> str:
    """A group's title or a --help=GROUP value, case, spaces ("-"), "_" and the "'s" of a
    possessive aside: "SGLang's flags" and `--help=sglang-flags` are "sglang-flags"."""
    text = re.sub(r"'s\b", "", text.strip().lstrip("-").lower()).replace("'", "")
    return "-".join(text.replace("_", " ").replace("-", " ").split())


def _group_names(group: argparse._ArgumentGroup) -> set[str]:
    """The --help=GROUP values that name `group`: its title (_group_key), and for another
    engine's flags ("SGLang's flags") the engine's name alone (`--help=sglang`)."""
    key = _group_key(group.title or "")
    return {key, key.removesuffix("-flags")} - {""}


def _group_list(parser: argparse.ArgumentParser) -> list[str]:
    """The shortest --help=GROUP value of each group that shows anything (_group_names), in
    --help's order: for the tip of a --help=VALUE that matched nothing."""
    return [min(sorted(_group_names(g)), key=len) for g in parser._action_groups
            if g.description or any(a.help != argparse.SUPPRESS for a in g._group_actions)]
