"""GrammarSpec.embeds as the Engine API's users write it: the grammars a spec holds
(compiled alone first, so that a compile timeout names the slow field). A bad value was a
TypeError or AttributeError from the compile (None is not iterable, 'str' object has no
attribute 'kind'); it is the InvalidRequest naming the spec's field, when the spec is made.
GrammarSpec.parts (the schemas a tag holds, by field) likewise."""

from __future__ import annotations

import pytest

from aiollm.errors import InvalidRequest
from aiollm.sampling_params import GrammarSpec

FMT = GrammarSpec("regex", "ab", "guided_regex")


@pytest.mark.parametrize("embeds", [None, ("x",), FMT, [FMT, {"kind": "regex"}]])
def test_bad_embeds_are_the_fields_error(embeds):
    with pytest.raises(InvalidRequest, match="embeds") as e:
        GrammarSpec("regex", "ab|c", "tools", embeds=embeds)
    assert e.value.param == "tools"


def test_a_list_of_specs_is_taken_as_a_tuple():
    spec = GrammarSpec("regex", "ab|c", "tools", embeds=[FMT])
    assert spec.embeds == (FMT,)
    assert hash(spec) == hash(GrammarSpec("regex", "ab|c", "tools", embeds=(FMT,)))


@pytest.mark.parametrize("parts", [None, "ab", (("tools[0]", "{}", "x"),), [("tools[0]", 5)]])
def test_bad_parts_are_the_fields_error(parts):
    """GrammarSpec.parts, (field, schema text) pairs, from the Engine API's users too."""
    with pytest.raises(InvalidRequest, match="parts") as e:
        GrammarSpec("regex", "ab|c", "tools", parts=parts)
    assert e.value.param == "tools"


def test_parts_as_lists_are_taken_as_tuples():
    spec = GrammarSpec("regex", "ab|c", "tools", parts=[["tools[0].function.parameters", "{}"]])
    assert spec.parts == (("tools[0].function.parameters", "{}"),) and hash(spec)
