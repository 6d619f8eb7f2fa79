"""LightLLM-compatible endpoints: POST /generate and POST /generate_stream.

Same wire format as LightLLM's HTTP server, so its clients and benchmark scripts work
unchanged: {"inputs": str | [ids], "parameters": {...}} in; {"generated_text": [...],
"count_output_tokens", "finish_reason", "prompt_tokens"} out, and for the stream one
`data:{json}\\n\\n` event per generated token. Sampling is greedy unless do_sample is true.

The parameters mean what they mean in LightLLM where it differs from vLLM: the penalties
count the output's tokens alone (the prompt's too with input_penalty), top-p counts the
whole distribution's mass before top-k cuts it, exponential_decay_length_penalty raises
the eos logits, stop sequences are matched on the output's token ids (a string as the
tokenizer encodes it) from its first token and the one that ended an output stays in its
text, and an eos token has no text unless print_eos_token. Their ranges and defaults are
LightLLM's too (its SamplingParams.verify()).

As LightLLM's detokenizer, the output never ends in an incomplete UTF-8 character (the
engine's detokenizer drops one, engine/detokenizer.py), and the stream's events leave
generated_text null, the last one too (the token texts join to the text).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from aiollm.api import sse, structured
from aiollm.api.body import decode_body
from aiollm.api.choices import gather_outputs, merge
from aiollm.api.http_errors import context_told, param_names
from aiollm.api.lightllm_errors import lightllm_errors, stream_error
from aiollm.api.generate_request import GenerateParameters, GenerateRequest
from aiollm.api.protocol import json_response
from aiollm.api.state import ApiState, state
from aiollm.engine.request_group import choice_group
from aiollm.engine.special_tokens import encode_kept
from aiollm.errors import InvalidRequest, check_unicode
from aiollm.sampling_params import SamplingParams, choice_seed
from aiollm.stop_conditions import (MAX_STOP_CHARS, MAX_STOP_SEQUENCE_TOKENS,
                                    MAX_STOP_SEQUENCES, MAX_STOP_STRING_CHARS)

if TYPE_CHECKING:
    from aiollm.engine import Delta
    from aiollm.engine.outputs import RequestOutput

_GREEDY_BELOW = 1e-5  # a temperature this small means greedy, as in LightLLM

# SamplingParams' and the engine's field names -> the LightLLM request's: errors name those
_PARAM_NAMES = {
    "prompt": "inputs",
    "max_tokens": "parameters.max_new_tokens",
    "min_tokens": "parameters.min_new_tokens",
    "stop_token_sequences": "parameters.stop_sequences",
    **{f: f"parameters.{f}" for f in (
        "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "seed", "ignore_eos", "logprobs", "allowed_token_ids",
        "exponential_decay_length_penalty")},
}
# max_new_tokens is at least 1 here: an input of the whole context leaves it no room
_NAMING = ("the inputs have", "the inputs",
           "shorten the inputs to leave room for max_new_tokens (at least 1)")


def _stop_sequences(st: ApiState, p: GenerateParameters) -> list[list[int]]:
    """LightLLM's stop_sequences as the token id sequences it matches: a string as the
    tokenizer encodes it without special tokens, a list of ids as it is. A sequence of no
    token ("", [], or a string the tokenizer drops) is no stop, as LightLLM drops it.
    InvalidRequest naming parameters.stop_sequences (the client's index in its message)
    past MAX_STOP_SEQUENCES of them or strings past MAX_STOP_CHARS characters in all
    (checked before any is encoded), a string past MAX_STOP_STRING_CHARS characters or a
    lone surrogate (encoded on the event loop), or a sequence past MAX_STOP_SEQUENCE_TOKENS
    ids."""
    seqs = [p.stop_sequences] if isinstance(p.stop_sequences, str) else p.stop_sequences or []
    if len(seqs) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop_sequences, got {len(seqs)}",
                             param="parameters.stop_sequences")
    # encoded on the event loop: all of them bounded as the OpenAI routes' stop strings are
    chars = sum(len(s) for s in seqs if isinstance(s, str))
    if chars > MAX_STOP_CHARS:
        raise InvalidRequest(f"the stop_sequences' strings have {chars} characters in all, more "
                             f"than the {MAX_STOP_CHARS} allowed: send fewer or shorter ones",
                             param="parameters.stop_sequences")
    out = []
    for i, s in enumerate(seqs):
        what = "has"
        if isinstance(s, str):
            if len(s) > MAX_STOP_STRING_CHARS:
                raise InvalidRequest(f"stop_sequences[{i}] has {len(s)} characters, more than "
                                     f"the {MAX_STOP_STRING_CHARS} allowed",
                                     param="parameters.stop_sequences")
            check_unicode(s, f"parameters.stop_sequences[{i}]")
            s, what = encode_kept(st.engine.tokenizer, s, add_special_tokens=False), "encodes to"
        if len(s) > MAX_STOP_SEQUENCE_TOKENS:
            raise InvalidRequest(f"stop_sequences[{i}] {what} {len(s)} token ids, more than the "
                                 f"{MAX_STOP_SEQUENCE_TOKENS} a stop sequence may have",
                                 param="parameters.stop_sequences")
        if s:
            out.append(list(s))
    return out


def _sampling_params(p: GenerateParameters, choice: int, stop: list[list[int]],
                     constraint=None) -> SamplingParams:
    # As LightLLM: without do_sample, temperature, top_p and top_k are not read (any value
    # is taken); with it, a temperature in [0, 1e-5) is greedy and top_k is not read. A
    # negative temperature stays an error: SamplingParams gets it as sent and refuses it
    greedy = not p.do_sample or 0 <= p.temperature < _GREEDY_BELOW
    top_p = p.top_p if p.do_sample else 1.0
    top_k = -1 if greedy else p.top_k
    if top_k < 1 and top_k != -1:
        # LightLLM refuses 0, where SamplingParams takes it as off (vLLM's) and would say so
        # of any other value it refuses
        raise InvalidRequest(f"top_k must be -1 (off) or an integer >= 1, got {top_k}",
                             param="parameters.top_k")
    return SamplingParams(
        max_tokens=p.max_new_tokens, min_tokens=_min_tokens(p),
        temperature=0.0 if greedy else p.temperature, top_p=top_p, top_k=top_k,
        top_p_joint=True,  # LightLLM's top-p counts the whole distribution's mass
        raise_low_temperature=False,  # LightLLM samples at 0.005 as sent; vLLM raises it
        exponential_decay_length_penalty=p.exponential_decay_length_penalty,
        min_p=p.min_p, repetition_penalty=p.repetition_penalty,
        presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
        # LightLLM's penalties count the output alone, or with input_penalty the prompt too
        penalty_scope="prompt_and_output" if p.input_penalty else "output",
        # LightLLM matches stop sequences on the output's token ids, from its first token,
        # and detokenizes every token made: the text keeps the stop sequence (and an eos's
        # text, which _token_texts blanks)
        seed=choice_seed(p.seed, choice), stop_token_sequences=stop,
        ignore_eos=p.ignore_eos, skip_special_tokens=p.skip_special_tokens,
        logprobs=0,  # LightLLM reports each token's logprob
        include_stop_str_in_output=True,
        constraint=constraint,
    )


def _min_tokens(p: GenerateParameters) -> int:
    """SamplingParams' min_tokens for LightLLM's min_new_tokens. LightLLM masks eos while
    fewer than min_new_tokens - 1 tokens are out, so the eos that ends an output may be its
    min_new_tokens-th token (counted): its default, 1, sets no minimum. min_tokens counts
    the tokens before the eos: one less. (Stop sequences are matched from the first token
    whatever min_new_tokens, as LightLLM matches them: stop_token_sequences, which
    min_tokens does not hold back.) Below 1 it is refused, as LightLLM refuses it."""
    k = p.min_new_tokens
    if k < 1:
        raise InvalidRequest(f"min_new_tokens must be an integer >= 1 (1: no minimum), got "
                             f"{k}", param="parameters.min_new_tokens")
    if k > p.max_new_tokens:  # LightLLM's rule, told here: SamplingParams sees k - 1
        raise InvalidRequest(f"min_new_tokens ({k}) must not exceed max_new_tokens "
                             f"({p.max_new_tokens})", param="parameters.min_new_tokens")
    return k - 1


@contextmanager
def _min_new_tokens_quoted(p: GenerateParameters) -> Iterator[None]:
    """An error quoting min_tokens' value (a grammar or allowed_token_ids that only eos
    ends, under min_tokens) quotes min_new_tokens as the client sent it; param_names
    (outside) renames the field in the rest of the message."""
    try:
        yield
    except InvalidRequest as e:
        if e.param != "min_tokens":
            raise
        message = str(e).replace(f"min_tokens ({_min_tokens(p)})",
                                 f"min_new_tokens ({p.min_new_tokens})")
        raise InvalidRequest(message, param=e.param, code=e.code) from None


async def _prompt_ids(st: ApiState, req: GenerateRequest) -> list[int]:
    """The inputs' token ids: text as the tokenizer encodes it, and generated from whatever
    that gives, as LightLLM does ("" is [BOS] where the tokenizer adds one). Raises
    InvalidRequest naming inputs where they are no token at all (an empty list, or text
    that encodes to none), as LightLLM refuses an empty list of prompt ids."""
    if isinstance(req.inputs, list):  # ids: the engine checks them
        if not req.inputs:
            raise InvalidRequest("inputs must not be empty: give at least one token id",
                                 param="inputs")
        return await st.tokenize(req.inputs)
    special = req.parameters.add_special_tokens
    ids = await st.encode(req.inputs, add_special_tokens=special, refuse_long=True)
    if not ids:
        why = "add_special_tokens is false" if not special else "the tokenizer adds no BOS"
        raise InvalidRequest(f"inputs must not be empty: the text encodes to no token ({why})",
                             param="inputs")
    return ids


def _check_choices(st: ApiState, p: GenerateParameters) -> int:
    """How many sequences `p` asks for (choices()); ApiError naming the field past what the
    server holds at once."""
    n = p.choices()
    st.check_choices(n, "parameters.n" if p.n is not None else "parameters.best_of")
    return n


def _checked_params(st: ApiState, req: GenerateRequest, n: int) -> list[SamplingParams]:
    """The SamplingParams of `req`'s `n` choices, its parameters checked (InvalidRequest
    naming the engine's field) but its grammar not compiled; its stop sequences encoded."""
    p = req.parameters
    req.check_unserved()
    p.with_defaults(st.engine.sampling_defaults)
    p.check_max_tokens()
    fields = {"guided_json": p.guided_json, "guided_grammar": p.guided_grammar,
              "regular_constraint": p.regular_constraint}
    constraint = structured.constraint(structured.guided(fields, "parameters."),
                                       allowed_token_ids=p.allowed_token_ids,
                                       allowed_param="parameters.allowed_token_ids")
    stop = _stop_sequences(st, p)
    return [_sampling_params(p, j, stop, constraint) for j in range(n)]


