"""The kinds of rows in the tables of other engines' launch flags (aiollm/vllm_flags.py,
aiollm/moe_flags.py, aiollm/cli/sglang_flags.py, aiollm/cli/lightllm_flags.py): a flag
refused (Refusal), a flag whose value changes nothing (Ignored), and optional_int, the
type of an optional whole number as vLLM reads one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from aiollm.config import EngineConfig


@dataclass(frozen=True, slots=True)
class Refusal:
    """A flag aiollm refuses (vLLM's, SGLang's, LightLLM's). names: the flag and its other
    spellings; message: what aiollm offers instead (a callable when it must import to say it);
    takes_value: the engine's flag takes one value (else it is a switch); same: values asking
    for aiollm's own behaviour, accepted; model_check: for such a value, why MODEL (None: the
    default model) does not fit it, or None when it does (a missing MODEL is left for the load
    to report)."""

    names: tuple[str, ...]
    message: str | Callable[[], str]
    takes_value: bool = True
    same: tuple[str, ...] = ()
    model_check: Callable[[str | None], str | None] | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A flag taking a value that changes nothing in aiollm (its engine uses it only with a
    feature aiollm lacks, or it picks among ways of doing what aiollm does one way). names: the
    flag; why: what aiollm does instead; metavar: its value's name in --help (where there are
    choices, --help lists them instead); refuse: given the value (as typed, or as LLM(...)'s
    keyword takes it), why it is refused (it asks for what aiollm cannot do), or None: taken.
    kind and choices: the value's type and choices as the flag's own engine declares them, so
    that a value it refuses as a usage error (--watchdog-timeout abc) is one here too (the
    value is still kept as typed); choices only where the engine's list is short and stable
    across its releases: a backend's name of a newer release (a list that grows with each) is
    taken. nargs: as the engine's argparse declares it ("+": `refuse` is given the list of
    values, the log line shows them as typed, one space apart). config_check: on the command
    line, given the value as typed and the EngineConfig the other flags give, why the two do
    not fit as the flag's engine refuses them (SGLang's --moe-dense-tp-size beside
    --tp-size), or None; run by serve's checks once every flag has parsed."""

    names: tuple[str, ...]
    why: str
    metavar: str
    refuse: Callable[[Any], str | None] | None = None
    kind: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    config_check: Callable[[str, EngineConfig], str | None] | None = None


def optional_int(value: str) -> int | None:
    """A whole number as vLLM reads an optional one (its optional_type(int)): "" and "None"
    are None; argparse.ArgumentTypeError as argparse words its own for any other non-number."""
    if value in ("", "None"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
