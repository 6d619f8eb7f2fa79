"""SamplingParams: how one request is generated, validated where it enters."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

# a request's grammar and token constraints, importable from here as README documents them
from aiollm.constraint import Constraint, GrammarSpec  # noqa: F401
from aiollm.errors import InvalidRequest, shown
from aiollm.numpy_scalars import plain_bool, plain_number
# the stop lists' bounds and checks, importable from here as before
from aiollm.stop_conditions import (MAX_STOP_CHARS, MAX_STOP_STRING_CHARS,  # noqa: F401
                                    MAX_STOP_TOKEN_IDS, checked_stop, checked_stop_token_ids,
                                    checked_stop_token_sequences, is_int)
# vLLM's grammar object, importable from here as from vllm.sampling_params
from aiollm.structured_outputs import GuidedDecodingParams, StructuredOutputsParams, grammar_of
from aiollm.vllm_sampling_extras import (check_logits_processors, check_truncate_prompt_tokens,
                                         checked_bad_words, checked_detokenize)


logger = logging.getLogger(__name__)

_NUMBERS = ("n", "best_of", "max_tokens", "min_tokens", "temperature", "top_p", "top_k",
            "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed",
            "logprobs", "prompt_logprobs", "truncate_prompt_tokens")


# seeds are int64, as vLLM and OpenAI's API take them (-1 included): [-2**63, 2**63); the
# noise keys read them as 64 bits (kernels/sampling.py's row_keys)
SEED_RANGE = 2**63
# vLLM's SamplingParams reads seed -1 as no seed (None): front ends send it for "random"
# (llama.cpp's convention), and a fixed seed would give them the same draw every time
NO_SEED = -1
# choices of one prompt (n): vLLM's bound (VLLM_MAX_N_SEQUENCES' default). Each is an engine
# request whose params and task are made on the event loop before the first runs, which
# takes seconds past about 10**5 (16384: a fraction of a second); the table and the waiting
# queue then take them as they make room. The HTTP API's bound is lower (api/protocol.py).
MAX_N_SEQUENCES = 16384
MAX_LOGPROBS = 20
# SamplingParams.penalty_scope's values (the field's comment says what each counts)
PENALTY_SCOPES = ("vllm", "output", "prompt_and_output")
# Seen tokens' positive logits are divided by the repetition penalty in float32: far below
# this they overflow to inf (a float32 zero below ~1e-45), and the logprobs become NaN
MIN_REPETITION_PENALTY = 0.01
# the highest penalties taken with LightLLM's penalty scopes (LightLLM bounds them only below):
# far within float32 once multiplied by a count of occurrences or a logit
MAX_LIGHTLLM_PENALTY = 10**6
# the highest temperature taken (at 100 the draw is already close to uniform)
MAX_TEMPERATURE = 100
# vLLM's _MAX_TEMP: a temperature in (0, this) is raised to it, with a warning, as vLLM's
# SamplingParams raises it (a client's 0.001 for "almost greedy" samples at 0.01 there, and
# one below the sampler's greedy threshold, 1e-5, samples too rather than taking the argmax)
MIN_TEMPERATURE = 0.01
_low_temperature_warned = False  # _raise_tiny_temperature's first warning given


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice i of a seeded request (n > 1): seed + i, as vLLM seeds the
    choices of one request, wrapped within the seed's half of the range (a seed >= 0 in
    [0, 2**63), a negative one in [-2**63, -1): -1 is no seed, NO_SEED) so that every valid
    seed works for every n: the choices differ and the request stays reproducible. None and
    -1 (each choice draws its own) are None; an invalid seed is passed on as it is, for
    SamplingParams to report."""
    if is_int(seed) and seed == NO_SEED:
        return None
    if seed is None or not is_int(seed) or not -SEED_RANGE <= seed < SEED_RANGE:
        return seed
    if seed >= 0:
        return (seed + choice) % SEED_RANGE
    return (seed + SEED_RANGE + choice) % (SEED_RANGE - 1) - SEED_RANGE


