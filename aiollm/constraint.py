"""A request's constraint: the grammar its output follows (GrammarSpec) and the token ids
it may be restricted to and biased by (Constraint), as SamplingParams.constraint carries it
and aiollm.engine.grammar applies it. Both check their own fields where they are made (the
Engine API's users build them), raising InvalidRequest naming the field."""

from __future__ import annotations

from dataclasses import dataclass

from aiollm.errors import InvalidRequest
from aiollm.numpy_scalars import plain_number

GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice", "ebnf", "structural_tag")


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A grammar as the client sent it. `value` is text: the schema's JSON, the regex, the
    EBNF, a JSON list of choice strings, a structural tag's JSON. `param` names the field it
    came from, for errors. `embeds`: other fields' grammars this one holds (a response
    format beside tools), compiled alone first so that a timeout names the slow field.
    `parts`: (field, JSON schema text) of the schemas a structural tag holds (the tools'
    parameters), each tried alone where the library refuses the whole, so that the refusal
    names the field at fault (`tools[2].function.parameters`, not `tools`)."""

    kind: str
    value: str = ""
    param: str = "response_format"
    embeds: tuple[GrammarSpec, ...] = ()
    parts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # the HTTP API makes only good ones; the Engine API's users write their own
        if self.kind not in GRAMMAR_KINDS:
            raise InvalidRequest(f"a grammar's kind must be one of {', '.join(GRAMMAR_KINDS)}, "
                                 f"got {self.kind!r}", param=self.param)
        if not isinstance(self.value, str):
            raise InvalidRequest(f"a grammar's value must be text (a schema as JSON text), got "
                                 f"{type(self.value).__name__}", param=self.param)
        embeds = self.embeds
        if not isinstance(embeds, (tuple, list)) or not all(
                isinstance(g, GrammarSpec) for g in embeds):
            raise InvalidRequest(f"a grammar's embeds must be a tuple of GrammarSpec, got "
                                 f"{embeds!r:.80}", param=self.param)
        if isinstance(embeds, list):  # (frozen: kept hashable)
            object.__setattr__(self, "embeds", tuple(embeds))
        parts = self.parts
        if not isinstance(parts, (tuple, list)) or not all(
                isinstance(p, (tuple, list)) and len(p) == 2
                and all(isinstance(x, str) for x in p) for p in parts):
            raise InvalidRequest(f"a grammar's parts must be a tuple of (field, schema text) "
                                 f"pairs, got {parts!r:.80}", param=self.param)
        object.__setattr__(self, "parts", tuple(tuple(p) for p in parts))


@dataclass(slots=True)
class Constraint:
    """What SamplingParams carries: any of a grammar, allowed token ids, logit biases."""

    grammar: GrammarSpec | None = None
    allowed_token_ids: list[int] | None = None
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        # ids from an array (list(np.flatnonzero(mask))) as SamplingParams takes stop ids: the
        # engine refused them as no token ids, and a numpy bias as no number
        # (only then: a vocabulary's worth of Python's ints is the HTTP API's common case)
        ids = self.allowed_token_ids
        if isinstance(ids, (list, tuple)) and not all(type(t) is int for t in ids):
            self.allowed_token_ids = [plain_number(t) for t in ids]
        bias = self.logit_bias
        if isinstance(bias, dict) and not (set(map(type, bias)) <= {int}
                                           and set(map(type, bias.values())) <= {int, float}):
            # (the type sets are C passes: plain_number per item cost ~200 ms for a vocabulary)
            self.logit_bias = {plain_number(t): plain_number(b) for t, b in bias.items()}
        for name, kinds in (("grammar", (GrammarSpec,)), ("allowed_token_ids", (list, tuple)),
                            ("logit_bias", (dict,))):
            v = getattr(self, name)
            if v is not None and not isinstance(v, kinds):
                raise InvalidRequest(f"{name} must be a {kinds[0].__name__} or None, got "
                                     f"{type(v).__name__}", param=name)
