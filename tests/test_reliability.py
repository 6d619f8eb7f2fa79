"""What the server promises when things go wrong, against the real app (tests/live_server.py):
every kind of bad input gets its status and an OpenAI-style error naming the field; a full
queue gets 503 with Retry-After; clients that leave free what they held; a request that fails
inside the engine fails alone; shutdown finishes or aborts what is in flight.

Faults inside the engine are injected at the device and tokenizer boundaries only: the real
model's forward is wrapped (NaN logits, an out-of-memory error, an exception), or the real
tokenizer is wrapped (an exception while encoding or decoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import logging
import re
import time
import zlib
from contextlib import contextmanager

import aiohttp
import pytest
import torch
from conftest import out_of_memory_once, tiny_llama
from live_server import (MAX_MODEL_LEN, LiveServer, at_once, http, is_idle, refused_status,
                         sse_events)

QUEUE_TIMEOUT = 2.0
KEY = "secret-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tight() -> LiveServer:
    """A server with tiny limits: one running request, two waiting, a short queue timeout,
    prefill in chunks of 64 tokens (a long prompt takes several steps), an API key."""
    srv = LiveServer(max_running_requests=1, max_waiting_requests=2, queue_timeout=QUEUE_TIMEOUT,
                     max_prefill_tokens=64, api_key=KEY, shutdown_timeout=4.0).start()
    yield srv
    srv.close()


def assert_error(status: int, raw: bytes, want_status: int, param: str | None = None,
                 text: str | None = None) -> dict:
    err = json.loads(raw)["error"]
    assert status == want_status, err
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["param"] == param, err
    if text is not None:
        assert text in err["message"], err
    return err


# -- bad input, exhaustively -----------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
MSGS = [{"role": "user", "content": "hi"}]
LONG_TEXT = "hello " * 600  # more tokens than MAX_MODEL_LEN
LONG_IDS = list(range(100, 100 + MAX_MODEL_LEN + 10))
STOPS = ["x" * 1024] * 16 + ["y"]  # one character more than MAX_STOP_CHARS in all


def raw(data: bytes, content_type: str = "application/json") -> dict:
    return {"data": data, "headers": {"Content-Type": content_type}}


def coded(data: bytes, coding: str) -> dict:
    return {"data": data, "headers": {"Content-Type": "application/json",
                                      "Content-Encoding": coding}}


C, CH, G, GS = "/v1/completions", "/v1/chat/completions", "/generate", "/generate_stream"


WHOLE_VOCABULARY = ("{} -1 asks for every token of the vocabulary, more than the 20 this "
                    "server returns (vLLM's default max_logprobs, which aiollm does not raise)")


def bad(case: str, path: str, body: dict, status: int, param: str | None, text: str | None = None,
        method: str = "POST"):
    """One row of the table: `body` is a JSON body, or {"data", "headers"} from raw()."""
    kw = body if "data" in body else {"json": body}
    if status == 400:  # LightLLM's routes say 417 (tests/test_lightllm_wire.py)
        status = refused_status(path)
    return pytest.param(method, path, kw, status, param, text, id=case)


def prompt(**fields) -> dict:
    return {"prompt": "x", "max_tokens": 1, **fields}


def chat(**fields) -> dict:
    return {"messages": MSGS, "max_tokens": 1, **fields}


def lightllm(**parameters) -> dict:
    return {"inputs": "x", "parameters": {"max_new_tokens": 1, **parameters}}


BAD_INPUT = [
    # the body itself
    bad("invalid-json", C, raw(b'{"prompt": "x",'), 400, None, "not valid JSON"),
    bad("json-nan-literal", C, raw(b'{"prompt": "x", "temperature": NaN}'), 400, None, "JSON"),
    # a body cut short (or with bytes after it) is no JSON, whatever type error msgspec met
    # first: "[1,2" was "expected an object, got an array", a wrong type before the missing
    # brace named that field
    bad("truncated-array", C, raw(b"[1,2"), 400, None, "not valid JSON: it ends before"),
    bad("truncated-object", CH, raw(b'{"model": "x", "messages": []'), 400, None,
        "not valid JSON: it ends before"),
    bad("truncated-after-a-wrong-type", C, raw(b'{"model": 5, "prompt": "hi"'), 400, None,
        "not valid JSON: it ends before"),
    bad("truncated-lightllm", G, raw(b'{"inputs": 5, "parameters": {'), 400, None,
        "not valid JSON"),
    bad("bytes-after-a-wrong-type", C, raw(b'{"prompt": "x", "n": "a"}}'), 400, None,
        "not valid JSON: trailing characters (byte 26)"),
    bad("bad-literal-after-a-wrong-type", C, raw(b'{"n": "a", "prompt": tru}'), 400, None,
        "not valid JSON: invalid character"),
    # JSON may escape a lone surrogate (a string cut inside an emoji by a UTF-16 client):
    # the field is named (it was "not valid JSON ... (byte 17)", param null)
    bad("lone-surrogate", C, raw(rb'{"prompt": "\ud800"}'), 400, "prompt", "U+D800"),
    bad("lone-surrogate-chat", CH, raw(rb'{"messages": [{"role": "user", "content": '
                                       rb'"hi \ud83d"}], "max_tokens": 1}'), 400,
        "messages[0].content", "lone surrogate U+D83D at character 3"),
    bad("lone-surrogate-lightllm", G, raw(rb'{"inputs": "x", "parameters": '
                                          rb'{"stop_sequences": ["a", "\udc00b"]}}'), 400,
        "parameters.stop_sequences[1]", "U+DC00"),
    bad("lone-surrogate-key", C, raw(rb'{"prompt": "x", "logit_bias": {"\udfff": 1}}'), 400,
        "logit_bias", "a key of logit_bias is not valid Unicode"),
    bad("lone-surrogate-top-level-key", C, raw(rb'{"prompt": "x", "\ud800": 1}'), 400, None,
        "a key of the request body is not valid Unicode"),
    # a body that is no object is refused as such: its surrogate was named with param
    # "the request body", as if that were a field
    bad("lone-surrogate-string-body", CH, raw(rb'"\ud800"'), 400, None,
        "request body: expected an object, got a string"),
    bad("lone-surrogate-array-body", G, raw(rb'["\ud800"]'), 400, None,
        "request body: expected an object, got an array"),
    # a body the client compressed wrongly is its fault: it was a 500 (RequestPayloadError)
    bad("bad-gzip-body", C, {"data": b'{"prompt": "x"}', "headers": {
        "Content-Type": "application/json", "Content-Encoding": "gzip"}}, 400, None,
        "Content-Encoding: gzip"),
    bad("gzip-body-cut-short", C, {"data": gzip.compress(b'{"prompt": "x"}')[:-4], "headers": {
        "Content-Type": "application/json", "Content-Encoding": "gzip"}}, 400, None,
        "cut short"),
    bad("bytes-after-the-gzip-body", C, {"data": gzip.compress(b'{"prompt": "x"}') + b"{}",
                                         "headers": {"Content-Type": "application/json",
                                                     "Content-Encoding": "gzip"}}, 400, None,
        "2 bytes after its gzip data"),
    # a content coding the server does not decode: 415 (RFC 9110 15.5.16) naming the header;
    # br and zstd were aiohttp's plain-text 400 (it decodes them only with Brotli or zstd
    # installed), others were taken as no coding at all
    bad("br-body", C, coded(b'{"prompt": "x"}', "br"), 415, None, "Content-Encoding 'br'"),
    bad("zstd-body", CH, coded(b'{"messages": []}', "zstd"), 415, None,
        "Content-Encoding 'zstd'"),
    bad("compress-body", G, coded(b'{"inputs": "x"}', "compress"), 415, None,
        "Content-Encoding 'compress'"),
    bad("two-codings", GS, coded(gzip.compress(gzip.compress(b'{"inputs": "x"}')),
                                 "gzip, gzip"), 415, None, "Content-Encoding 'gzip, gzip'"),
    bad("not-utf8", C, raw(b'{"prompt": "\xff\xfe"}'), 400, None, "UTF-8"),
    bad("empty-body", C, raw(b""), 400, None, "empty"),
    # JSON's whitespace alone is no value either: it was "not valid JSON: it ends before its
    # JSON value does (cut short...)", as if a value had been cut
    bad("whitespace-body", C, raw(b" \r\n\t "), 400, None,
        "request body is empty; expected a JSON object"),
    bad("bom-and-whitespace-body", CH, raw(b"\xef\xbb\xbf\n"), 400, None,
        "request body is empty; expected a JSON object"),
    bad("not-an-object", C, raw(b"[1, 2]"), 400, None, "object"),
    bad("number-out-of-range", C, raw(b'{"prompt": "x", "temperature": 1e400}'), 400,
        "temperature"),
    # inside an object of free keys msgspec writes the key as [...]: the field is the object
    bad("number-out-of-range-in-object", C, raw(b'{"prompt": "x", "logit_bias": {"5": 1e400}}'),
        400, "logit_bias"),
    bad("number-out-of-range-in-kwargs", CH, raw(b'{"messages": [{"role": "user", "content": '
                                                 b'"hi"}], "chat_template_kwargs": {"a": '
                                                 b'[1e400]}}'), 400, "chat_template_kwargs"),
    bad("too-large", C, raw(b" " * (17 * 2**20)), 413, None, "too large"),
    bad("wrong-content-type", C, raw(b'{"prompt": "x"}', "text/plain"), 415, None,
        "Content-Type"),
    bad("form-content-type", CH, raw(b'{"messages": []}', "application/x-www-form-urlencoded"),
        415, None, "Content-Type must be application/json"),
    # LightLLM's routes read any body as JSON, as LightLLM does: a form's bytes are no JSON
    bad("form-body-lightllm", G, raw(b"inputs=x", "application/x-www-form-urlencoded"), 400,
        None, "not valid JSON"),
    # wrong types
    bad("type-temperature", C, prompt(temperature="hot"), 400, "temperature"),
    bad("type-max-tokens", C, prompt(max_tokens="5"), 400, "max_tokens"),
    bad("type-n", C, prompt(n=1.5), 400, "n"),
    bad("type-stream", C, prompt(stream="yes"), 400, "stream"),
    bad("type-prompt", C, prompt(prompt=5), 400, "prompt"),
    bad("type-prompt-mixed", C, prompt(prompt=[1, "a"]), 400, "prompt"),
    bad("type-stop", C, prompt(stop=3), 400, "stop"),
    bad("type-logprobs", C, prompt(logprobs=True), 400, "logprobs"),
    bad("type-stream-options", C, prompt(stream_options={"include_usage": 1}), 400,
        "stream_options.include_usage"),
    bad("type-messages", CH, chat(messages="hi"), 400, "messages"),
    bad("type-message", CH, chat(messages=[3]), 400, "messages[0]"),
    bad("type-content", CH, chat(messages=[{"role": "user", "content": 3}]), 400,
        "messages[0].content"),
    bad("type-chat-logprobs", CH, chat(logprobs=3), 400, "logprobs"),
    bad("type-inputs", G, {"inputs": {"a": 1}}, 400, "inputs"),
    bad("type-parameters", G, {"inputs": "x", "parameters": []}, 400, "parameters"),
    bad("type-top-p-lightllm", G, lightllm(top_p="a"), 400, "parameters.top_p"),
    bad("type-do-sample", GS, lightllm(do_sample="yes"), 400, "parameters.do_sample"),
    bad("type-tokens", "/detokenize", {"tokens": "abc"}, 400, "tokens"),
    # missing required fields
    bad("missing-prompt", C, {"max_tokens": 1}, 400, "prompt", "prompt"),
    bad("missing-messages", CH, {"max_tokens": 1}, 400, "messages", "messages"),
    bad("missing-role", CH, chat(messages=[{"content": "hi"}]), 400, "messages[0].role"),
    bad("missing-inputs", G, {"parameters": {}}, 400, "inputs", "inputs"),
    bad("missing-inputs-stream", GS, {"parameters": {}}, 400, "inputs"),
    bad("missing-tokens", "/detokenize", {}, 400, "tokens"),
    # empty prompt / messages
    bad("empty-prompt", C, prompt(prompt=""), 400, "prompt", "empty"),
    bad("empty-prompt-ids", C, prompt(prompt=[]), 400, "prompt", "empty"),
    bad("empty-prompt-in-batch", C, prompt(prompt=["x", ""]), 400, "prompt[1]", "empty"),
    bad("empty-ids-in-batch", C, prompt(prompt=[[1, 2], [], []]), 400, "prompt[1]", "empty"),
    bad("empty-messages", CH, chat(messages=[]), 400, "messages"),
    bad("empty-inputs", G, {"inputs": ""}, 400, "inputs", "empty"),
    bad("empty-input-ids", GS, {"inputs": []}, 400, "inputs", "empty"),
    # a prompt past the model length: the message names both numbers
    bad("long-prompt", C, prompt(prompt=LONG_TEXT), 400, "prompt", str(MAX_MODEL_LEN)),
    bad("long-prompt-ids", C, prompt(prompt=LONG_IDS), 400, "prompt",
        f"has {len(LONG_IDS)} tokens"),
    bad("long-messages", CH, chat(messages=[{"role": "user", "content": LONG_TEXT}]), 400,
        "messages", str(MAX_MODEL_LEN)),
    bad("long-inputs", G, {"inputs": LONG_TEXT}, 400, "inputs", str(MAX_MODEL_LEN)),
    bad("long-input-ids", GS, {"inputs": LONG_IDS}, 400, "inputs", str(MAX_MODEL_LEN)),
    # in a batch the error says which prompt (it said "the prompt has 601 tokens" of 100)
    bad("long-prompt-in-batch", C, prompt(prompt=["x", LONG_TEXT]), 400, "prompt[1]",
        "prompt[1]: the prompt has"),
    bad("long-prompt-in-batch-of-one", C, prompt(prompt=[LONG_TEXT]), 400, "prompt[0]"),
    bad("long-ids-in-batch-stream", C, prompt(prompt=[[1, 2], LONG_IDS], stream=True), 400,
        "prompt[1]", str(MAX_MODEL_LEN)),
    bad("bad-id-in-batch", C, prompt(prompt=[[1, 2], [3], [10**9]]), 400, "prompt[2]",
        "token ids"),
    bad("max-tokens-past-len-in-batch", C, prompt(prompt=["x", "hello " * 300],
                                                   max_tokens=300), 400, "max_tokens",
        "prompt[1]: this model's maximum context length is 512"),
    bad("max-tokens-past-len-in-batch-stream", C, prompt(prompt=["x", "hello " * 300],
                                                          max_tokens=300, n=2, stream=True),
        400, "max_tokens", "prompt[1]:"),
    bad("prompt-id-out-of-vocab", C, prompt(prompt=[10**9]), 400, "prompt", "token ids"),
    bad("prompt-id-negative", G, {"inputs": [-1]}, 400, "inputs", "token ids"),
    # max_tokens <= 0 or past the model length
    bad("max-tokens-0", C, prompt(max_tokens=0), 400, "max_tokens", ">= 1"),
    bad("max-tokens-negative", C, prompt(max_tokens=-1), 400, "max_tokens"),
    bad("max-tokens-past-len", C, prompt(max_tokens=100000), 400, "max_tokens",
        str(MAX_MODEL_LEN)),
    bad("max-tokens-huge-int", C, prompt(max_tokens=10**30), 400, "max_tokens"),
    bad("chat-max-tokens-0", CH, chat(max_tokens=0), 400, "max_tokens"),
    bad("max-completion-tokens-negative", CH, chat(max_completion_tokens=-3), 400,
        "max_completion_tokens"),
    bad("max-completion-tokens-past-len", CH, chat(max_completion_tokens=MAX_MODEL_LEN), 400,
        "max_completion_tokens", str(MAX_MODEL_LEN)),
    bad("max-new-tokens-0", G, lightllm(max_new_tokens=0), 400, "parameters.max_new_tokens"),
    bad("max-new-tokens-past-len", GS, lightllm(max_new_tokens=MAX_MODEL_LEN), 400,
        "parameters.max_new_tokens", str(MAX_MODEL_LEN)),
    bad("min-tokens-over-max", C, prompt(max_tokens=2, min_tokens=5), 400, "min_tokens"),
    # temperature < 0
    bad("temperature-negative", C, prompt(temperature=-1), 400, "temperature"),
    bad("chat-temperature-negative", CH, chat(temperature=-0.5), 400, "temperature"),
    bad("temperature-huge", C, prompt(temperature=1e300), 400, "temperature"),
    bad("lightllm-temperature-negative", G, lightllm(do_sample=True, temperature=-1), 400,
        "parameters.temperature"),
    # (greedy, do_sample false, reads no temperature, top_p or top_k, as LightLLM)
    bad("lightllm-temperature-huge", G, lightllm(do_sample=True, temperature=1e300), 400,
        "parameters.temperature"),
    # top_p outside (0, 1]
    bad("top-p-0", C, prompt(top_p=0), 400, "top_p", "(0, 1]"),
    bad("top-p-above-1", C, prompt(top_p=1.5), 400, "top_p"),
    bad("top-p-negative", CH, chat(top_p=-0.1), 400, "top_p"),
    bad("lightllm-top-p-0", G, lightllm(do_sample=True, top_p=0), 400, "parameters.top_p"),
    # top_k < -1 (0 is off on the OpenAI endpoints, as in vLLM; LightLLM refuses it)
    bad("top-k-below-minus-1", C, prompt(top_k=-2), 400, "top_k"),
    bad("lightllm-top-k-0", G, lightllm(do_sample=True, top_k=0), 400, "parameters.top_k"),
    bad("top-k-past-int32", C, prompt(top_k=2**40), 400, "top_k"),
    bad("lightllm-top-k", GS, lightllm(do_sample=True, top_k=-5), 400, "parameters.top_k"),
    # n < 1 or above the limit
    bad("n-0", C, prompt(n=0), 400, "n"),
    bad("n-above-limit", C, prompt(n=1025), 400, "n", "1024"),
    bad("chat-n-above-limit", CH, chat(n=1025), 400, "n"),
    bad("lightllm-n-0", G, lightllm(n=0), 400, "parameters.n"),
    bad("lightllm-best-of", G, lightllm(best_of=1025), 400, "parameters.best_of"),
    bad("stream-n-2", GS, lightllm(n=2), 400, "parameters.n"),
    # LightLLM's own fields that change the output, not served: refused
    # LightLLM serves n == best_of only (n defaults to best_of): not n outputs of best_of
    bad("lightllm-best-of-above-n", G, lightllm(n=1, best_of=2), 400, "parameters.best_of",
        "best_of"),
    bad("lightllm-best-of-below-n", G, lightllm(n=3, best_of=2), 400, "parameters.best_of"),
    # OpenAI fields that change the output and are not served: refused, never ignored
    bad("suffix", C, prompt(suffix="return x"), 400, "suffix", "suffix"),
    bad("best-of-above-n", C, prompt(best_of=3), 400, "best_of", "best_of"),
    bad("best-of-below-n", C, prompt(best_of=1, n=2), 400, "best_of"),
    # vLLM's sampling fields that change the prompt or the output, not served: refused
    # (the messages said "beam search is not served" and no more: they say what to send)
    bad("beam-search", C, prompt(use_beam_search=True), 400, "use_beam_search",
        "send false or leave it out"),
    bad("length-penalty", CH, chat(length_penalty=0.5), 400, "length_penalty",
        "send 1.0 or leave it out"),
    # vLLM's bad_words and truncate_prompt_tokens, served: their bad values are named
    bad("bad-words-blank", C, prompt(bad_words=["x", " "]), 400, "bad_words"),
    bad("bad-words-type", CH, chat(bad_words="x"), 400, "bad_words"),
    bad("truncate-prompt-tokens-0", CH, chat(truncate_prompt_tokens=0), 400,
        "truncate_prompt_tokens", "got 0"),
    bad("truncate-prompt-tokens-past-context", C, prompt(truncate_prompt_tokens=10**6), 400,
        "truncate_prompt_tokens", "maximum context length"),
    # vLLM's return_tokens_as_token_ids is served: a switch (null: the server's default)
    bad("tokens-as-ids-type", C, prompt(logprobs=1, return_tokens_as_token_ids="yes"), 400,
        "return_tokens_as_token_ids"),
    bad("whitespace-pattern", C, prompt(guided_json={"type": "object"},
                                        guided_whitespace_pattern=" *"), 400,
        "guided_whitespace_pattern", "xgrammar"),
    # the same option in structured_outputs was taken and ignored: refused the same way
    bad("structured-whitespace-pattern", CH, chat(structured_outputs={
        "json": {"type": "object"}, "whitespace_pattern": " *"}), 400,
        "structured_outputs.whitespace_pattern", "xgrammar"),
    # OpenAI refuses stream_options without stream (it only shapes a stream), as vLLM does
    bad("stream-options-no-stream", C, prompt(stream_options={"include_usage": True}), 400,
        "stream_options", "stream"),
    bad("chat-stream-options-stream-false", CH,
        chat(stream=False, stream_options={"include_usage": False}), 400, "stream_options",
        "stream"),
    bad("stream-options-stream-null", CH, chat(stream=None, stream_options={}), 400,
        "stream_options"),
    # vLLM's chat echo is served: a switch
    bad("chat-echo-type", CH, chat(echo="yes"), 400, "echo"),
    bad("chat-prompt-logprobs-past-max", CH, chat(prompt_logprobs=21), 400, "prompt_logprobs"),
    # OpenAI's audio output: the model writes text alone (was ignored: a 200 whose message
    # has no audio, where OpenAI answers audio or an error)
    bad("chat-audio-modality", CH, chat(modalities=["text", "audio"]), 400, "modalities",
        "audio"),
    bad("chat-modalities-not-list", CH, chat(modalities="text"), 400, "modalities"),
    bad("chat-audio-output", CH, chat(audio={"voice": "alloy", "format": "wav"}), 400,
        "audio"),
    # rendering options: served (test_api), but not in a combination that cannot render
    bad("chat-continue-and-open-a-turn", CH, chat(continue_final_message=True), 400,
        "continue_final_message", "add_generation_prompt false"),
    bad("chat-template-kwargs-reserved", CH, chat(chat_template_kwargs={"messages": []}), 400,
        "chat_template_kwargs.messages"),
    # apply_chat_template's own arguments are not template variables either
    bad("chat-template-kwargs-argument", CH,
        chat(chat_template_kwargs={"sanitize_control_tokens": True}), 400,
        "chat_template_kwargs.sanitize_control_tokens", "server sets it"),
    bad("chat-template-kwargs-self", CH, chat(chat_template_kwargs={"self": 1}), 400,
        "chat_template_kwargs.self", "server sets it"),
    bad("chat-template-kwargs-special-token", CH,
        chat(chat_template_kwargs={"bos_token": "x"}), 400, "chat_template_kwargs.bos_token"),
    bad("chat-template-kwargs-nested", CH, chat(chat_template_kwargs={"a": {"b": 1}}), 400,
        "chat_template_kwargs.a"),
    bad("chat-template-kwargs-control-text", CH,
        chat(chat_template_kwargs={"a": "<|im_start|>system"}), 400, "chat_template_kwargs.a",
        "control-token"),
    bad("chat-template-kwargs-not-object", CH, chat(chat_template_kwargs=[1]), 400,
        "chat_template_kwargs"),
    # a request's own template, as vLLM takes it: only from a server that trusts it (this one
    # is create_app's: the message names its argument, `aiollm serve` its flag)
    bad("chat-template", CH, chat(chat_template="{{ messages[0].content }}"), 400,
        "chat_template", "trust_request_chat_template=True"),
    bad("chat-template-kwarg", CH,
        chat(chat_template_kwargs={"chat_template": "{{ messages[0].content }}"}), 400,
        "chat_template_kwargs.chat_template", "trust_request_chat_template=True"),
    bad("tokenize-chat-template", "/tokenize",
        {"messages": MSGS, "chat_template": "{{ messages[0].content }}"}, 400,
        "chat_template", "trust_request_chat_template=True"),
    # stop strings of too many characters in all, too many stop ids
    bad("stop-too-many-chars", C, prompt(stop=STOPS), 400, "stop", "16385 characters in all"),
    bad("chat-stop-too-many-chars", CH, chat(stop=STOPS), 400, "stop"),
    bad("stop-empty-string", C, prompt(stop=[""]), 400, "stop"),
    bad("stop-ids-too-many", C, prompt(stop_token_ids=list(range(1025))), 400,
        "stop_token_ids", "at most 1024 distinct stop token ids"),
    bad("stop-id-negative", C, prompt(stop_token_ids=[-1]), 400, "stop_token_ids"),
    bad("stop-id-past-int32", CH, chat(stop_token_ids=[2**40]), 400, "stop_token_ids[0]"),
    bad("stop-sequence-too-many-tokens", G, lightllm(stop_sequences=["z" * 1024]), 400,
        "parameters.stop_sequences", "encodes to 512 token ids"),
    bad("stop-sequences-too-many", G, lightllm(stop_sequences=["a"] * 20_000), 400,
        "parameters.stop_sequences", "at most 64 stop_sequences"),
    bad("stop-sequence-id-past-int32", G, lightllm(stop_sequences=[[2**40]]), 400,
        "parameters.stop_sequences[0][0]"),
    # logprobs above the limit
    bad("logprobs-above-limit", C, prompt(logprobs=21), 400, "logprobs", "20"),
    bad("logprobs-negative", C, prompt(logprobs=-2), 400, "logprobs"),
    # -1, vLLM's whole vocabulary, is past vLLM's default --max-logprobs 20 too (which
    # aiollm keeps): refused naming the field and the limit, in completions and chat alike
    # (chat said only "expected an integer >= 0")
    # (chat's renaming of logprobs to top_logprobs once named a flag --max-top_logprobs)
    bad("logprobs-whole-vocabulary", C, prompt(logprobs=-1), 400, "logprobs",
        WHOLE_VOCABULARY.format("logprobs")),
    bad("top-logprobs-whole-vocabulary", CH, chat(logprobs=True, top_logprobs=-1), 400,
        "top_logprobs", WHOLE_VOCABULARY.format("top_logprobs")),
    bad("chat-prompt-logprobs-whole-vocabulary", CH, chat(prompt_logprobs=-1), 400,
        "prompt_logprobs", WHOLE_VOCABULARY.format("prompt_logprobs")),
    bad("top-logprobs-negative", CH, chat(logprobs=True, top_logprobs=-2), 400,
        "top_logprobs"),
    bad("top-logprobs-above-limit", CH, chat(logprobs=True, top_logprobs=21), 400,
        "top_logprobs"),
    bad("top-logprobs-without-logprobs", CH, chat(top_logprobs=2), 400, "top_logprobs"),
    # other ranges
    bad("seed-below-int64", C, prompt(seed=-(2**63) - 1), 400, "seed"),
    bad("seed-past-int64", C, prompt(seed=2**64), 400, "seed"),
    bad("presence-penalty", C, prompt(presence_penalty=3), 400, "presence_penalty"),
    bad("frequency-penalty", CH, chat(frequency_penalty=-3), 400, "frequency_penalty"),
    bad("repetition-penalty", C, prompt(repetition_penalty=0), 400, "repetition_penalty"),
    # in float32 a penalty this small divides seen logits to inf: NaN logprobs, output that
    # ignores the sampling parameters
    bad("repetition-penalty-tiny", C, prompt(repetition_penalty=1e-300, logprobs=1), 400,
        "repetition_penalty"),
    bad("min-p", C, prompt(min_p=2), 400, "min_p"),
    bad("image-content", CH, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]), 400,
        "messages[0].content[0].type"),
    bad("text-part-without-text", CH, chat(messages=[{"role": "user", "content": [
        {"type": "text"}]}]), 400, "messages[0].content[0].text"),
    # the model is only matched against the served name
    bad("unknown-model", C, prompt(model="gpt-4"), 404, "model", "does not exist"),
    bad("model-path", CH, chat(model="/etc/passwd"), 404, "model"),
    # operations endpoints
    bad("tokenize-nothing", "/tokenize", {}, 400, "prompt"),
    bad("tokenize-both", "/tokenize", {"prompt": "x", "messages": MSGS}, 400, "prompt"),
    bad("detokenize-negative", "/detokenize", {"tokens": [-1]}, 400, "tokens"),
    bad("detokenize-out-of-vocab", "/detokenize", {"tokens": [10**9]}, 400, "tokens"),
    # wrong method, unknown route
    bad("get-completions", C, {}, 405, None, "allowed", method="GET"),
    # GET lists the stored chat completions (none: tests/test_chat_completion_store.py)
    bad("delete-chat", CH, {}, 405, None, method="DELETE"),
    bad("get-generate", G, {}, 405, None, method="GET"),
    bad("post-models", "/v1/models", {}, 405, None, method="POST"),
    bad("delete-health", "/health", {}, 405, None, method="DELETE"),
    bad("unknown-route", "/no/such/route", {}, 404, None, "no such route", method="GET"),
    bad("unknown-post-route", "/v1/embeddings", {"input": "x"}, 404, None),
    # routes are served with a trailing slash too, unknown paths still are not
    bad("unknown-route-slash", "/no/such/route/", {}, 404, None, "/no/such/route/",
        method="GET"),
    bad("unknown-post-route-slash", "/v1/embeddings/", {"input": "x"}, 404, None),
    bad("two-trailing-slashes", C + "//", prompt(), 404, None),
    bad("delete-chat-slash", CH + "/", {}, 405, None, "allowed", method="DELETE"),
    bad("unknown-model-slash", "/v1/models/gpt-4/", {}, 404, "model", method="GET"),
]


@pytest.mark.parametrize("method,path,kw,status,param,text", BAD_INPUT)
def test_bad_input(server, method, path, kw, status, param, text):
    got, headers, body = http(server, method, path, **kw)
    err = assert_error(got, body, status, param, text)
    assert err["type"] == {404: "not_found_error"}.get(status, "invalid_request_error")
    if status == 405:
        assert method not in headers["Allow"] and headers["Allow"]
    # a rejected request holds nothing: no table slot, no KV, no queue place
    server.wait_idle(timeout=5)


# a wrong type is reported in plain words, its field named first (it read as msgspec's own
# "Expected `int | null`, got `str` - at `$.max_tokens`")
WRONG_TYPES = [
    bad("max-tokens-string", C, prompt(max_tokens="5"), 400, "max_tokens",
        "max_tokens: expected an integer, got a string"),
    bad("n-decimal", C, prompt(n=1.5), 400, "n", "n: expected an integer, got a decimal number"),
    bad("n-0", C, prompt(n=0), 400, "n", "n: expected an integer >= 1"),
    bad("stop-number", C, prompt(stop=3), 400, "stop",
        "stop: expected a string or an array, got an integer"),
    bad("include-usage-number", C, prompt(stream_options={"include_usage": 1}), 400,
        "stream_options.include_usage",
        "stream_options.include_usage: expected a boolean, got an integer"),
    bad("body-array", C, raw(b"[]"), 400, None, "request body: expected an object, got an array"),
    # OpenAI's end-user identifier: a string; 5 was taken with 200, OpenAI answers 400
    bad("user-number", C, prompt(user=5), 400, "user", "user: expected a string, got an integer"),
    bad("chat-user-object", CH, chat(user={"id": "u1"}), 400, "user",
        "user: expected a string, got an object"),
    bad("second-content-number", CH, chat(messages=[*MSGS, {"role": "user", "content": 3}]),
        400, "messages[1].content",
        "messages[1].content: expected a string or an array, got an integer"),
    bad("no-messages", CH, chat(messages=[]), 400, "messages",
        "messages: expected an array with at least 1 item"),
    bad("role-missing", CH, chat(messages=[{"content": "hi"}]), 400, "messages[0].role",
        "messages[0].role is required"),
    bad("top-logprobs-past-limit", CH, chat(logprobs=True, top_logprobs=21), 400,
        "top_logprobs", "top_logprobs: expected an integer <= 20"),
    bad("lightllm-top-p-string", G, lightllm(top_p="a"), 400, "parameters.top_p",
        "parameters.top_p: expected a number, got a string"),
    bad("lightllm-parameters-array", G, {"inputs": "x", "parameters": []}, 400, "parameters",
        "parameters: expected an object, got an array"),
    bad("lightllm-input-id-string", G, {"inputs": [1, "a"]}, 400, "inputs[1]",
        "inputs[1]: expected an integer, got a string"),
    bad("lightllm-inputs-missing", G, {"parameters": {}}, 400, "inputs", "inputs is required"),
    # a template variable the server gives a meaning to has its type: "no" turned thinking on
    # (other variables pass through as they are); /tokenize renders through the same check
    bad("enable-thinking-string", CH, chat(chat_template_kwargs={"enable_thinking": "no"}),
        400, "chat_template_kwargs.enable_thinking",
        "chat_template_kwargs.enable_thinking: expected a boolean, got a string"),
    bad("tokenize-enable-thinking-integer", "/tokenize",
        {"messages": MSGS, "chat_template_kwargs": {"enable_thinking": 0}}, 400,
        "chat_template_kwargs.enable_thinking",
        "chat_template_kwargs.enable_thinking: expected a boolean, got an integer"),
]


@pytest.mark.parametrize("method,path,kw,status,param,text", WRONG_TYPES)
def test_wrong_types_are_named_in_plain_words(server, method, path, kw, status, param, text):
    got, _, body = http(server, method, path, **kw)
    err = assert_error(got, body, status, param)
    assert err["message"] == text, err


UNKNOWN_FIELDS = [  # what OpenAI and LightLLM clients send beside the fields we use
    (C, prompt(user="u1", logit_bias={"50": -100}, suffix="", best_of=1,
               use_beam_search=False, length_penalty=1.0, bad_words=[],
               truncate_prompt_tokens=None, return_tokens_as_token_ids=False,
               some_vendor_field={"x": [1, {"y": None}]})),
    (CH, chat(user="u1", tools=[], tool_choice="none", parallel_tool_calls=False,
              response_format={"type": "text"}, metadata={"k": "v"}, store=False,
              echo=False, add_generation_prompt=True, continue_final_message=False,
              modalities=["text"], audio=None,
              messages=[{"role": "user", "content": "hi", "refusal": None, "extra": 1}])),
    (G, {"inputs": "x", "parameters": {"max_new_tokens": 1, "future_option": True,
                                      "group_request_id": 7, "input_penalty": False,
                                      "exponential_decay_length_penalty": [1, 1.0],
                                      "print_eos_token": False},
         "multimodal_params": {"images": []}}),
]


@pytest.mark.parametrize("path,body", UNKNOWN_FIELDS, ids=["completions", "chat", "generate"])
def test_unknown_fields_are_ignored(server, path, body):
    status, _, raw_body = http(server, "POST", path, json=body)
    assert status == 200, raw_body
    assert "error" not in json.loads(raw_body)


NULL_FIELDS = [  # OpenAI's schema makes these nullable; clients that serialize every
    # field send null for "not set", which must mean the default
    (C, prompt(n=None, stream=None, echo=None, logprobs=None, ignore_eos=None, min_tokens=None,
               skip_special_tokens=None, stream_options=None)),
    (CH, chat(n=None, stream=False, logprobs=None, top_logprobs=None, ignore_eos=None,
              min_tokens=None, skip_special_tokens=None, parallel_tool_calls=None,
              stream_options=None)),
]


def test_stream_options_include_usage_null_means_not_set(server):
    """{"include_usage": null} is "not set" (vLLM takes it; it was a 400): no usage chunk."""
    status, _, raw_body = http(server, "POST", CH, json=chat(
        stream=True, stream_options={"include_usage": None}))
    assert status == 200, raw_body
    assert b'"usage"' not in raw_body.replace(b'"usage":null', b"") and b"[DONE]" in raw_body


@pytest.mark.parametrize("path,body", NULL_FIELDS, ids=["completions", "chat"])
def test_null_fields_mean_their_defaults(server, path, body):
    status, _, raw_body = http(server, "POST", path, json=body)
    assert status == 200, raw_body
    out = json.loads(raw_body)
    assert len(out["choices"]) == 1 and out["choices"][0]["logprobs"] is None, out


@pytest.mark.parametrize("path,body", [(C, prompt(model="")), (CH, chat(model="", stream=True)),
                                       ("/tokenize", {"model": "", "prompt": "x"})],
                         ids=["completions", "chat", "tokenize"])
def test_an_empty_model_name_is_the_served_model(server, path, body):
    """model "" is the served model, as null or no model is (and as vLLM takes it): clients
    with no model configured send "". It was a 404 model_not_found."""
    status, _, raw_body = http(server, "POST", path, json=body)
    assert status == 200, raw_body
    assert b'"error"' not in raw_body


EDGE_VALUES = [  # valid values at the ends of their ranges
    (C, prompt(seed=2**63 - 1, n=2, temperature=1.0)),
    (G, lightllm(seed=2**63 - 1, n=2, do_sample=True)),
    # int64's low end, as vLLM and OpenAI take seeds (-1 was a 400, which apps that send
    # it for "any seed" hit)
    (C, prompt(seed=-(2**63), n=2, temperature=1.0)),
    (CH, chat(seed=-1, n=2, temperature=1.0)),
    (C, prompt(temperature=1e-300, top_p=1e-45, min_p=1.0, top_k=2**31 - 1)),
    # the vocabulary's last id (past it is a 400: it would index the logits)
    (C, prompt(stop_token_ids=[49151], stop=["\u0000", "\U0001F4A9"], logprobs=20)),
    (C, prompt(prompt=LONG_IDS[:500], max_tokens=MAX_MODEL_LEN - 500, stop_token_ids=[],
               stop=[], n=1, temperature=0, echo=True)),  # exactly the whole context
    (C, prompt(prompt="a\u0000b", repetition_penalty=10, presence_penalty=-2,
               frequency_penalty=2, n=64, max_tokens=1)),
    (CH, chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
              logprobs=True, top_logprobs=20, max_completion_tokens=1)),
]


@pytest.mark.parametrize("path,body", EDGE_VALUES)
def test_edge_values_are_served(faulty, path, body):
    """Served whatever the model writes: on the tiny random model (faulty's, no fault
    injected), which takes the shared server's limits."""
    server = faulty
    status, _, raw_body = http(server, "POST", path, json=body)
    assert status == 200, raw_body
    server.wait_idle()


