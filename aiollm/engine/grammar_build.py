"""A request's grammar (a GrammarSpec) in xgrammar's terms: compiled alone for a request, or
as an xgrammar Grammar that another grammar embeds (api/tools_or_format.py: tools beside a
response format). Both read each kind through `xgrammar_source`, so that a format holds the
same text alone and beside tools, and both report xgrammar's refusals through grammar_error.
"""

from __future__ import annotations

import json
import re

from aiollm.engine.grammar_check import compilable
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import GrammarSpec

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar's "[time] file.cc:line: "
# OpenAI's json_object is an object, not any JSON value
JSON_OBJECT_SCHEMA = '{"type": "object"}'


def xgrammar_source(spec: GrammarSpec) -> tuple[str, str, dict]:
    """(form, text, options) that xgrammar builds `spec` from: form "json_schema" (options for
    its JSON schema conversion), "regex", "ebnf" or "structural_tag". Raises InvalidRequest
    naming spec.param where grammar_check.py refuses the grammar (what xgrammar would not
    enforce) or a choice list is bad."""
    kind, value = spec.kind, compilable(spec)
    if kind == "json_schema":
        # compact JSON, as OpenAI's structured outputs write it: no whitespace to wander in
        return "json_schema", value, {"any_whitespace": False, "strict_mode": True}
    if kind == "json_object":
        return "json_schema", JSON_OBJECT_SCHEMA, {"any_whitespace": False}
    if kind == "choice":
        return "ebnf", choice_ebnf(spec), {}
    if kind in ("regex", "ebnf", "structural_tag"):
        return kind, value, {}
    raise AssertionError(kind)


def compile_spec(compiler, spec: GrammarSpec):
    """`spec` compiled by an xgrammar GrammarCompiler (its compile_* methods, whose caches
    are keyed by the text). Raises InvalidRequest (xgrammar_source), or xgrammar's own
    errors for a grammar it refuses (see grammar_error)."""
    form, text, options = xgrammar_source(spec)
    if form == "json_schema":
        return compiler.compile_json_schema(text, **options)
    if form == "regex":
        return compiler.compile_regex(text)
    if form == "ebnf":
        return compiler.compile_grammar(text)
    return compiler.compile_structural_tag(text)


def check_writable(compiled, spec: GrammarSpec, stop_ids: list[int], vocab: int) -> None:
    """Refuse (InvalidRequest naming spec.param) a compiled grammar that no token of the
    vocabulary can begin and none can end at once: the mask of its first step (an xgrammar
    GrammarMatcher over `vocab` ids, ended by `stop_ids`, or the stop tokens xgrammar found
    when none) allows no token, and the sampler would draw one the grammar refuses. A
    vocabulary without the characters JSON begins with, and without an eos, is one such.
    Costs one mask (well under a millisecond at the first step), once per compilation."""
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stop_ids or None)
    if allows_none(matcher, vocab):
        raise InvalidRequest(f"{spec.param}: no token of the model's vocabulary can begin an "
                             "output this grammar allows (nor end an empty one), so the model "
                             "cannot write one; loosen the grammar, or leave it out",
                             param=spec.param)


def allows_none(matcher, vocab: int) -> bool:
    """Whether the xgrammar GrammarMatcher `matcher` allows no token of ids [0, `vocab`)
    where it is now: neither one that continues its grammar nor a stop token that ends it.
    Costs one mask."""
    import numpy as np
    import xgrammar as xgr

    mask = xgr.allocate_token_bitmask(1, vocab)
    matcher.fill_next_token_bitmask(mask)
    return not np.unpackbits(mask.numpy().view(np.uint8), bitorder="little")[:vocab].any()


def grammar_of(spec: GrammarSpec):
    """`spec` as an xgrammar Grammar (not compiled), for embedding in another grammar; a
    structural tag is not one (AssertionError). Raises as compile_spec."""
    import xgrammar as xgr

    form, text, options = xgrammar_source(spec)
    if form == "json_schema":
        return xgr.Grammar.from_json_schema(text, **options)
    if form == "regex":
        return xgr.Grammar.from_regex(text)
    assert form == "ebnf", form
    return xgr.Grammar.from_ebnf(text)


def choice_ebnf(spec: GrammarSpec) -> str:
    """The EBNF grammar of a "choice" spec (its value a JSON list of strings): one of them,
    exactly. Raises InvalidRequest naming spec.param where the list is empty or holds
    anything but non-empty strings."""
    choices = json.loads(spec.value)
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise InvalidRequest(f"{spec.param} must be a non-empty list of non-empty strings",
                             param=spec.param)
    # JSON string literals are valid EBNF string literals (same escapes)
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def grammar_error(spec: GrammarSpec, e: Exception) -> InvalidRequest:
    """The 400 for a grammar that xgrammar refuses (its own error types): xgrammar's message
    without its log prefix, naming spec.param, or the first of spec.parts that xgrammar
    refuses alone (a tool's parameters), naming its field. Trying the parts costs a JSON
    schema conversion each (no compilation), on this failing path only."""
    import xgrammar as xgr

    for param, schema in spec.parts:
        try:
            xgr.Grammar.from_json_schema(compilable(GrammarSpec("json_schema", schema, param)),
                                         any_whitespace=True, strict_mode=True)
        except InvalidRequest as refused:
            return refused
        except Exception as part_error:  # the library's own error types
            return grammar_error(GrammarSpec("json_schema", schema, param), part_error)
    msg = _LOG_PREFIX.sub("", str(e)).strip()
    return InvalidRequest(f"invalid {spec.param}: {msg}", param=spec.param)
