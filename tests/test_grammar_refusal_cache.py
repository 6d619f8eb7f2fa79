"""A grammar refused when compiled (the vocabulary cannot write it, the library rejects it)
is remembered as refused, as a compiled one is kept: a format embedded beside tools
(GrammarSpec.embeds), compiled alone before the whole on each new combination, was
compiled again on every request that brought it."""

from __future__ import annotations

import asyncio
import string

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import aiollm.engine.grammar as grammar
from aiollm.engine.grammar import Grammars
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import GrammarSpec


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    """A tokenizer of lower-case letters alone: it cannot begin a digit."""
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    backend = Tokenizer(models.WordLevel({**vocab, "<unk>": 26, "</s>": 27}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                  eos_token="</s>")
    d = tmp_path_factory.mktemp("refusal-letters")
    tok.save_pretrained(str(d))  # a name_or_path of its own: its cache entries are its own
    return PreTrainedTokenizerFast.from_pretrained(str(d))


def test_a_refused_embedded_format_is_compiled_once(letters, monkeypatch):
    """Three requests, each with other tools (a new whole) beside one format the
    vocabulary cannot begin: the format is compiled once, then refused from the cache; the
    wholes compile and are served. A format refused alone is refused again with the same
    message and field."""
    calls = []
    real = grammar.compile_spec

    def counted(compiler, spec):
        calls.append(spec.value)
        return real(compiler, spec)

    monkeypatch.setattr(grammar, "compile_spec", counted)
    fmt = GrammarSpec("regex", "[0-9]+", "response_format")
    g = Grammars(letters, 28, [27], torch.device("cpu"))

    async def requests():
        for name in ("abc", "abd", "abe"):
            whole = GrammarSpec("regex", f"{name}|[0-9]+", "tools", embeds=(fmt,))
            assert await g.compile(whole) is not None
        errors = []
        for _ in range(2):
            with pytest.raises(InvalidRequest) as e:
                await g.compile(fmt)
            errors.append((str(e.value), e.value.param))
        return errors

    try:
        errors = asyncio.run(requests())
    finally:
        g.close()
    assert calls.count("[0-9]+") == 1, calls
    assert len(calls) == 4, calls  # the format once, each whole once
    assert errors[0] == errors[1] and errors[0][1] == "response_format", errors
    assert "vocabulary" in errors[0][0], errors
