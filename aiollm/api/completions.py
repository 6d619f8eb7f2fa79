"""/v1/completions: a prompt (or a batch of them) continued, whole or streamed, with the
prompt echoed and scored on request; and the logprob formats it answers in (OpenAI's legacy
one, vLLM's prompt_logprobs).

Each choice (n > 1, or each prompt of a batch) is its own engine request (a completion that
only echoes its prompt asks the engine nothing: prompt_echo.py). A prompt's scores (echo with
logprobs, prompt_logprobs) are computed by its first choice alone and repeated in the others
(a scored prompt is prefilled in full, without the prefix cache: n choices scored it n times,
~n times the work of one).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from aiollm.api import sse
from aiollm.api.body import decode_body
from aiollm.api.choices import gather_outputs, leaders_first, merge
from aiollm.api.completion_request import CompletionRequest
from aiollm.api.http_errors import context_told
from aiollm.api.logprob_json import json_logprob
from aiollm.api.prompt_echo import PromptEcho, echo_only
from aiollm.api.protocol import json_response
from aiollm.api.request_id import request_id
from aiollm.api.state import ApiState, state
from aiollm.api.token_bytes import TokenBytes
from aiollm.api.token_names import id_name, names_by_id
from aiollm.api.usage import chunk_usage, room, usage_of
from aiollm.engine.request_group import choice_group
from aiollm.engine.special_tokens import special_tokens_around
from aiollm.errors import naming_batch_item

if TYPE_CHECKING:
    from aiollm.engine import Delta, RequestOutput, TokenLogprob

T = TypeVar("T")


async def completions(request: web.Request) -> web.StreamResponse:
    st = state(request)
    engine = st.engine
    req = await decode_body(request, CompletionRequest)
    rid = request_id(request, req.request_id)  # errors too carry it from here
    st.check_model(req.model)
    req.check_unserved()
    req.check_max_tokens()
    prompts = req.prompt_batch()
    st.check_choices(len(prompts) * req.n, "n" if req.n > 1 else "prompt")
    # a list of prompts (even of one) is a batch: its errors say which prompt (prompt[i])
    batched = prompts[0] is not req.prompt
    keep = req.kept_prompt_tokens(engine.max_model_len)
    special = req.add_special_tokens
    prompt_ids = (await st.tokenize_batch(prompts, keep, add_special_tokens=special) if batched
                  else [await st.tokenize(prompts[0], add_special_tokens=special,
                                          keep_last=keep)])
    constraint = req.constraint()
    # echo with logprobs (or max_tokens 0: prompt scoring) reports the prompt's tokens too
    echo_scores = req.echo and (req.logprobs is not None or req.max_tokens == 0)
    scoring = req.prompt_logprobs
    if echo_scores:
        scoring = max(scoring or 0, req.logprobs or 0)
    jobs = []  # choice index k = prompt index * n + j, as OpenAI numbers them
    for i, ids in enumerate(prompt_ids):
        if req.max_tokens is not None:
            max_tokens = req.max_tokens
        else:  # min_tokens past the room are told as the engine tells them of this prompt
            with naming_batch_item("prompt", i if batched else None), context_told(*_NAMING):
                max_tokens = room(st, len(ids), req.min_tokens)
        for j in range(req.n):
            # the prompt is scored by its first choice (max_tokens 0: by each, as nothing
            # else would be asked of them)
            sp = req.sampling_params(defaults=engine.sampling_defaults, max_tokens=max_tokens,
                                     logprobs=req.logprobs, choice=j, constraint=constraint,
                                     prompt_logprobs=scoring if j == 0 or max_tokens == 0
                                     else None)
            jobs.append((i if batched else None, ids, sp))
    await engine.compile_grammar(jobs[0][2])
    # a request that asks for nothing computed is checked and answered without the model
    source = PromptEcho(engine, jobs) if echo_only(req) else engine
    vocab = await st.token_bytes() if req.logprobs is not None or scoring is not None else None
    by_id = names_by_id(req.return_tokens_as_token_ids, st.return_tokens_as_token_ids)
    echo = []  # each choice's echoed prompt: text and its tokens' texts
    for p, ids in zip(prompts, prompt_ids):
        own, whole = (await _own_tokens(st, p, ids) if echo_scores or req.echo and keep
                      else (None, False))
        pieces = _echo_pieces(vocab, ids, own) if echo_scores else None
        text = _echo_text(st, p, ids if keep and not whole else None, own) if req.echo else ""
        echo += [(text, pieces)] * req.n
    head = {"id": f"cmpl-{rid}", "object": "text_completion",
            "created": int(time.time()), "model": st.model_name,
            "system_fingerprint": st.system_fingerprint}
    prompt_tokens = sum(len(ids) for ids in prompt_ids)

    scored: dict[int, Sequence[TokenLogprob | None]] = {}  # a prompt's first choice's
    shown: dict[int, list] = {}  # and its vLLM form, made once for the n choices

    def scores_of(k: int, out: Delta | RequestOutput, first: bool
                  ) -> Sequence[TokenLogprob | None] | None:
        """Choice k's prompt scores, where its output (its first delta) brings them: its
        own, or its prompt's first choice's (which comes first: leaders_first)."""
        if out.prompt_logprobs is not None:
            scored.setdefault(k - k % req.n, out.prompt_logprobs)
            return out.prompt_logprobs
        return scored.get(k - k % req.n) if first and scoring is not None else None

    def logprobs_of(k: int, out: Delta | RequestOutput, offset: int, first: bool
                    ) -> dict | None:
        scores = scores_of(k, out, first)
        if req.logprobs is None:
            return None
        prompt_part = None
        if echo_scores and scores is not None:  # the prompt's tokens first
            prompt_part = _completion_logprobs(vocab, scores, echo[k][1], offset,
                                               jobs[k][1] if by_id else None)
            offset += len(echo[k][0])
        lp = _completion_logprobs(vocab, out.logprobs, out.token_texts, offset,
                                  out.token_ids if by_id else None)
        return _joined(prompt_part, lp) if prompt_part else lp

    def prompt_scores(k: int, out: Delta | RequestOutput, first: bool) -> dict:
        scores = scores_of(k, out, first)
        if req.prompt_logprobs is None or scores is None:
            return {}
        lead = k - k % req.n
        if lead not in shown:
            shown[lead] = vllm_prompt_logprobs(vocab, scores)
        return {"prompt_logprobs": shown[lead]}

    def token_ids(k: int, out: Delta | RequestOutput, first: bool) -> dict:
        """vLLM's return_token_ids: the choice's prompt ids (a stream's first chunk of
        the choice) and the ids it generated (a chunk: those it brings)."""
        if not req.return_token_ids:
            return {}
        return {**({"prompt_token_ids": jobs[k][1]} if first else {}),
                "token_ids": list(out.token_ids)}

    salted = {"cache_salt": req.cache_salt}
    # each prompt's n choices are measured as one request (vLLM's request of n per prompt)
    groups = [choice_group(req.n) for _ in prompt_ids]
    if not req.stream:
        outs = await gather_outputs([_of_prompt(i, partial(source.generate, ids, sp,
                                                           group=groups[k // req.n], **salted))
                                     for k, (i, ids, sp) in enumerate(jobs)])
        choices = [{
            "index": k, "text": echo[k][0] + out.text, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason,
            "logprobs": logprobs_of(k, out, 0 if echo_scores else len(echo[k][0]), True),
            **prompt_scores(k, out, True), **token_ids(k, out, True),
        } for k, out in enumerate(outs)]
        # a prompt counts once however many choices it has: its first choice's hit (the
        # others reuse what that one computed)
        cached = sum(o.cached_tokens for o in outs[::req.n])
        return json_response({**head, "choices": choices, "usage": usage_of(
            prompt_tokens, sum(o.completion_tokens for o in outs), cached)})

    done_tokens = [0] * len(jobs)
    cached_tokens = [0] * len(jobs)
    offsets = [0 if echo_scores else len(e[0]) for e in echo]  # text_offset of the next token
    echoed = [False] * len(jobs)

    def usage() -> dict:
        return usage_of(prompt_tokens, sum(done_tokens), sum(cached_tokens[::req.n]))

    def choice_usage(k: int) -> dict:
        """Choice k's usage so far, as a chunk of it counts it (continuous_usage_stats): its
        prompt's tokens and hit (its first choice's, rendered by now: leaders_first)."""
        lead = k - k % req.n
        return usage_of(len(jobs[k][1]), done_tokens[k], cached_tokens[lead])

    def render(item: tuple[int, Delta]) -> bytes:
        k, delta = item
        text, first = delta.text, not echoed[k]
        if first:
            text, echoed[k] = echo[k][0] + text, True
        logprobs = logprobs_of(k, delta, offsets[k], first)
        offsets[k] += len(text)  # what the output's next token's offset counts from
        done_tokens[k] = delta.completion_tokens
        cached_tokens[k] = delta.cached_tokens
        return sse.event({**head, "choices": [{
            "index": k, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason,
            "stop_reason": delta.stop_reason,  # null until the last (vLLM sends it in each)
            **prompt_scores(k, delta, first), **token_ids(k, delta, first),
        }], **chunk_usage(req, partial(choice_usage, k))})

    def tail() -> bytes:
        last = sse.event({**head, "choices": [], "usage": usage()}) if req.include_usage else b""
        return last + sse.DONE

    stream = partial(source.stream, **salted)
    starts = [partial(_stream_of_prompt, i, partial(stream, group=groups[k // req.n]), ids, sp)
              for k, (i, ids, sp) in enumerate(jobs)]
    return await sse.send(request, leaders_first(merge(starts), req.n), render, tail)


# a prompt of the whole context may only be scored: max_tokens 0 needs echo or prompt_logprobs
_NAMING = ("the prompt has", "the prompt", "shorten it, or only score it: max_tokens 0 with "
           "echo or prompt_logprobs generates nothing and may fill the context")


async def _of_prompt(i: int | None, start: Callable[[], Awaitable[T]]) -> T:
    """start()'s result, whose errors about its prompt name prompt i of the batch (None: no
    batch). start is called here, not by the caller: a choice cancelled before it runs (its
    client gone) then leaves no coroutine made and never awaited."""
    with naming_batch_item("prompt", i), context_told(*_NAMING):
        return await start()


def _stream_of_prompt(i: int | None, stream: Callable[..., AsyncIterator[T]], *args
                      ) -> AsyncIterator[T]:
    """stream(*args), whose errors about its prompt (raised as it is called) name prompt i
    of the batch (None: no batch)."""
    with naming_batch_item("prompt", i), context_told(*_NAMING):
        return stream(*args)


async def _own_tokens(st: ApiState, prompt: str | list[int], ids: list[int]
                      ) -> tuple[range | None, bool]:
    """(where, whether all of them): where a text prompt's own tokens (its text tokenized
    without special tokens) stand in its `ids`: the tokens around them are those the
    tokenizer added (a start token: <s>, <|begin_of_text|>); one the client wrote in its
    text is its own. Where truncate_prompt_tokens cut into them, the last of them it kept,
    between the added tokens it keeps (special_tokens.with_special_tokens). (None, False)
    for token ids, or where `ids` hold them neither way."""
    if not isinstance(prompt, str):
        return None, False
    # counted, never refused: a prompt truncate_prompt_tokens cut is longer than the context,
    # and one of a BOS alone has no own token
    written = await st.encode(prompt, add_special_tokens=False)
    n = len(written)
    k = next((k for k in range(len(ids) - n + 1) if ids[k:k + n] == written), None)
    if k is not None:
        return range(k, k + n), True
    before, after = special_tokens_around(st.engine.tokenizer)
    a, b = len(before), len(ids) - len(after)
    if a <= b < a + n and ids[:a] == before and ids[b:] == after and (
            ids[a:b] == written[n - (b - a):]):
        return range(a, b), False
    return None, False


def _echo_text(st: ApiState, prompt: str | list[int], kept: list[int] | None,
               own: range | None) -> str:
    """The echoed prompt, as vLLM echoes it: a text prompt as the client sent it (without
    a start token the tokenizer added), token ids decoded (special tokens kept: the client
    sent them). A prompt that truncate_prompt_tokens cut to its `kept` tokens is echoed as
    the model saw it: those tokens decoded, of a text prompt only its `own` ones (a kept
    start token is not echoed either, as without truncation)."""
    if kept is not None:
        return st.engine.tokenizer.decode(kept if own is None else kept[own.start:own.stop])
    return prompt if isinstance(prompt, str) else st.engine.tokenizer.decode(prompt)


def _echo_pieces(vocab: TokenBytes, ids: list[int], own: range | None) -> list[str]:
    """Each prompt token's text in the echo's logprobs, one per token of `ids` (what usage
    counts and the model scored): its share of the text (TokenBytes.pieces), and "" for a
    token outside the prompt's `own` ones (_own_tokens: one the tokenizer added), which
    stands for none of the echoed text (_echo_text), so the tokens still join to it and
    text_offset indexes it."""
    pieces = vocab.pieces(ids)
    if own is not None:
        for k in range(len(ids)):
            if k not in own:
                pieces[k] = ""
    return pieces


def _completion_logprobs(vocab: TokenBytes, lps: Sequence[TokenLogprob | None],
                         texts: Sequence[str], offset: int,
                         ids: Sequence[int] | None = None) -> dict:
    """The legacy completions format: parallel lists, top alternatives as {text: logprob}
    (the `logprobs` most likely, and the chosen token if it is not one of them).
    `texts` are the tokens' shares of the text (they join to it), so the offsets index it; a
    None entry (the prompt's first token) has no logprob. `ids`, the tokens' ids (one per
    entry: the only source of a None entry's), name the tokens and the alternatives
    "token_id:N" (return_tokens_as_token_ids); the offsets still index the text (vLLM
    counts the names' lengths there, which index nothing). An impossible token's logprob
    (-inf) is sent as -9999.0 (api/logprob_json.py)."""
    name = vocab.text_of if ids is None else id_name
    tokens, values, tops, offsets = [], [], [], []
    for k, (lp, text) in enumerate(zip(lps, texts)):
        tokens.append(text if ids is None else id_name(ids[k] if lp is None else lp.token_id))
        offsets.append(offset)
        offset += len(text)
        if lp is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(json_logprob(lp.logprob))
        # the chosen token is always listed, after the top alternatives when not among them
        # (OpenAI: "up to logprobs+1 elements"; vLLM likewise), so a client can compare it.
        # It is keyed by its text in `tokens` (vLLM takes both from its one decoded_token):
        # a token holding part of a character is "" or the whole character there, where
        # its own bytes (name) are \xNN escapes. The alternatives keep their own bytes.
        own = tokens[-1]
        top = {own if t == lp.token_id else name(t): json_logprob(v) for t, v in lp.top}
        top.setdefault(own, json_logprob(lp.logprob))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


def _joined(a: dict, b: dict) -> dict:
    return {key: a[key] + b[key] for key in a}


def vllm_prompt_logprobs(vocab: TokenBytes, lps: Sequence[TokenLogprob | None]) -> list:
    """vLLM's prompt_logprobs (of a completions choice, and of a whole chat answer): per
    prompt token None (the first) or {id: {logprob, rank, decoded_token}} for the prompt
    token and its top alternatives."""
    out: list[dict | None] = []
    for lp in lps:
        if lp is None:
            out.append(None)
            continue
        entry = {str(lp.token_id): {"logprob": json_logprob(lp.logprob), "rank": lp.rank,
                                    "decoded_token": vocab.text_of(lp.token_id)}}
        for rank, (t, v) in enumerate(lp.top, 1):
            entry.setdefault(str(t), {"logprob": json_logprob(v), "rank": rank,
                                      "decoded_token": vocab.text_of(t)})
        out.append(entry)
    return out