@pytest.mark.parametrize("path,body", [
    (C, prompt(prompt="Once upon a time", max_tokens=8, temperature=1.5, seed=11)),
    (CH, chat(max_tokens=8, temperature=1.5, seed=11, stream=True)),
])
def test_top_k_0_is_off_as_in_vllm(faulty, path, body):
    """top_k 0 on the OpenAI endpoints samples from every token, as -1 does: vLLM's default
    and its documented "0 (or -1) considers all tokens", which clients written against it
    send; it was a 400. Seeded at a high temperature, both give the same text, where a
    top_k of 1 gives another. On the tiny random model (faulty's, no fault injected): its
    near-even distribution is the one a top_k of 1 changes most surely."""
    server = faulty
    def text_of(top_k: int) -> str:
        status, _, raw_body = http(server, "POST", path, json={**body, "top_k": top_k})
        assert status == 200, raw_body
        if not body.get("stream"):
            return json.loads(raw_body)["choices"][0]["text"]
        return "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in sse_events(raw_body) if e != "[DONE]")

    off, zero, one = at_once(*(lambda k=k: text_of(k) for k in (-1, 0, 1)))  # one batch
    assert zero == off
    assert one != off  # the seed and temperature do sample past the top token
    server.wait_idle()


def test_a_byte_order_mark_before_the_json_is_skipped(server):
    """A body saved by Windows tools (PowerShell's Out-File, Notepad) starts with a UTF-8
    BOM; Python's json, which vLLM and LightLLM parse with, skips it: it was a 400 here."""
    for path, body in ((C, prompt()), (G, lightllm())):
        data = b"\xef\xbb\xbf" + json.dumps(body).encode()
        status, _, raw_body = http(server, "POST", path, **raw(data))
        assert status == 200, raw_body
    status, _, raw_body = http(server, "POST", C, **raw(b"\xef\xbb\xbf"))
    assert_error(status, raw_body, 400, None, "empty")


