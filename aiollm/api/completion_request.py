"""The body of /v1/completions (`CompletionRequest`): its prompt (one, or a batch), echo and
logprobs, and the chat fields it refuses.
"""

from __future__ import annotations

from typing import Any

from aiollm.api.protocol import MAX_CHOICES, Prompt, check_max_tokens, refuse_unserved
from aiollm.api.sampling_fields import SamplingFields
from aiollm.errors import InvalidRequest


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: Prompt
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool | None = False
    prompt_logprobs: int | None = None  # vLLM's: each prompt token's logprob and top-N
    # vLLM's: false tokenizes a text prompt without the tokenizer's start token (<s>...)
    add_special_tokens: bool = True
    # SGLang's: a JSON schema (its text, or the object) the output follows, as guided_json
    json_schema: Any = None
    # OpenAI's, not served: refused when they would change the output (check_unserved)
    suffix: str | None = None
    best_of: int | None = None
    # vLLM's (with --enable-prompt-embeds), not served: refused when sent (check_unserved)
    prompt_embeds: Any = None
    # chat's: refused here (refuse_unserved)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None

    def check_unserved(self) -> None:
        SamplingFields.check_unserved(self)
        refuse_unserved(self, ("tools", "tool_choice", "functions", "function_call"), "",
                        "tool calls are served by /v1/chat/completions")
        if self.prompt_embeds is not None:  # dropped, the answer had no choice for them
            raise InvalidRequest("prompt_embeds is not served: the model reads prompts as "
                                 "text or token ids; send them as the prompt",
                                 param="prompt_embeds")
        if self.suffix:
            raise InvalidRequest("suffix is not supported: the server does not insert text "
                                 "(fill-in-the-middle); send the prompt alone", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest(f"best_of must equal n ({self.n}) or be left out: the server "
                                 f"does not rank choices, got {self.best_of}", param="best_of")

    def check_max_tokens(self) -> None:
        check_max_tokens(self.max_tokens, "max_tokens", zero_with=("echo", "prompt_logprobs"),
                         zero_ok=bool(self.echo) or self.prompt_logprobs is not None)

    def prompt_batch(self) -> list[str | list[int]]:
        """The prompts of this request: one string or token-id list each."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        kinds = set(map(type, p))  # one C-speed pass: an id list may have millions of items
        if kinds == {int}:
            return [p]  # type: ignore[list-item]
        if kinds == {str} or kinds == {list}:
            if len(p) * self.n > MAX_CHOICES:  # before any prompt is looked at
                raise InvalidRequest(
                    f"a batch may have at most {MAX_CHOICES} choices (prompts x n), got "
                    f"{len(p)} prompts x n {self.n}", param="prompt" if len(p) > MAX_CHOICES
                    else "n")
            # an empty id list; "" is what the tokenizer makes of it ([BOS], or refused)
            empty = next((i for i, x in enumerate(p) if isinstance(x, list) and not x), None)
            if empty is not None:
                raise InvalidRequest(f"prompt[{empty}] is empty: a batch must not contain "
                                     f"empty prompts", param=f"prompt[{empty}]")
            return list(p)  # type: ignore[arg-type]
        raise InvalidRequest(
            "prompt must be a string, a list of token ids, a list of strings or a list of "
            "token-id lists", param="prompt")
