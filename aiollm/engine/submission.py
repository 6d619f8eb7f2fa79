"""Submission: a prompt and its SamplingParams checked against the model at the Engine's edge,
then written into a request-table slot as a new Request; long text is tokenized off the
event loop (off_loop).

Every check here raises InvalidRequest naming the field (HTTP 400) or Overloaded (HTTP 503)
before anything is held, so one request's bad input never reaches a step that other requests
share; a request that fails after its slot is taken gives the slot back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from aiollm.engine.request import Request
from aiollm.engine.special_tokens import encode_kept
from aiollm.engine.token_floor import fewest_tokens
from aiollm.errors import (ContextExceeded, InvalidRequest, Overloaded,
                           check_unicode, shown)
from aiollm.model.sampling_tensors import GREEDY_EPS
from aiollm.native import RequestTable, TableError
from aiollm.sampling_params import SamplingParams, is_int
from aiollm.stop_conditions import StopSequences
from aiollm.vllm_sampling_extras import check_truncate_prompt_tokens

Prompt = str | Sequence[int] | dict  # a dict: vLLM's {"prompt"} or {"prompt_token_ids"}
R = TypeVar("R")

# Text longer than this is tokenized on a worker thread: the tokenizer releases the GIL while
# it encodes, so the loop's thread pays only the hand-off (0.05-0.2 ms on a 2-core CPU)
# instead of the encode, which grows with the text (0.11 ms at 471 characters, 3.1 ms at
# LightLLM's 1,024-token prompts of 7,914, 16 ms at 4,096 tokens, seconds at 16 MiB:
# bench/tokenize_loop.py), while every stream on the loop waits. Below this the two are even.
TOKENIZE_INLINE_CHARS = 512


async def off_loop(size: int, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """fn(*args, **kwargs), on a worker thread when `size` (characters of text to tokenize,
    ids to decode) is past TOKENIZE_INLINE_CHARS, else inline. The Engine API and the HTTP
    handlers tokenize through it."""
    if size <= TOKENIZE_INLINE_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def prompt_text(prompt: Prompt) -> str | None:
    """A prompt's text as its caller gave it (a string, or vLLM's {"prompt": text}); None
    for token ids, and for what is no prompt (tokenize refuses it)."""
    if isinstance(prompt, dict):
        # a TokensPrompt's "prompt" is its ids' text (vLLM gives it back as out.prompt)
        prompt = prompt.get("prompt")
    return prompt if isinstance(prompt, str) else None


# vLLM's prompt-dict keys for inputs besides text or ids (images, audio, a cross-encoder's
# token types, embeddings in place of tokens): None is none of them
OTHER_INPUTS = ("multi_modal_data", "mm_processor_kwargs", "multi_modal_uuids",
                "token_type_ids", "prompt_embeds")


def prompt_of_dict(prompt: dict) -> object:
    """The text or ids of vLLM's prompt dict: {"prompt": text} (TextPrompt) or
    {"prompt_token_ids": ids} (TokensPrompt, whose optional "prompt" is the ids' text: not
    tokenized), either with OTHER_INPUTS keys of value None. Raises InvalidRequest (param
    "prompt") naming an OTHER_INPUTS key given a value (aiollm's models take text or ids
    alone), or for other keys or a text that is no string."""
    for key in OTHER_INPUTS:
        if prompt.get(key) is not None:
            raise InvalidRequest(f"{key} is not supported: aiollm's models take text or token "
                                 "ids alone (a prompt dict's \"prompt\" or "
                                 "\"prompt_token_ids\")", param="prompt")
    keys = {k: v for k, v in prompt.items() if k not in OTHER_INPUTS}
    if "prompt_token_ids" in keys and "prompt" in keys:
        if not isinstance(keys.pop("prompt"), str):
            raise InvalidRequest('a prompt dict\'s "prompt" must be text, the text of its '
                                 '"prompt_token_ids"', param="prompt")
    if len(keys) != 1 or not {"prompt", "prompt_token_ids"}.issuperset(keys):
        raise InvalidRequest('a prompt dict must hold one key, "prompt" (text) or '
                             f'"prompt_token_ids" (token ids), got {sorted(prompt)!r:.80}',
                             param="prompt")
    (key, value), = keys.items()
    if key == "prompt" and not isinstance(value, str):
        raise InvalidRequest(f'a prompt dict\'s "prompt" must be text, got '
                             f"{type(value).__name__}", param="prompt")
    if key == "prompt_token_ids" and isinstance(value, str):
        raise InvalidRequest('a prompt dict\'s "prompt_token_ids" must be token ids, got '
                             "str", param="prompt")
    return value


def tokenize(tokenizer, prompt: Prompt, vocab_size: int, max_model_len: int,
             keep_last: int | None = None, *, refuse_long: bool = True) -> list[int]:
    """Token ids of a prompt: a string is encoded with `tokenizer`, a sequence of ids (ints
    or numpy integers) is checked to be in [0, vocab_size) and returned as a list of ints.
    vLLM's prompt dicts are taken too: {"prompt": text} (TextPrompt) and
    {"prompt_token_ids": ids} (TokensPrompt), vLLM's way to pass ids to LLM.generate
    (prompt_of_dict).

    Raises InvalidRequest (param "prompt") for a prompt of another type, a dict with other
    keys (prompt_of_dict), an empty prompt (of text: one that encodes to no token), a lone
    surrogate in the text, a bad id (the message says which), or ids that alone exceed
    max_model_len (tokens; a prompt of exactly max_model_len is checked with its max_tokens
    by check_request). keep_last: only the prompt's last that many tokens are kept (see
    kept_prompt_tokens), before the length is checked: of text, its special tokens (a BOS)
    kept and its own tokens cut, as vLLM's tokenizer truncates it (encode_kept); of ids,
    their last keep_last.
    refuse_long: text to generate from, refused before it is encoded where it can never
    fit (prompt_bound); False: counted, of any length."""
    if isinstance(prompt, dict):
        prompt = prompt_of_dict(prompt)
    if isinstance(prompt, str):
        check_unicode(prompt, "prompt")
        if refuse_long:
            check_fewest_tokens(tokenizer, prompt, prompt_bound(max_model_len, keep_last))
        return of_some_tokens(encode_kept(tokenizer, prompt, keep_last=keep_last))
    # bytes are a sequence of ints too: b"hello" would be the ids 104, 101, ...
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        hint = " (an array's ids: pass .tolist())" if hasattr(prompt, "tolist") else ""
        raise InvalidRequest(f"prompt must be a string or a list of token ids, got "
                             f"{type(prompt).__name__}{hint}", param="prompt")
    # numpy's integers (list(array), a tokenizer's output) are ids too, kept as Python ints
    ids = [int(t) if isinstance(t, np.integer) else t for t in prompt]
    if keep_last:
        ids = ids[-keep_last:]
    if not ids:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if len(ids) > max_model_len:  # refused anyway: spare checking each id
        raise too_long(len(ids), max_model_len)
    bad = next((i for i, t in enumerate(ids) if not (is_int(t) and 0 <= t < vocab_size)), None)
    if bad is not None:
        raise InvalidRequest(f"prompt token ids must be integers in [0, {vocab_size}): "
                             f"prompt[{bad}] is {shown(ids[bad])}", param="prompt")
    return ids


def of_some_tokens(ids: list[int]) -> list[int]:
    """The ids a text prompt encodes to, when there is at least one. Raises InvalidRequest
    (param "prompt") for none: "" (or text the tokenizer drops) without a BOS added, as
    vLLM refuses an empty token list; with a BOS, "" is [BOS] and generates, as in vLLM."""
    if not ids:
        raise InvalidRequest("prompt must not be empty: it encodes to no token (the "
                             "tokenizer adds no BOS to it)", param="prompt")
    return ids


def kept_prompt_tokens(truncate_prompt_tokens: int | None, max_model_len: int) -> int | None:
    """How many of a prompt's last tokens SamplingParams.truncate_prompt_tokens keeps
    (None: all; -1: the context length), as vLLM reads it. Raises InvalidRequest naming
    truncate_prompt_tokens when it is no such value (check_truncate_prompt_tokens) or past
    the context, as vLLM refuses it."""
    check_truncate_prompt_tokens(truncate_prompt_tokens)
    if truncate_prompt_tokens == -1:
        return max_model_len
    if truncate_prompt_tokens is not None and truncate_prompt_tokens > max_model_len:
        raise InvalidRequest(
            f"truncate_prompt_tokens ({truncate_prompt_tokens}) is more than this model's "
            f"maximum context length ({max_model_len}): give at most {max_model_len}, or -1",
            param="truncate_prompt_tokens")
    return truncate_prompt_tokens


def too_long(n: int, max_model_len: int, at_least: bool = False) -> ContextExceeded:
    """The error for a prompt of n > max_model_len tokens (at_least: of n or more, counted
    without tokenizing it: check_fewest_tokens)."""
    more = "at least " if at_least else ""
    return ContextExceeded(f"{{subject}} {more}{n} tokens, but this model's maximum context "
                           f"length is {max_model_len} tokens (input and output together)",
                           "prompt")


def prompt_bound(max_model_len: int, keep_last: int | None) -> int | None:
    """The early refusal's rule, which every path that tokenizes a prompt to generate from
    follows: the most tokens its text (or rendered conversation) may encode to, checked
    before it is encoded (check_fewest_tokens): the context; None (nothing checked) where
    keep_last (truncate_prompt_tokens as kept_prompt_tokens checks and counts it: a value
    sent as it is, 0 or past the context, would skip the check for a request refused
    anyway; add_request.params_bound reads it off params) keeps only the prompt's last
    tokens, never too long then. A path that counts tokens
    (Engine.tokenize and render_chat, /tokenize, LightLLM's /tokens) checks no bound."""
    return max_model_len if keep_last is None else None


def check_fewest_tokens(tokenizer, text: str, most: int | None) -> None:
    """Raise too_long (ContextExceeded naming "prompt", its count "at least" the fewest)
    when `text` cannot encode to `most` tokens or fewer (token_floor.fewest_tokens: a
    bound read off the vocabulary, no encoding), so that a prompt the context could never
    hold is refused at once rather than after seconds of tokenizing: the same refusal the
    length check after tokenizing gives it. Where no bound is proven, or `most` is None
    (prompt_bound's: none is), nothing is checked. Reads the text only where its
    characters over the longest token pass `most` (milliseconds per 16 MB): call it where
    the text would be encoded."""
    if most is None or len(text) <= most:  # the fewest tokens are at most the characters
        return
    fewest = fewest_tokens(tokenizer, text, most)  # read only where it may be refused
    if fewest > most:
        raise too_long(fewest, most, at_least=True)


def check_request(n: int, params: SamplingParams, vocab_size: int, max_model_len: int) -> None:
    """Check that a prompt of n tokens and params.max_tokens fit in max_model_len (a prompt
    that is only scored, max_tokens 0, may fill it: nothing follows it in the context; with
    max_tokens None the output takes what the prompt leaves, at least one token) and
    that params.stop_token_ids index the vocabulary: they index the logits (min_tokens masks
    them), so one past the vocabulary would fail the whole step, every request in it.

    Raises ContextExceeded (an InvalidRequest whose message an endpoint may name the prompt
    in, in its own fields) naming "prompt", "max_tokens" or "min_tokens" for a prompt past
    the context, or of max_model_len tokens with output asked, or with max_tokens or
    min_tokens past what it leaves; InvalidRequest naming "stop_token_ids" or
    "stop_token_sequences"."""
    if n > max_model_len:
        raise too_long(n, max_model_len)
    if n == max_model_len and params.max_tokens != 0:
        raise ContextExceeded(
            f"{{subject}} {n} tokens, which fill this model's maximum context length of "
            f"{max_model_len} tokens: none is left for the output; {{advice}}", "prompt")
    if params.max_tokens is None:
        check_min_tokens(n, params.min_tokens, max_model_len)
    elif n + params.max_tokens > max_model_len:
        raise ContextExceeded(
            f"this model's maximum context length is {max_model_len} tokens, but "
            f"{shown(n + params.max_tokens)} were requested ({n} in {{prompt}}, "
            f"{shown(params.max_tokens)} for the output): lower max_tokens to at most "
            f"{max_model_len - n}", "max_tokens")
    bad = next((t for t in params.stop_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"stop_token_ids must be token ids in [0, {vocab_size}), got {bad}",
                             param="stop_token_ids")
    # (never generated, so never matched: a client's mistake, told)
    bad = next((t for s in params.stop_token_sequences for t in s if not 0 <= t < vocab_size),
               None)
    if bad is not None:
        raise InvalidRequest(f"stop_token_sequences must hold token ids in [0, {vocab_size}), "
                             f"got {bad}", param="stop_token_sequences")


def check_min_tokens(n: int, min_tokens: int, max_model_len: int) -> None:
    """Check that min_tokens fit the room a prompt of n tokens leaves in the context, for a
    request that gave no max_tokens (the room is its length). Raises ContextExceeded
    naming "min_tokens", with the context length and the prompt's tokens: the numbers the
    client sent or can change, not the max_tokens it was given."""
    if n + min_tokens > max_model_len:
        raise ContextExceeded(
            f"this model's maximum context length is {max_model_len} tokens, but "
            f"{{subject}} {n} and min_tokens asks for {shown(min_tokens)} more: lower "
            f"min_tokens to at most {max_model_len - n}", "min_tokens")


def default_length(max_tokens: int | None, n: int, max_model_len: int) -> int:
    """The output length, in tokens, of a request whose caller gave none, for a prompt of n
    tokens: the room the context leaves after the prompt, or the model's default length
    (a generation config's max_new_tokens) where that is less; at least 1, so a prompt that
    fills the context is refused as too long rather than given a length of 0. vLLM's LLM and
    server end such an output at the context too."""
    rest = max(1, max_model_len - n)
    return rest if max_tokens is None else min(rest, max_tokens)


def default_length_within(params: SamplingParams, n: int, max_model_len: int
                          ) -> SamplingParams:
    """`params` (the engine's defaults, for a call given none) for a prompt of n tokens, its
    max_tokens (a generation config's max_new_tokens) cut by `default_length`. The caller
    never gave that length: past the context, it refused every such call naming max_tokens."""
    if params.max_tokens is None:
        return params
    return dataclasses.replace(params, max_tokens=default_length(params.max_tokens, n,
                                                                 max_model_len))


def request_params(params: SamplingParams, n: int, max_model_len: int) -> SamplingParams:
    """The request's own copy of `params` (checked) for a prompt of n tokens, with its own
    stop lists and max_tokens None made the room the context leaves after the prompt. The
    caller may change or reuse theirs (for the next request, the other prompts of a batch)
    while the request runs: the planner, the hand-out and the stream read the request's
    params to its end, and a max_tokens lowered meanwhile left it undecoded, unfinished,
    forever."""
    room = max_model_len - n if params.max_tokens is None else params.max_tokens
    return dataclasses.replace(params, max_tokens=room, stop=list(params.stop),
                               stop_token_ids=list(params.stop_token_ids))


def new_request(table: RequestTable, ids: list[int], params: SamplingParams, rng: random.Random,
                grammar=None, *, keep_prompt_array: bool = False) -> Request:
    """Take a table slot for a checked prompt and write its record (lengths, sampling
    parameters, stop ids, arrival time). rng draws the seed when params.seed is None (only
    once a slot is taken, so refused requests leave the engine's seed sequence alone);
    grammar: the request's matcher from Grammars.start,
    or None; keep_prompt_array: also hold the ids as int32 numpy (the prefix cache matches
    them at admission: converted once, here).

    Raises Overloaded when the table has no free slot; a record that cannot be written
    (a value out of the table's range) gives its slot back and re-raises."""
    try:
        slot = table.alloc()
    except TableError as e:
        raise Overloaded(str(e)) from e
    seed = params.seed if params.seed is not None else rng.getrandbits(62)
    req = Request(prompt_ids=ids, params=params, slot=slot, seed=seed, arrival=time.monotonic(),
                  grammar=grammar)
    if keep_prompt_array:
        req.prompt_array = np.asarray(ids, dtype=np.int32)
    if params.stop_token_sequences:
        req.stop_sequences = StopSequences(params.stop_token_sequences)
    if params.logprobs is not None:
        req.logprobs = []
    if params.prompt_logprobs is not None:
        req.prompt_logprobs = [None] * len(ids)
    greedy = (params.temperature < GREEDY_EPS and params.logprobs is None
              and not params.uses_penalty and params.min_tokens == 0
              and not params.uses_length_penalty)
    req.argmax_only = greedy and grammar is None
    req.masked_argmax = greedy and grammar is not None and not grammar.biased
    try:
        _fill_record(table, req, params)
    except Exception:
        table.free(slot)
        raise
    return req


def _fill_record(table: RequestTable, req: Request, params: SamplingParams) -> None:
    rec = table[req.slot]
    rec["id"] = req.rid
    rec["prompt_len"] = len(req.prompt_ids)
    rec["max_new_tokens"] = max(1, params.max_tokens)  # 0: the prefill's token ends it
    rec["min_new_tokens"] = params.min_tokens
    rec["temperature"] = params.temperature
    rec["top_p"] = params.top_p
    rec["top_p_joint"] = params.top_p_joint
    if params.uses_length_penalty:
        rec["length_penalty_start"], rec["length_penalty_factor"] = (
            params.exponential_decay_length_penalty)
    rec["top_k"] = params.top_k
    rec["min_p"] = params.min_p
    rec["repetition_penalty"] = params.repetition_penalty
    rec["presence_penalty"] = params.presence_penalty
    rec["frequency_penalty"] = params.frequency_penalty
    rec["seed"] = req.seed
    rec["ignore_eos"] = params.ignore_eos
    rec["top_logprobs"] = -1 if params.logprobs is None else params.logprobs
    rec["t_arrival"] = time.monotonic_ns()
    table.set_stop_ids(req.slot, params.stop_token_ids)
