"""What the engine returns: a whole result (generate) or stream deltas (stream); and the
vLLM-shaped view of a whole result (RequestOutput.outputs: CompletionOutput, Logprob)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiollm.engine.request import TokenLogprob


@dataclass(slots=True)
class Delta:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None  # None until the last delta: "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int  # tokens handed out so far, these included
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    # each token's text: they join to `text` (see engine/output_text.py)
    token_texts: list[str] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # the first delta's, if asked


@dataclass(slots=True)
class RequestOutput:
    """One prompt's result. Its own fields are one completion's (choice 0 when
    SamplingParams.n > 1): `text`, `token_ids`, `finish_reason` ("stop", "length" or
    "abort"), `logprobs` (one TokenLogprob per token: the chosen id, its logprob and the top
    (id, logprob) alternatives) and its counts in tokens. `outputs` shows every completion
    as vLLM's RequestOutput.outputs does; `prompt` and `prompt_token_ids` are vLLM's too."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    prompt_token_ids: list[int] | None = None
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    token_texts: list[str] = field(default_factory=list)  # each token's text; they join to text
    # one per prompt token when asked (SamplingParams.prompt_logprobs): None for the first
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # the prompt's text as given (LLM.chat: the rendered conversation); None for token ids
    prompt: str | None = None
    # n > 1: the results of choices 1 to n-1, each its own engine request (this one is 0)
    other_choices: tuple[RequestOutput, ...] = ()

    @property
    def outputs(self) -> list[CompletionOutput]:
        """vLLM's RequestOutput.outputs: the prompt's n completions in choice order, views
        of this result and other_choices (nothing copied)."""
        return [CompletionOutput(i, out) for i, out in enumerate((self, *self.other_choices))]


@dataclass(frozen=True, slots=True)
class Logprob:
    """vLLM's Logprob: one token's logprob (natural log), its rank among the vocabulary
    (1: the most likely) where known, and its text where known."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class CompletionOutput:
    """vLLM's CompletionOutput: one completion of a prompt (choice `index`), read through
    from that choice's RequestOutput. `logprobs` is vLLM's shape: per generated token a
    dict {token id: Logprob} of the chosen token and its top alternatives (None without
    SamplingParams.logprobs). Where vLLM knows more than aiollm keeps: an alternative's
    rank is its place in the top list, the chosen token's is that too, or None when it is
    not among them (logprobs=0); the chosen token's decoded_token is its share of `text`
    (token_texts), an alternative's None (decode its id with LLM.get_tokenizer())."""

    __slots__ = ("index", "_of")

    def __init__(self, index: int, of: RequestOutput):
        self.index = index
        self._of = of

    @property
    def text(self) -> str:
        return self._of.text

    @property
    def token_ids(self) -> list[int]:
        return self._of.token_ids

    @property
    def finish_reason(self) -> str:
        return self._of.finish_reason

    @property
    def cumulative_logprob(self) -> float | None:
        """The sum of the chosen tokens' logprobs; None without SamplingParams.logprobs (as
        vLLM)."""
        lps = self._of.logprobs
        return None if lps is None else sum(lp.logprob for lp in lps)

    @property
    def logprobs(self) -> list[dict[int, Logprob]] | None:
        lps = self._of.logprobs
        if lps is None:
            return None
        texts = self._of.token_texts
        steps = []
        for i, lp in enumerate(lps):
            # the chosen token first, then the alternatives most likely first (as vLLM)
            rank = next((r for r, (t, _) in enumerate(lp.top, 1) if t == lp.token_id), None)
            text = texts[i] if i < len(texts) else None
            step = {lp.token_id: Logprob(lp.logprob, rank, text)}
            for r, (t, v) in enumerate(lp.top, 1):
                step.setdefault(t, Logprob(v, r))
            steps.append(step)
        return steps

    def __repr__(self) -> str:
        return (f"CompletionOutput(index={self.index}, text={self.text!r}, "
                f"token_ids={self.token_ids!r}, finish_reason={self.finish_reason!r})")