def check_parameters(st: ApiState, req: GenerateRequest) -> None:
    """Refuse `req`'s parameters where /generate refuses them, without generating (for
    LightLLM's /tokens, which checks the parameters of the request it counts as /generate
    checks them): InvalidRequest (ApiError past the server's choices) naming the field in
    the request's words (parameters.temperature). Not checked here, as the engine checks
    them when /generate submits the request: the grammar (not compiled), the inputs' length
    against the context, and token ids against the vocabulary (stop_sequences' id lists,
    allowed_token_ids): /tokens counts such a request, /generate refuses it."""
    with param_names(_PARAM_NAMES), _min_new_tokens_quoted(req.parameters):
        _checked_params(st, req, _check_choices(st, req.parameters))


async def _prepare(st: ApiState, req: GenerateRequest
                   ) -> tuple[list[int], list[SamplingParams]]:
    n = _check_choices(st, req.parameters)
    ids = await _prompt_ids(st, req)
    params = _checked_params(st, req, n)
    await st.engine.compile_grammar(params[0])
    return ids, params


async def generate(request: web.Request) -> web.Response:
    return await answer(request, await decode_body(request, GenerateRequest,
                                                   any_content_type=True))


async def answer(request: web.Request, req: GenerateRequest) -> web.Response:
    """/generate's answer to `req`, the body of `request` as decoded."""
    st = state(request)
    with (param_names(_PARAM_NAMES), _min_new_tokens_quoted(req.parameters),
          context_told(*_NAMING)):
        ids, params = await _prepare(st, req)
        group = choice_group(len(params))  # the choices measured as one request
        outs = await gather_outputs([st.engine.generate(ids, sp, group=group)
                                     for sp in params])

    def one_or_all(values: list) -> object:  # LightLLM unwraps single results, except the text
        return values[0] if len(values) == 1 else values

    eos = _unprinted_eos(st, req.parameters)
    texts = [_token_texts(o.token_ids, o.token_texts, eos) for o in outs]
    body = {
        # the engine's text where no eos text was left out (the token texts join to it)
        "generated_text": [o.text if t is o.token_texts else "".join(t)
                           for o, t in zip(outs, texts)],
        "count_output_tokens": one_or_all([o.completion_tokens for o in outs]),
        "finish_reason": one_or_all([o.finish_reason for o in outs]),
        "prompt_tokens": len(ids),
        "prompt_cache_len": outs[0].cached_tokens,  # prompt tokens reused from the cache
    }
    if req.parameters.return_details:
        special = set(st.engine.tokenizer.all_special_ids)
        body["tokens"] = one_or_all([_details(o, t, special, len(ids))
                                     for o, t in zip(outs, texts)])
    return json_response(body)