# keywords only: vLLM's first field is n, so SamplingParams(2) meant n=2 there and another
# field here
@dataclass(slots=True, kw_only=True)
class SamplingParams:
    # None: as many as the context has room for after the prompt (vLLM's None)
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # which tokens the three penalties count (PENALTY_SCOPES): "vllm", vLLM's and
    # transformers' (repetition over prompt and output, presence and frequency over the
    # output); "output", LightLLM's default (all three over the output); "prompt_and_output",
    # LightLLM's input_penalty (all three over both, the prompt's occurrences counted).
    # LightLLM's scopes take LightLLM's ranges of the three too (check)
    penalty_scope: str = "vllm"
    # False: top-p's mass is that of the tokens top-k and min-p keep, renormalised (vLLM's);
    # True: that of the whole distribution, cut by top-k after (LightLLM's sampler)
    top_p_joint: bool = False
    # True: a temperature in (0, MIN_TEMPERATURE) is raised to it, as vLLM's SamplingParams
    # raises it; False: sampled as sent (LightLLM's, whose /generate has no such floor)
    raise_low_temperature: bool = True
    # transformers' and LightLLM's (start, factor): once the output holds n > start tokens,
    # each eos logit x is raised by |x| * (factor ** (n - start) - 1); None: none
    exponential_decay_length_penalty: tuple[int, float] | None = None
    seed: int | None = None  # -1 is None (no seed), as vLLM reads it
    stop: list[str] = field(default_factory=list)  # also one string, a tuple or None
    stop_token_ids: list[int] = field(default_factory=list)  # also a tuple or None
    # LightLLM's stop_sequences: token id sequences that end the output ("stop") once its
    # last tokens are one of them, from its first token whatever min_tokens (as LightLLM
    # matches them). The matched tokens stay in the output and in its text, whatever
    # include_stop_str_in_output; no stop_reason is given. Held as tuples (None is none)
    stop_token_sequences: list[tuple[int, ...]] = field(default_factory=list)
    ignore_eos: bool = False
    # top-N logprobs of each chosen token; 0: the chosen one only (True is 1, False 0)
    logprobs: int | None = None
    # logprob of each prompt token and its top-N alternatives; 0: the prompt token's only.
    # With it, max_tokens may be 0: the prompt is scored and nothing generated.
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    # vLLM's (for its slow tokenizers): transformers 5's tokenizers, which aiollm decodes
    # with, have no spacing rule of special tokens of their own; either value decodes alike
    spaces_between_special_tokens: bool = True
    # vLLM's: the output ends after the stop string that matched (and a stop token id's
    # text stays), instead of before it
    include_stop_str_in_output: bool = False
    # a grammar, allowed token ids, logit biases (aiollm.engine.grammar applies them)
    constraint: Constraint | None = None
    # completions of each prompt (vLLM's n): each its own engine request on the same prompt
    # (whose KV the prefix cache shares), choice i seeded with seed + i (choice_seed).
    # Engine.generate, generate_batch and LLM take it; a stream is one completion.
    n: int = 1
    # vLLM's: generate best_of and keep the n most likely. Only None or n (nothing ranked)
    best_of: int | None = None
    # vLLM's names for the constraint's token ids the output is restricted to and its logit
    # biases (token id -> added to the logit): check() moves them into `constraint`, and
    # these read None after
    allowed_token_ids: list[int] | None = None
    logit_bias: dict[int, float] | None = None
    # vLLM's grammar: a StructuredOutputsParams (of this module, as vLLM's) or a dict of its
    # fields; guided_decoding is its name before vLLM 0.11. Moved into `constraint` by check()
    structured_outputs: StructuredOutputsParams | dict | None = None
    guided_decoding: StructuredOutputsParams | dict | None = None
    # vLLM's: False gives token ids only (text "", no token texts); stop strings need text
    detokenize: bool = True
    # vLLM's: words never generated. Each is tokenized as it is and after a space; a word's
    # last token is banned wherever the output's last tokens are the rest of it
    bad_words: list[str] | None = None
    # vLLM's: keep only the prompt's last k tokens (-1: the model's context length)
    truncate_prompt_tokens: int | None = None
    # vLLM's per-request logits processors, which vLLM's V1 engine refuses too: only None
    # or an empty list is taken
    logits_processors: list | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise InvalidRequest naming the first bad field and its value. Run at
        construction, and again by the Engine at submission: the fields stay assignable
        (p.temperature = -1 after SamplingParams() skipped every check, and reached the
        sampler as it was). numpy's numbers are taken, as Python's int and float, and numpy's
        bools where a bool is asked for."""
        for name in _NUMBERS:
            setattr(self, name, plain_number(getattr(self, name)))
        if is_int(self.seed) and self.seed == NO_SEED:
            self.seed = None
        self._raise_tiny_temperature()
        # vLLM's reading of a bool: True is 1 (its __post_init__), False is Python's 0 (which
        # its engine takes as the chosen token's logprob only)
        for name in ("logprobs", "prompt_logprobs"):
            if isinstance(v := plain_bool(getattr(self, name)), bool):
                setattr(self, name, int(v))
        self._fold_into_constraint()
        # vLLM's spellings: None for no stop strings or ids, a tuple for a list, top_k 0 for
        # off (its default; the HTTP API takes it too)
        for name in ("stop", "stop_token_ids"):
            v = getattr(self, name)
            if v is None or isinstance(v, tuple):
                setattr(self, name, list(v or ()))
        if is_int(self.top_k) and self.top_k == 0:
            self.top_k = -1
        if isinstance(self.stop_token_ids, list):
            self.stop_token_ids = [plain_number(t) for t in self.stop_token_ids]

        def bad(name: str, why: str) -> InvalidRequest:
            return InvalidRequest(f"{name} {why}, got {shown(getattr(self, name))}",
                                  param=name)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

        scoring = self.prompt_logprobs is not None
        if not is_int(self.n) or not 1 <= self.n <= MAX_N_SEQUENCES:
            raise bad("n", f"must be an integer in [1, {MAX_N_SEQUENCES}] (completions of "
                      "the prompt; for more, call again with another seed)")
        if self.best_of is not None and (not is_int(self.best_of) or self.best_of != self.n):
            raise bad("best_of", f"must be None or n ({self.n}): choices are not ranked; "
                      "for the n most likely of k, generate n=k with logprobs=0 and keep the "
                      "n of highest outputs[i].cumulative_logprob")
        if self.max_tokens is not None and (
                not is_int(self.max_tokens) or self.max_tokens < (0 if scoring else 1)):
            raise bad("max_tokens", "must be None (the rest of the context) or an integer "
                      ">= 1 (0 only with prompt_logprobs)")
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequest(
                f"min_tokens ({shown(self.min_tokens)}) must not exceed max_tokens "
                f"({shown(self.max_tokens)})",
                param="min_tokens",
            )
        if not is_num(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise bad("temperature", f"must be a number in [0, {MAX_TEMPERATURE}]")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not is_int(self.top_k) or self.top_k < -1 or self.top_k == 0 or self.top_k >= 2**31:
            raise bad("top_k", "must be -1 or 0 (off) or an integer in [1, 2**31)")
        if not is_num(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be in [0, 1]")
        if self.penalty_scope not in PENALTY_SCOPES:
            raise bad("penalty_scope", f"must be one of {', '.join(PENALTY_SCOPES)}")
        # vLLM's ranges, or with LightLLM's scopes LightLLM's: no penalty below neutral
        # (it refuses those) and none above MAX_LIGHTLLM_PENALTY (it bounds none)
        vllm = self.penalty_scope == "vllm"
        low, high = (MIN_REPETITION_PENALTY, 10) if vllm else (1, MAX_LIGHTLLM_PENALTY)
        if not is_num(self.repetition_penalty) or not low <= self.repetition_penalty <= high:
            raise bad("repetition_penalty", f"must be in [{low}, {high:g}]")
        low, high = (-2, 2) if vllm else (0, MAX_LIGHTLLM_PENALTY)
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_num(getattr(self, name)) or not low <= getattr(self, name) <= high:
                raise bad(name, f"must be in [{low}, {high:g}]")
        self._check_length_penalty()
        if self.seed is not None and (not is_int(self.seed)
                                      or not -SEED_RANGE <= self.seed < SEED_RANGE):
            raise bad("seed", "must be an integer in [-2**63, 2**63)")
        self.stop = checked_stop(self.stop)
        self.stop_token_ids = checked_stop_token_ids(self.stop_token_ids)
        if isinstance(self.stop_token_sequences, (list, tuple)):
            self.stop_token_sequences = [
                [plain_number(t) for t in s] if isinstance(s, (list, tuple)) else s
                for s in self.stop_token_sequences]
        self.stop_token_sequences = checked_stop_token_sequences(self.stop_token_sequences)
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output",
                     "spaces_between_special_tokens", "top_p_joint", "raise_low_temperature"):
            setattr(self, name, plain_bool(getattr(self, name)))
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a boolean")
        for name in ("logprobs", "prompt_logprobs"):
            if is_int(getattr(self, name)) and getattr(self, name) == -1:
                # as vLLM refuses it under its default --max-logprobs 20, which aiollm keeps.
                # No bare word "logprobs" here: chat renames it top_logprobs in messages
                raise InvalidRequest(
                    f"{name} -1 asks for every token of the vocabulary, more than the "
                    f"{MAX_LOGPROBS} this server returns (vLLM's default max_logprobs, which "
                    f"aiollm does not raise): ask for at most {MAX_LOGPROBS} (the most likely "
                    f"tokens, beside the chosen one)", param=name)
        if self.logprobs is not None and (
            not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise bad("logprobs", f"must be an integer in [0, {MAX_LOGPROBS}]")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise bad("constraint", "must be an aiollm.sampling_params.Constraint")
        if scoring and (not is_int(self.prompt_logprobs)
                        or not 0 <= self.prompt_logprobs <= MAX_LOGPROBS):
            raise bad("prompt_logprobs", f"must be an integer in [0, {MAX_LOGPROBS}]")
        self.detokenize = checked_detokenize(self.detokenize, self.stop)
        self.bad_words = checked_bad_words(self.bad_words)
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        check_logits_processors(self.logits_processors)

    def _raise_tiny_temperature(self) -> None:
        """A temperature in (0, MIN_TEMPERATURE) raised to MIN_TEMPERATURE, with a warning in
        the log, as vLLM's SamplingParams raises it; 0 (greedy) and the rest as they are, and
        all of them where raise_low_temperature is off (its value is checked after)."""
        t = self.temperature
        if (plain_bool(self.raise_low_temperature) is True and isinstance(t, (int, float))
                and not isinstance(t, bool) and 0 < t < MIN_TEMPERATURE):
            global _low_temperature_warned
            # a warning the first time, debug lines after: a client that always sends 0.001
            # would write one warning per request under load
            log = logger.debug if _low_temperature_warned else logger.warning
            _low_temperature_warned = True
            log("temperature %s is below %s, which vLLM raises it to (dividing the logits by "
                "less risks inf or NaN): sampling at %s (further raises are logged at debug "
                "level)", t, MIN_TEMPERATURE, MIN_TEMPERATURE)
            self.temperature = MIN_TEMPERATURE

    def _fold_into_constraint(self) -> None:
        """vLLM's allowed_token_ids, logit_bias and grammar (structured_outputs, or
        guided_decoding) moved into a copy of `constraint` (the engine reads the constraint
        alone). InvalidRequest naming the field when the constraint has one of its own too,
        or both grammar fields are given."""
        given = {name: getattr(self, name) for name in ("allowed_token_ids", "logit_bias")
                 if getattr(self, name) is not None}
        grammars = [(name, getattr(self, name)) for name in ("structured_outputs",
                                                             "guided_decoding")
                    if getattr(self, name) is not None]
        if not given and not grammars:
            return
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            return  # check() reports the constraint
        c = self.constraint or Constraint()
        if len(grammars) > 1:
            raise InvalidRequest("structured_outputs and guided_decoding (its former name) "
                                 "are both given: give one", param="guided_decoding")
        if grammars:
            given["grammar"] = grammar_of(grammars[0][1], grammars[0][0])
            self.structured_outputs = self.guided_decoding = None
        for name in given:
            if getattr(c, name) is not None:
                field_name = grammars[0][0] if name == "grammar" else name
                raise InvalidRequest(f"{field_name} is given both as a field and in "
                                     "constraint: give it once", param=field_name)
        self.constraint = Constraint(
            grammar=given.get("grammar", c.grammar),
            allowed_token_ids=given.get("allowed_token_ids", c.allowed_token_ids),
            logit_bias=given.get("logit_bias", c.logit_bias))
        self.allowed_token_ids = self.logit_bias = None

    def _check_length_penalty(self) -> None:
        """exponential_decay_length_penalty as a tuple (start, factor), or InvalidRequest
        naming it: a pair of an integer start >= 0 and a number factor in [1, 10**6] (as
        LightLLM's; at 1 it changes nothing), or None. A list is taken as the pair (JSON's
        form)."""
        v = self.exponential_decay_length_penalty
        if v is None:
            return
        pair = tuple(map(plain_number, v)) if isinstance(v, (list, tuple)) else None
        if (pair is None or len(pair) != 2 or not is_int(pair[0]) or pair[0] < 0
                or pair[0] >= 2**31 or isinstance(pair[1], bool)
                or not isinstance(pair[1], (int, float)) or not 1 <= pair[1] <= 10**6):
            raise InvalidRequest(
                "exponential_decay_length_penalty must be a pair [start, factor] of an "
                f"integer start >= 0 and a factor in [1, 1e6], got {shown(v)}",
                param="exponential_decay_length_penalty")
        self.exponential_decay_length_penalty = (pair[0], float(pair[1]))

    @staticmethod
    def from_optional(**fields) -> SamplingParams:
        """SamplingParams of `fields` that may be None (vLLM's from_optional, for a request's
        unset fields): None for n, temperature, top_p or a penalty is the field's default;
        logit_bias's keys become token ids (JSON's "50256") and its biases are clipped to
        [-100, 100], as vLLM's. Raises InvalidRequest naming logit_bias for a key that is no
        integer, and what SamplingParams raises."""
        for name in ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            if name in fields and fields[name] is None:
                del fields[name]
        if isinstance(bias := fields.get("logit_bias"), dict):
            try:
                fields["logit_bias"] = {int(t): min(100.0, max(-100.0, b))
                                        for t, b in bias.items()}
            except (TypeError, ValueError):
                raise InvalidRequest("logit_bias maps token ids (integers) to numbers, got "
                                     f"{bias!r:.80}", param="logit_bias") from None
        return SamplingParams(**fields)

    def clone(self) -> SamplingParams:
        """A deep copy (vLLM's SamplingParams.clone): its lists and constraint are its own."""
        return copy.deepcopy(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_penalty(self) -> bool:
        """Sampling needs the token history (repetition, presence or frequency penalty)."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @property
    def uses_length_penalty(self) -> bool:
        """An exponential_decay_length_penalty that changes the eos logits (factor > 1)."""
        decay = self.exponential_decay_length_penalty
        return decay is not None and decay[1] != 1.0
