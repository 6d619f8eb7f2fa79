"""vLLM's StructuredOutputsParams (GuidedDecodingParams, its name before vLLM 0.11): the
grammar of a request as vLLM's offline API gives it, in
SamplingParams(structured_outputs=...) (or guided_decoding=...). SamplingParams turns it
into aiollm's Constraint(GrammarSpec(...)), read as the HTTP API reads the
`structured_outputs` object of a request (aiollm/api/structured.py), errors and all."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from aiollm.errors import InvalidRequest

# the fields that are a grammar (exactly one per object); the others are options
GRAMMAR_FIELDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass(slots=True)
class StructuredOutputsParams:
    """One grammar the output follows: `json` (a JSON schema, as a dict or its JSON text),
    `regex`, `choice` (a list of strings: the output is one of them), `grammar` (EBNF, as
    xgrammar reads it), `json_object` (True: any JSON object; False is refused by
    SamplingParams, as vLLM's refuses it) or `structural_tag` (xgrammar's structural tag,
    a dict or its JSON text). The boolean options are vLLM's and change
    nothing here (the output is compact, strict JSON already), but are checked as booleans;
    whitespace_pattern must be None (xgrammar takes no whitespace pattern: SamplingParams
    refuses one, naming structured_outputs.whitespace_pattern, as the HTTP API does);
    `backend` (vLLM's GuidedDecodingParams') is None, "auto" or "xgrammar".
    Raises InvalidRequest (a ValueError) naming structured_outputs unless exactly one
    grammar is given; a bad grammar value is refused by SamplingParams, naming the field
    (structured_outputs.choice)."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | dict | None = None
    # vLLM's GuidedDecodingParams' grammar library: aiollm's is xgrammar, so only "auto" or
    # "xgrammar" (either with vLLM's ":option" suffix) are taken
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and (not isinstance(self.backend, str) or
                                         self.backend.split(":")[0] not in ("auto", "xgrammar")):
            raise InvalidRequest(
                f"backend {self.backend!r:.40} is not available: grammars run on xgrammar "
                "here; give \"xgrammar\" or \"auto\", or leave backend out",
                param="structured_outputs.backend")
        given = [f for f in GRAMMAR_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise InvalidRequest(
                f"structured_outputs takes exactly one of {', '.join(GRAMMAR_FIELDS)}, got "
                f"{', '.join(given) if given else 'none'}", param="structured_outputs")


GuidedDecodingParams = StructuredOutputsParams  # vLLM's name before 0.11


def grammar_of(value: Any, name: str):
    """The GrammarSpec (aiollm.sampling_params) of a StructuredOutputsParams or of the dict
    the HTTP API takes (None for None), given to SamplingParams as
    `name` (structured_outputs or guided_decoding). Raises InvalidRequest naming the field
    (`name.choice`), `name` for a value of neither kind."""
    from aiollm.api.structured import structured_outputs

    if value is None:
        return None
    if isinstance(value, StructuredOutputsParams):
        value = {f.name: getattr(value, f.name) for f in fields(value) if f.name != "backend"}
    elif not isinstance(value, dict):
        raise InvalidRequest(f"{name} must be a StructuredOutputsParams (aiollm.structured_"
                             f"outputs) or a dict of its fields, got {type(value).__name__}",
                             param=name)
    try:
        return structured_outputs(value)
    except InvalidRequest as e:
        if name == "structured_outputs" or not (e.param or "").startswith("structured_outputs"):
            raise
        # every mention: the advice names the field too ("leave structured_outputs out")
        raise InvalidRequest(str(e).replace("structured_outputs", name),
                             param=name + e.param[len("structured_outputs"):]) from None