def compressed(body: dict, coding: str) -> bytes:
    data = json.dumps(body).encode()
    if coding in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if coding == "deflate":  # RFC 9110's deflate: zlib's format
        return zlib.compress(data)
    if coding == "raw-deflate":  # what some clients send as deflate: no zlib header
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    return data


@pytest.mark.parametrize("coding,header", [
    ("gzip", "gzip"), ("gzip", "GZip"), ("x-gzip", "x-gzip"), ("deflate", "deflate"),
    ("raw-deflate", "deflate"), ("identity", "identity"), ("identity", "")])
def test_compressed_bodies_are_decoded(server, coding, header):
    """A body in a content coding the server decodes is served as its JSON; x-gzip is
    gzip's old name, which RFC 9110 asks recipients to take as gzip (it was a 400)."""
    status, _, raw_body = http(server, "POST", C, data=compressed(prompt(), coding), headers={
        "Content-Type": "application/json", "Content-Encoding": header})
    assert status == 200, raw_body


def test_a_body_that_decodes_past_the_size_limit_is_413(server):
    data = gzip.compress(b" " * (17 * 2**20) + b"{}")
    status, _, raw_body = http(server, "POST", C, data=data, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert_error(status, raw_body, 413, None, "too large")


def test_a_content_coding_not_decoded_says_which_are(server):
    """A 415 for a content coding tells the client the codings it may use instead
    (Accept-Encoding, as RFC 9110 12.5.3 suggests), which serve the same request."""
    status, headers, raw_body = http(server, "POST", C, **coded(b'{"prompt": "x"}', "br"))
    assert_error(status, raw_body, 415, None, "send the body as it is, or with")
    assert headers["Accept-Encoding"] == "gzip, deflate"
    for coding in headers["Accept-Encoding"].split(", "):
        status, _, raw_body = http(server, "POST", C, **coded(compressed(prompt(), coding),
                                                              coding))
        assert status == 200, raw_body


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_logs_no_error(server, caplog, coding):
    """A body that is not the gzip its header says gets its 400 and the server logs no error:
    aiohttp decoded it, failed, and after the handler had answered read the rest of the body
    again to drain it, logging the client's fault at ERROR as "Unhandled exception" with a
    traceback of three exceptions (and closing the connection)."""
    with caplog.at_level(logging.INFO):
        status, _, raw_body = http(server, "POST", C, data=b'{"prompt": "x"}', headers={
            "Content-Type": "application/json", "Content-Encoding": coding})
        err = assert_error(status, raw_body, 400, None)
        assert f"content-encoding: {coding}" in err["message"].lower(), err
        # the drain ran right after the answer was sent: a request later it has logged
        assert http(server, "GET", "/health")[0] == 200
    assert [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING or r.exc_info] == []


def test_a_body_that_cannot_be_read_closes_its_connection(server):
    """A body that is not the gzip its header says gets its 400, and the client's next request
    on the same pooled connection is served: when aiohttp decoded the body, it dropped the
    connection after a 400 that said keep-alive, and the next POST failed ('Can not write
    request body'). The server decodes bodies itself now, so the connection stays usable;
    a body aiohttp still cannot read (a broken chunked encoding) gets Connection: close."""
    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            async with s.post(server.base + C, data=b'{"prompt": "x"}', headers={
                    "Content-Type": "application/json", "Content-Encoding": "gzip"}) as r:
                first = r.status, r.headers.get("Connection"), await r.read()
            async with s.post(server.base + C, json=prompt()) as r:  # a GET got through
                return first, r.status

    (status, connection, body), after = asyncio.run(go())
    assert_error(status, body, 400, None, "Content-Encoding: gzip")
    assert after == 200
    assert connection != "close"  # nothing was left unread: the connection is reused


def test_top_p_below_float32_is_not_a_server_error(server):
    status, _, raw_body = http(server, "POST", C, json=prompt(top_p=5e-324))
    assert status in (200, 400), raw_body


def test_request_head_limits(server):
    """Header lines past 8190 bytes, or more than 128 headers, are refused by the HTTP parser
    (400) before any handler runs; the server goes on serving."""
    status, _, _ = http(server, "GET", "/health", headers={"X-Big": "a" * 9000})
    assert status == 400
    status, _, _ = http(server, "GET", "/health",
                        headers={f"X-H{i}": "1" for i in range(200)})
    assert status == 400
    status, _, _ = http(server, "GET", "/health", headers={"X-Fine": "a" * 4000})
    assert status == 200


@pytest.mark.parametrize("method,path,body", [
    ("POST", CH, chat()), ("POST", C, prompt()), ("GET", "/v1/models", None),
    ("POST", G, lightllm()), ("POST", GS, lightllm()), ("GET", "/health", None),
    ("POST", "/tokenize", {"prompt": "x"})])
def test_a_trailing_slash_is_served_as_without(server, method, path, body):
    """POST /v1/chat/completions/ (a base URL joined with a slash too many) was a 404.
    vLLM and SGLang (FastAPI) answer it with a 307 to the path without the slash, which
    curl without -L, and clients that follow no redirect for a POST, stop at; here the
    route serves it at once, as it serves the path without the slash."""
    want, _, want_body = http(server, method, path, json=body)
    got, _, got_body = http(server, method, path + "/", json=body, allow_redirects=False)
    assert got == want == 200, got_body
    if method == "GET" or path == "/tokenize":
        assert got_body == want_body
    else:  # the same kind of answer: JSON, or a stream of SSE events
        assert got_body[:5] == want_body[:5], (got_body, want_body)


def test_model_path_is_never_opened(server):
    """Only the served name is accepted; the real file of the model, sent as `model`, is
    just another unknown name."""
    path = server.engine.model_path
    for body in (prompt(model=str(path)), chat(model=str(path))):
        got, _, raw_body = http(server, "POST", C if "prompt" in body else CH, json=body)
        assert_error(got, raw_body, 404, "model")
    got, _, raw_body = http(server, "GET", "/v1/models")
    name = json.loads(raw_body)["data"][0]["id"]
    assert name != str(path) and "/" not in name


def test_still_serving_after_bad_input(server):
    status, _, body = http(server, "POST", C, json=prompt(prompt="Hello", max_tokens=2))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
    assert http(server, "GET", "/health")[0] == 200
    server.wait_idle()


# -- auth ------------------------------------------------------------------------------------

async def raw_request(srv: LiveServer, head: bytes) -> int:
    """The status of one request written byte for byte (headers a client library would
    refuse to send)."""
    host, port = srv.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


def test_api_key(tight):
    assert http(tight, "GET", "/health")[0] == 200  # probes need no key
    assert http(tight, "GET", "/health/")[0] == 200
    for path in ("/v1/models/", "/v1/models", "/v1/models//"):  # the key is asked for first
        got, _, body = http(tight, "GET", path)
        assert_error(got, body, 401, None)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": KEY}):
        got, h, body = http(tight, "GET", "/v1/models", headers=headers)
        assert_error(got, body, 401, None)
        assert h["WWW-Authenticate"] == "Bearer"
    assert http(tight, "GET", "/v1/models", headers=AUTH)[0] == 200
    # emptying the prefix cache is an operation for the key holder too
    assert http(tight, "POST", "/flush_cache")[0] == 401
    assert http(tight, "POST", "/flush_cache", headers=AUTH)[0] == 200
    # bytes that are not UTF-8 in the header: refused like any wrong key, not a 500
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    assert asyncio.run(raw_request(tight, head)) == 401


# -- overload ---------------------------------------------------------------------------------

async def open_stream(session: aiohttp.ClientSession, srv: LiveServer, body: dict,
                      path: str = C) -> aiohttp.ClientResponse:
    resp = await session.post(srv.base + path, json={**body, "stream": True}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    return resp


async def read_events(resp: aiohttp.ClientResponse, n: int) -> None:
    """Read n SSE events of a stream, each a token."""
    for _ in range(n):
        line = await resp.content.readline()
        if line == b"\n":
            line = await resp.content.readline()
        # an error event has an "error" key (a token's text may contain the word)
        assert line.startswith(b"data:") and "error" not in json.loads(line[5:]), line


async def wait_for(srv: LiveServer, ok, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = srv.stats()
        if ok(s):
            return s
        assert time.monotonic() < deadline, f"timed out; stats {s}"
        await asyncio.sleep(0.02)


LONG_RUN = {"prompt": "Count:", "max_tokens": 400, "ignore_eos": True}


def test_overload_and_queue_timeout(tight):
    """One request runs, two wait; the next one is refused at once with 503 and Retry-After.
    The two waiting ones give up after the queue timeout, also with 503 (the stream too: it
    has sent nothing yet, so it still gets a status)."""
    async def scenario():
        async with aiohttp.ClientSession() as s:
            running = await open_stream(s, tight, LONG_RUN)

            async def post(body: dict) -> tuple[int, dict, bytes, float]:
                t0 = time.monotonic()
                async with s.post(tight.base + C, json=body, headers=AUTH) as r:
                    return r.status, dict(r.headers), await r.read(), time.monotonic() - t0

            queued = [asyncio.ensure_future(post(prompt(prompt="Hi", max_tokens=4))),
                      asyncio.ensure_future(post(prompt(prompt="Yo", max_tokens=4, stream=True)))]
            await wait_for(tight, lambda st: st["waiting"] == 2)
            refused = await post(prompt(prompt="Hey"))
            results = await asyncio.gather(*queued)
            running.close()
            return refused, results

    refused, results = asyncio.run(scenario())
    status, headers, body, elapsed = refused
    assert_error(status, body, 503, None, "waiting")
    # what happened, as SGLang's 503 says it; not the server's flag, which its client can
    # neither see nor set (the server's log names it)
    message = json.loads(body)["error"]["message"]
    assert "the request queue is full" in message and "--" not in message, message
    assert headers["Retry-After"] == "1" and elapsed < QUEUE_TIMEOUT
    assert json.loads(body)["error"]["type"] == "overloaded_error"
    for status, headers, body, elapsed in results:
        assert_error(status, body, 503, None, "queue")
        assert headers["Retry-After"] == "1" and elapsed >= QUEUE_TIMEOUT * 0.9
    tight.wait_idle()


@pytest.mark.parametrize("path,body,param", [
    (C, prompt(n=4), "n"),
    (C, prompt(prompt=["a", "b", "c", "d"], stream=True), "prompt"),
    (C, prompt(prompt=["a", "b"], n=2), "n"),
    (CH, chat(n=4, stream=True), "n"),
    (G, lightllm(n=4, best_of=4), "parameters.n"),
    (G, lightllm(best_of=4), "parameters.best_of"),
])
def test_more_choices_than_the_queue_holds_are_400(tight, path, body, param):
    """A request's choices all enter the queue at once: with more of them than an idle
    server's running batch and --max-waiting-requests hold it was a 503 on an idle server
    too (retried in vain, the openai client twice). Now a 400 naming the field (and the
    limits in numbers, not the server's flags, which it named), while as
    many as they hold are served: 3 here, one running and two waiting (it was 2, the
    waiting queue alone, as if the idle batch had no room)."""
    status, _, raw_body = http(tight, "POST", path, json=body, headers=AUTH)
    assert_error(status, raw_body, refused_status(path), param,
                 "holds at once (1 running and 2 waiting); send at most 3")
    assert b"--max-" not in raw_body, raw_body  # (the server's flags, which it cannot see)
    status, _, raw_body = http(tight, "POST", path, headers=AUTH, json={
        **body, **({"parameters": {**body["parameters"], "n": 3, "best_of": 3}} if path == G
                   else {"n": 3, "prompt": "a"} if path == C else {"n": 3})})
    assert status == 200, raw_body
    tight.wait_idle()


@pytest.mark.parametrize("field", ["n", "best_of"])
def test_a_stream_of_more_choices_than_the_queue_holds_is_told_one(tight, field):
    """/generate_stream generates one sequence: n (or best_of) past what the queue holds
    was told "send at most 2", which a client obeyed in vain (2 is refused too). The
    error names the field sent and the bound that applies to it there: 1."""
    for n in (3, 2):
        status, _, raw_body = http(tight, "POST", GS, headers=AUTH,
                                   json={"inputs": "hi", "parameters": {field: n}})
        err = assert_error(status, raw_body, 417, f"parameters.{field}", f"{field} must be 1")
        assert "at most" not in err["message"], err
    status, _, raw_body = http(tight, "POST", GS, headers=AUTH, json={
        "inputs": "hi", "parameters": {field: 1, "max_new_tokens": 2}})
    assert status == 200, raw_body
    tight.wait_idle()


def test_more_choices_than_the_request_table_holds_are_400(tiny):
    """As the queue, the request table (a slot per choice): n past --table-capacity was a 503
    however idle the server. (On conftest's tiny random Llama: a limit's check, which no
    model's words change.)"""
    srv = LiveServer(model=tiny, load_format="dummy", max_model_len=256, table_capacity=2).start()
    try:
        status, _, raw_body = http(srv, "POST", CH, json=chat(n=3))
        assert_error(status, raw_body, 400, "n", "(2 requests in its request table)")
        status, _, raw_body = http(srv, "POST", CH, json=chat(n=2))
        assert status == 200, raw_body
        srv.wait_idle()
    finally:
        srv.close()


# -- clients that leave -----------------------------------------------------------------------

def test_disconnect_while_queued(tight):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            running = await open_stream(s, tight, LONG_RUN)
            queued = asyncio.ensure_future(
                s.post(tight.base + C, json=prompt(max_tokens=4), headers=AUTH))
            await wait_for(tight, lambda st: st["waiting"] == 1)
            queued.cancel()  # the client gives up while its request waits
            st = await wait_for(tight, lambda st: st["waiting"] == 0, timeout=5)
            assert st["running"] == 1 and st["table_used"] == 1  # the running one goes on
            await read_events(running, 1)
            running.close()

    asyncio.run(scenario())
    tight.wait_idle(timeout=5)


class StepCounter:
    """Counts the model's steps (forward calls) while installed by wrapped_forward."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, forward):
        def wrapper(batch):
            self.steps += 1
            return forward(batch)
        return wrapper


def steps_until_released(srv: LiveServer, leave) -> int:
    """Run `leave(session)` (a client that starts a request and goes away), then count the
    model steps until the server holds nothing again."""
    counter = StepCounter()

    async def scenario():
        async with aiohttp.ClientSession() as s:
            await leave(s)
            before = counter.steps
            await wait_for(srv, is_idle, timeout=5)
            return counter.steps - before

    with wrapped_forward(srv, counter):
        return asyncio.run(scenario())


def test_disconnect_mid_prefill(tight):
    """A 500-token prompt prefills in 64-token chunks over several steps; a client that leaves
    in the middle has its KV, row and table slot back within one step."""

    async def leave(s):
        req = asyncio.ensure_future(s.post(
            tight.base + C, headers=AUTH,
            json=prompt(prompt=list(range(1000, 1500)), max_tokens=4, stream=True)))
        st = await wait_for(tight, lambda st: st["kv_used"] > 0)
        assert st["kv_used"] < 500  # mid-prefill
        req.cancel()

    assert steps_until_released(tight, leave) <= 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_mid_decode(tight, stream):
    async def leave(s):
        body = {**LONG_RUN, "stream": stream}
        req = asyncio.ensure_future(s.post(tight.base + C, json=body, headers=AUTH))
        await wait_for(tight, lambda st: st["running"] == 1 and st["kv_used"] > 10)
        if stream:  # read some events, then drop the connection
            resp = await req
            await read_events(resp, 3)
            resp.close()
        else:  # a client that times out: its connection closes as the cancelled task ends
            req.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await req

    assert steps_until_released(tight, leave) <= 1


# -- failures inside one request ----------------------------------------------------------------

@contextmanager
def wrapped_forward(srv: LiveServer, make_wrapper):
    """Replace the real model's forward with make_wrapper(original) while inside."""
    model = srv.engine.runner.model
    original = model.forward
    model.forward = make_wrapper(original)
    try:
        yield
    finally:
        del model.forward  # the class's forward again


VICTIM_LEN = 300  # the victim's prompt length; the others' prompts are much shorter


def victim(start: int) -> list[int]:
    return list(range(start, start + VICTIM_LEN))


def poisoned_rows(batch) -> torch.Tensor:
    """Rows of the victim once it has produced three tokens."""
    return batch.seq_lens.to(torch.int64) > VICTIM_LEN + 2


async def post_all(srv: LiveServer, bodies: list[tuple[str, dict]]) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession() as s:
        async def one(path: str, body: dict) -> tuple[int, bytes]:
            async with s.post(srv.base + path, json=body) as r:
                return r.status, await r.read()
        return await asyncio.gather(*(one(p, b) for p, b in bodies))


def assert_stream_failed(status: int, body: bytes, text: str) -> None:
    """Started fine (200, tokens), then one final error event, no [DONE]."""
    assert status == 200, body
    events = sse_events(body)
    assert "[DONE]" not in events
    *tokens, last = [json.loads(e) for e in events]
    assert tokens and all("error" not in e for e in tokens)
    assert last["error"]["type"] == "internal_error" and text in last["error"]["message"]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> LiveServer:
    """The server whose model forward (or tokenizer) the engine-fault tests below wrap: the
    shared server's limits (MAX_MODEL_LEN, KV_TOKENS) on conftest's tiny random Llama (one
    layer, dummy weights, the default tokenizer). What they check is what the engine does
    with a failed or non-finite step or a failed decode, which no model's words change; the
    default model's 30 layers cost ~0.15 s of a 2-core CPU a step. The edge values and
    top_k 0 tests above serve on it too, unwrapped (a whole 512-token context cost ~3 s)."""
    model = tiny_llama(tmp_path_factory.mktemp("faulty"), max_position_embeddings=MAX_MODEL_LEN)
    srv = LiveServer(model=model, load_format="dummy").start()
    yield srv
    srv.close()


def test_nan_logits_fail_only_their_request(faulty):
    server = faulty

    def nan_on_victim(forward):
        def wrapper(batch):
            logits = forward(batch)
            logits[poisoned_rows(batch).to(logits.device)] = float("nan")
            return logits
        return wrapper

    others = [(C, prompt(prompt="Hello", max_tokens=8, ignore_eos=True)),
              (G, {"inputs": "Hi", "parameters": {"max_new_tokens": 8, "ignore_eos": True}}),
              (CH, chat(max_tokens=8, ignore_eos=True, stream=True, temperature=0.7))]
    with wrapped_forward(server, nan_on_victim):
        results = asyncio.run(post_all(server, [
            (C, prompt(prompt=victim(1000), max_tokens=20, ignore_eos=True, stream=True)),
            (G, {"inputs": victim(2000), "parameters": {"max_new_tokens": 20, "ignore_eos": True}}),
            *others]))
    assert_stream_failed(*results[0], "non-finite")
    assert_error(results[1][0], results[1][1], 500, None, "non-finite")
    for (path, _), (status, body) in zip(others, results[2:]):
        assert status == 200, body
        if path == CH:
            assert sse_events(body)[-1] == "[DONE]"
        else:
            assert "error" not in json.loads(body)
    server.wait_idle()


def test_step_exception_fails_its_requests_and_the_server_goes_on(faulty):
    """An exception in a step fails the requests of that step (here: every step with a victim
    in it); later steps run as usual."""
    server = faulty

    def raise_on_victims(forward):
        def wrapper(batch):
            if poisoned_rows(batch).any():
                raise RuntimeError("injected device fault")
            return forward(batch)
        return wrapper

    with wrapped_forward(server, raise_on_victims):
        (s1, b1), (s2, b2) = asyncio.run(post_all(server, [
            (C, prompt(prompt=victim(1000), max_tokens=20, ignore_eos=True, stream=True)),
            (G, {"inputs": victim(3000),
                 "parameters": {"max_new_tokens": 20, "ignore_eos": True}})]))
        assert_stream_failed(s1, b1, "injected device fault")
        assert_error(s2, b2, 500, None, "injected device fault")
        status, body = asyncio.run(post_all(server, [(C, prompt(prompt="Hi", max_tokens=3))]))[0]
        assert status == 200, body
    server.wait_idle()


def test_out_of_memory_pauses_and_resumes(faulty, monkeypatch):
    """An out-of-memory error in a decode step pauses the step's requests and halves the batch
    limits; the requests resume by recompute and finish with the output they would have had,
    and good steps double the limits back."""
    server = faulty
    import aiollm.engine.oom as oom

    # every 32 good steps, not 64: the count is a tuning value, the doubling is the check,
    # and each step here is a model forward
    monkeypatch.setattr(oom, "REGROW_STEPS", 32)
    bodies = [(C, prompt(prompt=p, max_tokens=6, temperature=0, ignore_eos=True))
              for p in ("The sky is", "One, two, three,", "Paris is the capital of")]
    expected = [json.loads(b)["choices"][0]["text"] for _, b in asyncio.run(
        post_all(server, bodies))]

    def oom_once(forward):
        decodes = itertools.count(1)

        def wrapper(batch):
            if batch.is_decode and next(decodes) == 2:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return forward(batch)
        return wrapper

    planner = server.engine.planner
    limits = (planner.max_running, planner.token_budget)
    evictions = server.stats()["evictions"]
    try:
        with wrapped_forward(server, oom_once):
            results = asyncio.run(post_all(server, bodies))
        shrunk = server.call(lambda: (planner.max_running, planner.token_budget))
        # REGROW_STEPS good steps double the limits back, once: the resumed requests took
        # fewer than 24 (3 requests of 6 tokens, one at a time), one request's 40 decode
        # steps bring the count past 32 and keep it under 64
        long = (C, prompt(prompt="Count:", max_tokens=40, temperature=0, ignore_eos=True))
        assert [s for s, _ in asyncio.run(post_all(server, [long]))] == [200]
        regrown = server.call(lambda: (planner.max_running, planner.token_budget))
    finally:  # the shared server's limits, for the tests after this one
        server.call(lambda: (setattr(planner, "max_running", limits[0]),
                             setattr(planner, "token_budget", limits[1])))
    assert [s for s, _ in results] == [200] * 3
    assert [json.loads(b)["choices"][0]["text"] for _, b in results] == expected
    assert server.stats()["evictions"] > evictions
    assert shrunk[0] < limits[0] and shrunk[1] <= limits[1]
    assert regrown == (min(limits[0], 2 * shrunk[0]), min(limits[1], 2 * shrunk[1]))
    server.wait_idle()


def test_out_of_memory_alone_at_the_smallest_step_fails_the_request(faulty):
    """A request that runs out of device memory even alone in a step of the fewest tokens the
    backoff plans (one decode token, or a prefill chunk of at most its smallest token
    budget, 64) was paused and resumed for ever: its client waited for ever and /health
    said 200. Now it fails (500 naming out of memory and its tokens) and gives back what it
    held; the requests beside it and after it are served.
    The victim's prompt (100 tokens) takes two chunks once the budget is down to 64."""
    server = faulty
    n = 100  # shorter than the module's victims: each resume recomputes the prompt

    def oom_on_victim(forward):
        def wrapper(batch):  # once the victim has produced three tokens
            if (batch.seq_lens.to(torch.int64) > n + 2).any():
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return forward(batch)
        return wrapper

    others = [(C, prompt(prompt="Hello", max_tokens=4, ignore_eos=True)),
              (CH, chat(max_tokens=4, ignore_eos=True, stream=True))]
    planner = server.engine.planner
    limits = (planner.max_running, planner.token_budget)
    try:
        with wrapped_forward(server, oom_on_victim):
            # before the fix the victim never ended: the timeout fails the test instead
            results = asyncio.run(asyncio.wait_for(post_all(server, [
                (C, prompt(prompt=list(range(1000, 1000 + n)), max_tokens=20, ignore_eos=True)),
                *others]), 60))
            after = asyncio.run(post_all(server, [(C, prompt(prompt="Hi", max_tokens=3))]))[0]
            health = http(server, "GET", "/health")[0]
    finally:  # the shared server's limits, for the tests after this one
        server.call(lambda: (setattr(planner, "max_running", limits[0]),
                             setattr(planner, "token_budget", limits[1])))
    err = assert_error(*results[0], 500, None, "out of device memory")
    assert re.search(r"request \(10\d tokens: 100 prompt \+ \d generated\)", err["message"]), err
    for (path, _), (status, body) in zip(others, results[1:]):
        assert status == 200, body
        if path == CH:
            assert sse_events(body)[-1] == "[DONE]"
    assert after[0] == 200, after[1]
    assert health == 200
    server.wait_idle()


def test_out_of_memory_halves_the_failed_steps_tokens(tmp_path):
    """After an out-of-memory step the token budget halved from its own value, not from the
    size of the step that failed: a 200-token prefill under a budget of 2048 on a device
    with room for 120 tokens a step failed at 2048, 1024, 512 and 256 (the same 200
    tokens each time, recomputed after each pause) and once more in a chunk of 128: five
    failed steps. Half the failed step's tokens is a budget that can fit: one failed step,
    then chunks of 100, and the output the request has without faults."""
    from aiollm import SamplingParams
    from aiollm.engine import Engine

    tiny_llama(tmp_path, vocab_size=256)
    prompt_ids = list(range(1, 201))
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    failed = []  # the tokens of each step that ran out of memory

    async def main():
        async with Engine(str(tmp_path), load_format="dummy", kv_tokens=512,
                          max_prefill_tokens=2048, prefix_cache=False) as engine:
            expected = (await engine.generate(prompt_ids, params)).token_ids
            model = engine.runner.model

            def forward(batch):
                if len(batch.input_ids) > 120:
                    failed.append(len(batch.input_ids))
                    raise torch.OutOfMemoryError("CUDA out of memory (injected)")
                return type(model).forward(model, batch)

            model.forward = forward
            got = (await asyncio.wait_for(engine.generate(prompt_ids, params), 30)).token_ids
            return expected, got, engine.planner.token_budget

    expected, got, budget = asyncio.run(main())
    assert failed == [200] and budget == 100, (failed, budget)
    assert got == expected


def test_out_of_memory_in_a_decode_step_halves_the_prefill_budget(tmp_path):
    """A step of decodes alone (four requests, a token each) that runs out of memory halves
    the requests a step may run; its four tokens say nothing of prefill chunks, so the token
    budget halves from its own value (2048 -> 1024) instead of falling to its floor of 64,
    where prompts ran in chunks of 64 for the ~320 steps the budget took to regrow."""
    from aiollm import SamplingParams
    from aiollm.engine import Engine

    tiny_llama(tmp_path, vocab_size=256)
    prompts = [[i + 1, i + 2, i + 3] for i in range(4)]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    failed = []

    async def main():
        async with Engine(str(tmp_path), load_format="dummy", kv_tokens=512,
                          max_prefill_tokens=2048, prefix_cache=False) as engine:
            expected = [o.token_ids for o in await engine.generate_batch(prompts, params)]
            out_of_memory_once(engine.runner.model, 4, failed)  # the first decode step
            got = await asyncio.wait_for(engine.generate_batch(prompts, params), 30)
            return expected, [o.token_ids for o in got], engine.planner

    expected, got, planner = asyncio.run(main())
    assert failed == [4]
    assert planner.token_budget == 1024 and planner.max_running == 2, (
        planner.token_budget, planner.max_running)
    assert got == expected


POISON = 12345  # a token id that ends the victims' prompts and no other prompt here


class FailingTokenizer:
    """The engine's real tokenizer, except that encoding text with "FAIL-ENCODE" raises, and
    so does decoding the output of a prompt that ends with POISON once it has started."""

    def __init__(self, inner):
        self._inner = inner
        self._decodes = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, text, *args, **kwargs):
        if "FAIL-ENCODE" in text:
            raise RuntimeError("injected tokenizer fault")
        return self._inner.encode(text, *args, **kwargs)

    @property
    def backend_tokenizer(self):
        return self

    def decode(self, ids, *args, **kwargs):
        if POISON in ids:
            self._decodes += 1
            if self._decodes >= 3:  # the prompt's tail, the first token, then fail
                raise RuntimeError("injected tokenizer fault")
        return self._inner.backend_tokenizer.decode(ids, *args, **kwargs)


def test_tokenizer_failure_fails_only_its_request(faulty):
    server = faulty  # the tokenizer is the default model's: only the model is tiny
    engine = server.engine
    original = engine.tokenizer
    engine.tokenizer = FailingTokenizer(original)
    try:
        results = asyncio.run(post_all(server, [
            (C, prompt(prompt="FAIL-ENCODE me", max_tokens=4)),
            (C, prompt(prompt=[1000, 1001, POISON], max_tokens=20, ignore_eos=True,
                       stream=True)),
            (C, prompt(prompt="Hello there", max_tokens=8, ignore_eos=True, stream=True)),
            (G, {"inputs": "Hi", "parameters": {"max_new_tokens": 8, "ignore_eos": True}}),
        ]))
    finally:
        engine.tokenizer = original
    assert_error(*results[0], 500, None, "RuntimeError")
    assert_stream_failed(*results[1], "RuntimeError")
    assert results[2][0] == 200 and sse_events(results[2][1])[-1] == "[DONE]"
    assert results[3][0] == 200 and json.loads(results[3][1])["count_output_tokens"] == 8
    server.wait_idle()


def test_huge_prompt_does_not_stall_other_requests(server):
    """A 2.6 MB prompt takes seconds to tokenize; that happens off the event loop, so other
    clients keep being answered meanwhile. (Its last tokens kept, truncate_prompt_tokens: a
    prompt the context cannot hold is refused before it is tokenized, test_api_long_prompt_
    refusal.py, but one cut to its last tokens is served, so tokenized whole.)"""
    huge = "hello world. " * 200_000

    async def scenario():
        async with aiohttp.ClientSession() as s:
            async def big():
                async with s.post(server.base + C, json=prompt(
                        prompt=huge, truncate_prompt_tokens=16)) as r:
                    return r.status, await r.read()
            task = asyncio.ensure_future(big())
            await asyncio.sleep(0.3)  # the upload is done; tokenizing
            gaps = []
            while not task.done():
                t0 = time.monotonic()
                async with s.get(server.base + "/health") as r:
                    assert r.status == 200
                gaps.append(time.monotonic() - t0)
                await asyncio.sleep(0.05)
            return await task, gaps

    (status, body), gaps = asyncio.run(scenario())
    assert status == 200, body
    assert json.loads(body)["usage"]["prompt_tokens"] == 16
    assert len(gaps) >= 3 and max(gaps) < 1.0, gaps
    server.wait_idle()


# -- shutdown (last: it stops the tight server) ------------------------------------------------

def test_shutdown_finishes_in_flight_and_aborts_the_rest(tight):
    """Shutdown stops accepting, lets a short request finish, and ends one that outlasts the
    grace period (4 s here) with a final error event."""
    async def scenario():
        async with aiohttp.ClientSession() as s:
            short = await open_stream(s, tight, prompt(prompt="Hi", max_tokens=3,
                                                       ignore_eos=True))
            long = asyncio.ensure_future(s.post(tight.base + C, headers=AUTH,
                                                json={**LONG_RUN, "stream": True}))
            await wait_for(tight, lambda st: st["table_used"] == 2)
            tight.begin_shutdown()
            t0 = time.monotonic()
            short_body = await short.read()
            long_resp = await long
            long_body = await long_resp.read()
            elapsed = time.monotonic() - t0
            try:
                async with aiohttp.ClientSession() as fresh:
                    await fresh.get(tight.base + "/health")
                refused = False
            except aiohttp.ClientConnectionError:
                refused = True
            return short_body, long_resp.status, long_body, elapsed, refused

    short_body, long_status, long_body, elapsed, refused = asyncio.run(scenario())
    events = sse_events(short_body)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] \
        == "length"
    assert long_status == 200
    events = sse_events(long_body)
    assert "[DONE]" not in events
    err = json.loads(events[-1])["error"]
    assert err["type"] == "overloaded_error" and "shut down" in err["message"]
    assert 3.0 < elapsed < 15.0
    assert refused  # no longer accepting connections
    tight.close()
