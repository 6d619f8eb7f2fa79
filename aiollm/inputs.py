"""vLLM's prompt types (vllm.inputs' TextPrompt and TokensPrompt) under aiollm's name, for
code that builds its prompts with them: typed dicts, so a prompt made with one is the
plain dict LLM.generate and Engine.generate take (engine/submission.py's prompt_of_dict
reads them; keys for images or audio are refused there, naming them). The optional keys
are in total=False subclasses: typing's NotRequired is Python 3.11's."""

from __future__ import annotations

from typing import TypedDict


class _Text(TypedDict):
    prompt: str


class TextPrompt(_Text, total=False):
    """A prompt as text, tokenized by the engine. cache_salt: the prefix cache shares KV
    only with requests of the same salt (engine/cache_salt.py)."""

    cache_salt: str


class _Tokens(TypedDict):
    prompt_token_ids: list[int]


class TokensPrompt(_Tokens, total=False):
    """A prompt as token ids (ints in the vocabulary); `prompt`, when given, is their text,
    given back as RequestOutput.prompt and never tokenized."""

    prompt: str
    cache_salt: str


# vLLM's name for any prompt LLM.generate and Engine.generate take (for type hints)
PromptType = str | list[int] | TextPrompt | TokensPrompt
