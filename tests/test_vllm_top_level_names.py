"""vLLM's top-level names as a vLLM script imports them from aiollm: the ones aiollm has
import as they are; the ones it lacks on purpose (its engines, their argument classes,
pooling) fail with an ImportError that says what aiollm offers instead, not Python's bare
"cannot import name". No model is loaded."""

from __future__ import annotations

import pytest

import aiollm

# vLLM's names aiollm lacks, and a word the message must hold: what to use instead
LACKED = {
    "LLMEngine": "aiollm.LLM",
    "AsyncLLMEngine": "aiollm.Engine",
    "EngineArgs": "aiollm.Engine(model",
    "AsyncEngineArgs": "aiollm.Engine(model",
    "PoolingParams": "generative",
    "EmbeddingRequestOutput": "generative",
    "PoolingRequestOutput": "generative",
    "ModelRegistry": "llama",
    "initialize_ray_cluster": "one process",
}


def import_from_aiollm(name: str):
    scope: dict = {}
    exec(f"from aiollm import {name}", scope)
    return scope[name]


@pytest.mark.parametrize("name, instead", LACKED.items())
def test_a_vllm_name_aiollm_lacks_says_what_to_use(name, instead):
    with pytest.raises(ImportError) as e:
        import_from_aiollm(name)
    message = str(e.value)
    assert name in message and "vLLM" in message and instead in message, message
    assert e.value.name == "aiollm"
    # hasattr() stays False (code probing for it takes its other path), with the same words
    assert not hasattr(aiollm, name)
    with pytest.raises(AttributeError) as e:
        getattr(aiollm, name)
    assert str(e.value) == message


@pytest.mark.parametrize("name", ["LLM", "SamplingParams", "RequestOutput",
                                  "CompletionOutput", "TextPrompt", "TokensPrompt",
                                  "PromptType"])
def test_vllm_names_aiollm_has_import(name):
    assert import_from_aiollm(name) is getattr(aiollm, name)
    assert name in aiollm.__all__


def test_a_name_of_neither_stays_pythons_error():
    with pytest.raises(ImportError, match="cannot import name 'NoSuchThing'"):
        import_from_aiollm("NoSuchThing")
    assert not hasattr(aiollm, "NoSuchThing")