def _unprinted_eos(st: ApiState, p: GenerateParameters) -> frozenset[int]:
    """The token ids whose text LightLLM's detokenizer leaves out: the model's eos ids,
    unless print_eos_token (none then)."""
    return frozenset() if p.print_eos_token else frozenset(st.engine.eos_ids.tolist())


def _token_texts(ids: list[int], texts: list[str], eos: frozenset[int]) -> list[str]:
    """Each token's text as LightLLM gives it: "" for an id of `eos` (_unprinted_eos),
    wherever it is (ignore_eos lets eos come mid-output), else the engine's text."""
    if not eos.intersection(ids):
        return texts
    return ["" if t in eos else text for t, text in zip(ids, texts)]


def _details(out: RequestOutput, texts: list[str], special: set[int],
             prompt_tokens: int) -> list[dict]:
    """LightLLM's return_details entries of one output, a dict per token: its id, text
    (its share of the output's text: the texts join to it), logprob, whether it is
    special, the output's count of tokens up to it, the prompt's length, and cumlogprob:
    the mean logprob of the output's tokens up to it (as LightLLM reports it: the sum
    divided by the count)."""
    entries = []
    total = 0.0
    for i, t in enumerate(out.token_ids):
        logprob = out.logprobs[i].logprob if out.logprobs else None
        total += logprob or 0.0
        entries.append({
            "id": t, "text": texts[i], "special": t in special, "logprob": logprob,
            "cumlogprob": total / (i + 1) if out.logprobs else None,
            "count_output_tokens": i + 1, "prompt_tokens": prompt_tokens,
        })
    return entries


