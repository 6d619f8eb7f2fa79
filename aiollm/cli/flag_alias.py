"""One `aiollm serve` option under several flags (aiollm's, vLLM's, SGLang's, LightLLM's):
the action each spelling stores with, recording the spelling typed, so that a check after
parsing names the flag the user wrote (`--max-num-seqs 0`, not aiollm's own), and refusing
two spellings given with different values, which would serve with one of them silently."""

from __future__ import annotations

import argparse


class Alias(argparse._StoreAction):
    """A spelling of an option: stores its value as `store` does and records the spelling
    in the namespace's `flags_typed` (dest -> flag). The same spelling given again replaces
    its value (argparse's rule: still held to the others'); another spelling of the option
    given before with another value is a usage error naming both, unless both are `least`
    flags of different actions: then the smaller value is kept. Those are other engines'
    upper bounds of one count (a step's tokens: SGLang's --chunked-prefill-size beside its
    --max-prefill-tokens), which those engines keep within all at once. `wins_over`:
    spellings of the option whose value this one's replaces, before it or after, as the
    engine both belong to does (SGLang's --cuda-graph-bs over its --cuda-graph-max-bs); the
    value not used is kept in the namespace's `values_dropped` (dest -> (flag, value as
    typed)), for the start to log. Every other pair of spellings given must agree, in any
    order (_agrees: the one outranked too, with a third spelling)."""

    def __init__(self, option_strings, dest, least: bool = False,
                 wins_over: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.least = least
        self.wins_over = tuple(wins_over)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        typed = dict(getattr(namespace, "flags_typed", {}))
        before = typed.get(self.dest)
        # spellings a winner given before outranks: loser -> winner
        losers = getattr(namespace, "outranked", {}).get(self.dest, {})
        if before is not None:
            given = getattr(namespace, self.dest)
            if self.least and before not in self.option_strings:
                if given <= values:
                    return
            else:  # (the same spelling again too: its others still hold)
                self._agrees(parser, namespace, values, option_string,
                             {before: given, **getattr(namespace, "values_typed", {})
                              .get(self.dest, {})}, losers)
                if option_string in losers:  # the winner stays
                    _dropped(namespace, self.dest, option_string, values)
                    _typed_value(namespace, self.dest, option_string, values)
                    return
                if before in self.wins_over:
                    _dropped(namespace, self.dest, before, given)
        super().__call__(parser, namespace, values, option_string)
        typed[self.dest] = option_string
        namespace.flags_typed = typed
        if not self.least:
            _typed_value(namespace, self.dest, option_string, values)
        if self.wins_over:  # a spelling it wins over, given later, leaves its value
            namespace.outranked = {**getattr(namespace, "outranked", {}),
                                   self.dest: {**losers, **dict.fromkeys(self.wins_over,
                                                                         option_string)}}

    def _agrees(self, parser, namespace, values, option_string: str, earlier: dict,
                losers: dict[str, str]) -> None:
        """parser.error where `values` and a value of another spelling given before
        (`earlier`: flag -> value) differ, but for a spelling this one wins over or that
        wins over this one: every other pair must agree whatever their order (SGLang's
        --cuda-graph-max-bs, which its --cuda-graph-bs outranks, is still held to aiollm's
        --cuda-graph-max-batch). `earlier` holds the namespace's `values_typed` (dest ->
        flag -> value; each spelling's last, but `least` flags', which keep the smaller)."""
        for flag, value in earlier.items():
            if (flag != option_string and flag not in self.wins_over
                    and losers.get(option_string) != flag and value != values):
                parser.error(f"argument {option_string}: {_shown(values)} and {flag} "
                             f"{_shown(value)} are two values of one option: give one")


def _typed_value(namespace, dest: str, flag: str, value) -> None:
    """Record `flag value` of option `dest` in the namespace's `values_typed`."""
    values_typed = getattr(namespace, "values_typed", {})
    namespace.values_typed = {**values_typed,
                              dest: {**values_typed.get(dest, {}), flag: value}}


def _dropped(namespace, dest: str, flag: str, value) -> None:
    """Keep `flag value`, a value of option `dest` that another spelling's replaces."""
    namespace.values_dropped = {**getattr(namespace, "values_dropped", {}),
                                dest: (flag, _shown(value))}


class AliasConst(argparse.Action):
    """A switch spelling of an option (SGLang's --disable-cuda-graph for --enforce-eager):
    stores `const` with no value, as store_const does, and records the spelling typed.
    Switches of one option follow argparse's rule, the last one counts, as aiollm's own
    --no-prefix-cache and --enable-prefix-caching do."""

    def __init__(self, option_strings, dest, const, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.const)
        namespace.flags_typed = {**getattr(namespace, "flags_typed", {}),
                                 self.dest: option_string}


class ModelFlag(argparse.Action):
    """MODEL, given as the positional or as a flag (vLLM's --model, SGLang's --model-path,
    LightLLM's --model_dir); several may name it, but not two different models, which would
    serve one of them silently. Where one of the two is the positional, the error waits in
    the namespace's `deferred_error` (help_format.ShortUsage.parse_args reports it): argparse
    reads the value of a flag it does not know (SGLang's `--dist-timeout 600` beside
    --model-path) as MODEL, and "unrecognized arguments", naming that flag, is then the
    error to give; the flag's model is kept meanwhile."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = getattr(namespace, self.dest, None)
        typed = option_string or "MODEL"
        if given is not None and given != values:
            before = getattr(namespace, "model_typed", "MODEL")
            error = (f"{before} and {typed} name two models ({given!r}, {values!r}): "
                     "give one")
            if "MODEL" not in (before, typed):  # two flags: nothing else explains it
                parser.error(error)
            namespace.deferred_error = error
            if typed == "MODEL":
                return
        setattr(namespace, self.dest, values)
        namespace.model_typed = typed


def add_aliases(group: argparse._ArgumentGroup, model_flag: str,
                aliases: dict[str, tuple], switches: dict[str, tuple]) -> None:
    """Add another engine's spellings of aiollm's options to `group`, hidden from --help
    (its description names them): `model_flag` names MODEL (ModelFlag); `aliases` maps a
    flag to (the option it sets, aiollm's flag, the type its value is read as) (Alias),
    `switches` a flag to (the option, the value it sets, aiollm's flag) (AliasConst)."""
    group.add_argument(model_flag, dest="model", default=argparse.SUPPRESS,
                       action=ModelFlag, help=argparse.SUPPRESS)
    for flag, (dest, _, kind) in aliases.items():
        group.add_argument(flag, dest=dest, type=kind, action=Alias,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for flag, (dest, value, _) in switches.items():
        group.add_argument(flag, dest=dest, const=value, action=AliasConst,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _shown(value) -> str:
    """A value as the command line gave it (a list of several names: space-separated)."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
