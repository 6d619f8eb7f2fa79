"""GrammarSpec.embeds as the Engine API's users write it: the grammars a spec holds
(compiled alone first, so that a compile timeout names the slow field). A bad value was a
TypeError or AttributeError from the compile (None is not iterable, 'str' object has no
attribute 'kind'); it is the InvalidRequest naming the spec's field, when the spec is made."""

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