async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await stream(request, await decode_body(request, GenerateRequest,
                                                   any_content_type=True))


async def stream(request: web.Request, req: GenerateRequest) -> web.StreamResponse:
    """/generate_stream's answer to `req`, the body of `request` as decoded."""
    st = state(request)
    # before _prepare's bound of the server's (which a stream's 1 is under): "send at most
    # 16" was told to a request that any n but 1 fails
    n, p = req.parameters.choices(), req.parameters
    if n != 1:
        field = "n" if p.n is not None else "best_of"
        raise InvalidRequest(f"the stream endpoint generates one sequence: {field} must be 1 "
                             f"(or left out), got {n}; /generate returns several",
                             param=f"parameters.{field}")
    # inputs past the context may be refused here, before they are encoded: in their words
    with param_names(_PARAM_NAMES), context_told(*_NAMING):
        ids, params = await _prepare(st, req)
    special = set(st.engine.tokenizer.all_special_ids)
    eos = _unprinted_eos(st, req.parameters)

    def render(item: tuple[int, Delta]) -> bytes:
        _, d = item
        token_texts = _token_texts(d.token_ids, d.token_texts, eos)
        # One event per token. The one delta that may bring no token (the end of a request
        # aborted after its last token went out, with what the end released) is an
        # abort's, which merge raises as the stream's error before it reaches here; were
        # one to come, it would make no event (never one of id null).
        ended = d.finish_reason is not None
        n = len(d.token_ids)
        return b"".join(sse.event({
            "token": {
                "id": t,
                "text": token_texts[i],  # each token's share of the text (they join to it)
                "logprob": d.logprobs[i].logprob if d.logprobs else None,
                "special": t in special,
                "count_output_tokens": d.completion_tokens - (n - 1 - i),
                "prompt_tokens": d.prompt_tokens,
                "prompt_cache_len": d.cached_tokens,
            },
            "generated_text": None,  # LightLLM's, the last event's too: the texts join to it
            "finished": ended and i == n - 1,
            "finish_reason": d.finish_reason if ended and i == n - 1 else None,
            "details": None,
        }, prefix=b"data:") for i, t in enumerate(d.token_ids))

    async def events() -> AsyncIterator[tuple[int, Delta]]:
        # errors are named as they are raised: one found mid-stream (min_tokens past a
        # grammar's end) never leaves sse.send, which makes it the stream's last event
        async with aclosing(merge([partial(st.engine.stream, ids, params[0])])) as deltas:
            with (param_names(_PARAM_NAMES), _min_new_tokens_quoted(req.parameters),
                  context_told(*_NAMING)):
                async for item in deltas:
                    yield item

    return await sse.send(request, events(), render, lambda: b"", prefix=b"data:",
                          on_error=stream_error)


ROUTES = [
    web.post("/generate", lightllm_errors(generate)),
    web.post("/generate_stream", lightllm_errors(generate_stream)),
]
