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
    # the last delta's: the stop string or stop token id that ended it (RequestOutput's)
    stop_reason: int | str | None = None


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
    # one per prompt token when asked (SamplingParams.prompt_logprobs): None for the first,
    # then vLLM's {token id: Logprob} (which reads as aiollm's TokenLogprob too)
    prompt_logprobs: list[PromptTokenLogprobs | None] | None = None
    # the prompt's text as given (LLM.chat: the rendered conversation); None for token ids
    prompt: str | None = None
    # n > 1: the results of choices 1 to n-1, each its own engine request (this one is 0)
    other_choices: tuple[RequestOutput, ...] = ()
    # finish_reason "stop": the stop string or the stop token id (of stop_token_ids) that
    # ended it; None for the model's eos (and for "length", "abort")
    stop_reason: int | str | None = None
    # with logprobs, where filled (LLM fills it): each id among the logprobs' alternatives,
    # decoded alone (vLLM's Logprob.decoded_token); a dict, so the output pickles
    decoded_tokens: dict[int, str] | None = None

    @property
    def finished(self) -> bool:
        """vLLM's RequestOutput.finished: True, a whole result is one of a finished request
        (aborted ones too); aiollm's unfinished outputs are stream Deltas."""
        return True

    @property
    def num_cached_tokens(self) -> int:
        """vLLM's name for cached_tokens."""
        return self.cached_tokens

    @property
    def metrics(self) -> None:
        """vLLM's RequestOutput.metrics: None, as vLLM's LLM gives it (it logs no stats by
        default); aiollm's timings are the engine's Prometheus metrics."""
        return None

    @property
    def lora_request(self) -> None:
        """vLLM's: None (aiollm serves no LoRA adapters)."""
        return None

    def decode_alternatives(self, tokenizer) -> None:
        """Fill decoded_tokens (of this choice and the others) with the text of each
        alternative in logprobs, its id decoded alone by `tokenizer` (as vLLM decodes
        them), and the decoded_token of each token in prompt_logprobs likewise, each
        distinct id once."""
        for out in (self, *self.other_choices):
            if out.logprobs is not None and out.decoded_tokens is None:
                ids = {t for lp in out.logprobs for t, _ in lp.top}
                out.decoded_tokens = {t: tokenizer.decode([t]) for t in ids}
            if out.prompt_logprobs is not None:
                texts: dict[int, str] = {}
                for entry in out.prompt_logprobs:
                    if entry is not None:
                        entry.decode(texts, tokenizer)

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


def logprob_dict(lp: TokenLogprob, text: str | None = None,
                 decoded: dict[int, str] | None = None) -> dict[int, Logprob]:
    """One token's logprobs in vLLM's shape: {token id: Logprob} of the token itself first
    (its rank in the whole vocabulary, `text` as its decoded_token), then its top
    alternatives most likely first (ranks 1 to k, decoded_token from `decoded`), the token
    once when it is one of them."""
    out = {lp.token_id: Logprob(lp.logprob, lp.rank, text)}
    for rank, (t, v) in enumerate(lp.top, 1):
        out.setdefault(t, Logprob(v, rank, decoded.get(t) if decoded else None))
    return out


class PromptTokenLogprobs(dict):
    """One prompt token's entry of RequestOutput.prompt_logprobs, in vLLM's shape: a dict
    {token id: Logprob} of the prompt token (first; its rank in the whole vocabulary) and
    its top SamplingParams.prompt_logprobs alternatives (ranks 1 to k; the prompt token
    once when it is one of them). Each decoded_token is None until decode() (LLM's
    outputs are decoded). The aiollm TokenLogprob it was made from reads through
    (.token_id, .logprob, .rank, .top), as Engine's callers read prompt_logprobs before."""

    __slots__ = ("scored",)

    def __init__(self, scored: TokenLogprob):
        super().__init__(logprob_dict(scored))
        self.scored = scored

    @classmethod
    def of_prompt(cls, lps: list[TokenLogprob | None] | None
                  ) -> list[PromptTokenLogprobs | None] | None:
        """A request's prompt logprobs (None for the first token) as RequestOutput's."""
        return None if lps is None else [None if lp is None else cls(lp) for lp in lps]

    @property
    def token_id(self) -> int:
        return self.scored.token_id

    @property
    def logprob(self) -> float:
        return self.scored.logprob

    @property
    def rank(self) -> int | None:
        return self.scored.rank

    @property
    def top(self) -> list[tuple[int, float]]:
        return self.scored.top

    def decode(self, texts: dict[int, str], tokenizer) -> None:
        """Set each Logprob's decoded_token to its id decoded alone by `tokenizer`; `texts`
        holds the ids decoded so far (shared over a prompt: each id decoded once)."""
        for t, lp in self.items():
            if t not in texts:
                texts[t] = tokenizer.decode([t])
            self[t] = Logprob(lp.logprob, lp.rank, texts[t])


class CompletionOutput:
    """vLLM's CompletionOutput: one completion of a prompt (choice `index`), read through
    from that choice's RequestOutput. `logprobs` is vLLM's shape: per generated token a
    dict {token id: Logprob} of the chosen token and its top alternatives (None without
    SamplingParams.logprobs). An alternative's rank is its place in the top list, the
    chosen token's its place in the whole vocabulary (the tokens at least as likely,
    itself included: tied tokens share the worse rank), as vLLM V1's; the chosen token's
    decoded_token is its share of `text` (token_texts; None with detokenize=False), an
    alternative's its id decoded alone where the output carries decoded_tokens (LLM's
    outputs do; Engine's do not: None)."""

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
    def stop_reason(self) -> int | str | None:
        return self._of.stop_reason

    @property
    def lora_request(self) -> None:
        """vLLM's: None (aiollm serves no LoRA adapters)."""
        return None

    def finished(self) -> bool:
        """vLLM's CompletionOutput.finished(): whether it has a finish_reason (always: a
        whole result's)."""
        return self.finish_reason is not None

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
        decoded = self._of.decoded_tokens or {}
        return [logprob_dict(lp, texts[i] if i < len(texts) else None, decoded)
                for i, lp in enumerate(lps)]

    def __repr__(self) -> str:
        return (f"CompletionOutput(index={self.index}, text={self.text!r}, "
                f"token_ids={self.token_ids!r}, finish_reason={self.finish_reason!r})")
