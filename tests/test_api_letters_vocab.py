"""HTTP answers of a model whose tokenizer is unlike the default model's: one character a
token, lower-case letters alone, a BOS (`<s>`) that the tokenizer adds to what it encodes
and that its chat template writes too, and no end-of-sequence token. Tiny random weights.

- Chat's add_special_tokens (vLLM's, default false) adds the tokenizer's special tokens on
  top of what the template wrote: a second BOS here. It was an unknown field, ignored.
- LightLLM's /tokens counts that BOS unless parameters.add_special_tokens is false.
- truncate_prompt_tokens keeps the BOS the tokenizer adds to a text prompt, as vLLM's
  (Hugging Face's truncation of the tokenizer's output keeps its special tokens).
- A grammar no token of this vocabulary can begin (any JSON) is the request's 400 naming
  its field: it was a 500 saying a token was sampled against the grammar.
- An output that matches its grammar whole, with no token left that could go on, finishes
  with "stop" (no eos could end it): it was a 400 saying no token could continue it.
"""

from __future__ import annotations

import json
import string

import pytest
from conftest import tiny_llama
from live_server import LiveServer, http
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

HI = [{"role": "user", "content": "hi"}]
LETTERS = {c: i for i, c in enumerate(string.ascii_lowercase)}
UNK, BOS = len(LETTERS), len(LETTERS) + 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("letters")
    backend = Tokenizer(models.WordLevel({**LETTERS, "<unk>": UNK, "<s>": BOS},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(str(d))
    tiny_llama(str(d), vocab_size=32, bos_token_id=BOS, eos_token_id=None)
    return str(d)


@pytest.fixture(scope="module")
def server(model_dir):
    srv = LiveServer(model=model_dir, load_format="dummy", max_model_len=256,
                     kv_tokens=512).start()
    yield srv
    srv.close()


def post(server, path: str, body: dict) -> tuple[int, dict]:
    status, _, raw = http(server, "POST", path, json=body)
    return status, json.loads(raw)


def test_chat_add_special_tokens_adds_them_on_top_of_the_template(server):
    """The template writes one BOS; add_special_tokens true adds the tokenizer's own on
    top (vLLM's ChatCompletionRequest field, default false), on the chat request and on
    /tokenize with messages (vLLM's TokenizeChatRequest: also default false)."""
    rendered = [BOS, LETTERS["h"], LETTERS["i"]]
    for extra, want in (({}, rendered), ({"add_special_tokens": False}, rendered),
                        ({"add_special_tokens": True}, [BOS, *rendered])):
        status, out = post(server, "/v1/chat/completions", {
            "messages": HI, "max_tokens": 2, "return_token_ids": True, **extra})
        assert status == 200, out
        assert out["prompt_token_ids"] == want, (extra, out)
        assert out["usage"]["prompt_tokens"] == len(want)
        status, out = post(server, "/tokenize", {"messages": HI, **extra})
        assert status == 200 and out["tokens"] == want, (extra, out)
    # a prompt takes the tokenizer's special tokens unless told not to, as before
    assert post(server, "/tokenize", {"prompt": "hi"})[1]["tokens"] == rendered
    assert post(server, "/tokenize", {"prompt": "hi", "add_special_tokens": False}
                )[1]["tokens"] == rendered[1:]


def test_tokenize_an_empty_prompt_gives_the_special_tokens(server):
    """/tokenize of "" is what the tokenizer makes of no text: its BOS, unless
    add_special_tokens is false, as vLLM's /tokenize answers it (it tokenizes "" as any
    text). It was [] either way."""
    assert post(server, "/tokenize", {"prompt": ""}) == (200, {
        "tokens": [BOS], "count": 1, "max_model_len": 256})
    assert post(server, "/tokenize", {"prompt": "", "add_special_tokens": False}
                )[1]["tokens"] == []
    assert post(server, "/tokenize", {"prompt": "", "return_token_strs": True}
                )[1]["token_strs"] == ["<s>"]


def _kept(server, path: str, body: dict) -> list[int]:
    """The prompt ids the model saw (of each prompt of a batch: the same), of a one-token
    answer; usage counts them."""
    status, out = post(server, path, {**body, "max_tokens": 1, "return_token_ids": True})
    assert status == 200, out
    seen = ([out["prompt_token_ids"]] if "prompt_token_ids" in out
            else [c["prompt_token_ids"] for c in out["choices"]])
    assert all(ids == seen[0] for ids in seen), seen
    assert out["usage"]["prompt_tokens"] == len(seen) * len(seen[0]), out
    return seen[0]


def _echo(server, body: dict) -> str:
    status, out = post(server, "/v1/completions", {**body, "echo": True, "max_tokens": 0})
    assert status == 200, out
    return out["choices"][0]["text"]


def test_truncate_prompt_tokens_keeps_the_added_bos(server):
    """truncate_prompt_tokens k of a text prompt keeps the BOS the tokenizer adds and the
    text's last k - 1 tokens, as vLLM tokenizes it (Hugging Face's left truncation, which
    keeps the special tokens it adds): the cut took the BOS, the model saw the text's last
    k. What the client wrote (ids, a rendered conversation's own BOS) is cut as written;
    chat's add_special_tokens BOS is kept as a prompt's. The echo leaves out the BOS."""
    a, d, e, f = (LETTERS[c] for c in "adef")
    C, CHAT = "/v1/completions", "/v1/chat/completions"
    cut = {"prompt": "abcdef", "truncate_prompt_tokens": 3}
    assert _kept(server, C, cut) == [BOS, e, f]
    assert _kept(server, C, {**cut, "prompt": ["abcdef", "bcdef"]}) == [BOS, e, f]
    assert _kept(server, C, {**cut, "truncate_prompt_tokens": 1}) == [BOS]
    assert _kept(server, C, {**cut, "truncate_prompt_tokens": 7}) == [BOS, *range(6)]  # all
    assert _kept(server, C, {**cut, "add_special_tokens": False}) == [d, e, f]
    assert _kept(server, C, {**cut, "prompt": [BOS, a, d, e, f]}) == [d, e, f]
    chat = {"messages": [{"role": "user", "content": "abcdef"}], "truncate_prompt_tokens": 3}
    assert _kept(server, CHAT, chat) == [d, e, f]
    assert _kept(server, CHAT, {**chat, "add_special_tokens": True}) == [BOS, e, f]
    # the echo is the text the model saw, less the BOS, as without truncation
    seen = json.loads(http(server, "POST", "/detokenize", json={"tokens": [e, f]})[2])
    assert _echo(server, cut) == seen["prompt"]
    assert _echo(server, {**cut, "truncate_prompt_tokens": 1}) == ""
    assert _echo(server, {**cut, "truncate_prompt_tokens": 7}) == "abcdef"


def test_offline_truncate_prompt_tokens_keeps_the_added_bos(model_dir):
    """LLM.generate's SamplingParams.truncate_prompt_tokens keeps a text prompt's BOS, as
    vLLM's LLM does (its tokenizer truncates); TokensPrompt ids are cut as given."""
    from aiollm import LLM, SamplingParams

    e, f = LETTERS["e"], LETTERS["f"]
    params = SamplingParams(max_tokens=1, truncate_prompt_tokens=3)
    with LLM(model_dir, load_format="dummy", max_model_len=64, kv_tokens=256) as llm:
        out, ids = llm.generate(["abcdef", {"prompt_token_ids": [BOS, 0, 3, e, f]}], params,
                                use_tqdm=False)
    assert out.prompt_token_ids == [BOS, e, f], out
    assert ids.prompt_token_ids == [3, e, f], ids


def test_engine_generate_truncates_a_text_prompt_as_stream_does(model_dir):
    """Engine.generate's truncate_prompt_tokens keeps a text prompt's BOS, as Engine.stream
    and LLM.generate keep it: generate encoded the whole text, then cut its ids, the BOS
    with the rest ([d, e, f])."""
    import asyncio

    from aiollm import SamplingParams
    from aiollm.engine import Engine

    e, f = LETTERS["e"], LETTERS["f"]
    params = SamplingParams(max_tokens=1, truncate_prompt_tokens=3)

    async def main():
        async with Engine(model_dir, load_format="dummy", max_model_len=64,
                          kv_tokens=256) as engine:
            return (await engine.generate("abcdef", params)).prompt_token_ids

    assert asyncio.run(main()) == [BOS, e, f]


def test_lightllm_tokens_counts_the_special_tokens_unless_told_not_to(server):
    """LightLLM's /tokens counts the text as /generate tokenizes it: with the tokenizer's
    BOS, unless parameters.add_special_tokens is false (the one parameter that changes a
    count; the others are checked as /generate checks them)."""
    assert post(server, "/tokens", {"text": "hi"}) == (200, {"ntokens": 3})
    assert post(server, "/tokens", {"text": "hi", "parameters": {
        "add_special_tokens": False, "temperature": 0.5}}) == (200, {"ntokens": 2})


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "hi", "guided_json": {"type": "object"}}, "guided_json"),
    ("/v1/completions", {"prompt": "hi", "response_format": {"type": "json_object"}},
     "response_format"),
    ("/v1/chat/completions", {"messages": HI, "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}},
     "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"messages": HI, "guided_regex": "[0-9]+"}, "guided_regex"),
])
def test_a_grammar_the_vocabulary_cannot_write_is_400(server, path, body, param):
    """No token of the vocabulary can begin a JSON value (nor a digit), and there is no
    eos to end an empty output: refused before generation, naming the field. A grammar it
    can write is served."""
    status, out = post(server, path, {**body, "max_tokens": 4})
    assert status == 400, out
    assert out["error"]["param"] == param, out
    assert "vocabulary" in out["error"]["message"], out
    status, out = post(server, path, {k: v for k, v in body.items() if k not in (
        "guided_json", "response_format", "guided_regex")} | {"guided_regex": "[a-c]+",
                                                             "max_tokens": 4})
    assert status == 200, out
    assert server.wait_idle()


@pytest.mark.parametrize("path,body,param", [
    ("/generate", {"inputs": "hi", "parameters": {"guided_json": {"type": "object"},
                                                  "max_new_tokens": 4}},
     "parameters.guided_json"),
    ("/generate", {"inputs": "hi", "parameters": {"regular_constraint": "[0-9]+",
                                                  "max_new_tokens": 4}},
     "parameters.regular_constraint"),
])
def test_lightllm_grammars_the_vocabulary_cannot_write_name_their_field(server, path, body,
                                                                        param):
    """LightLLM's grammar fields, inside its parameters: the refusal (LightLLM's 417) names
    the field by its path, as the OpenAI endpoints' do."""
    status, out = post(server, path, body)
    assert status == 417, out
    assert out["error"]["param"] == param, out
    assert "vocabulary" in out["error"]["message"], out
    assert server.wait_idle()


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "hi", "guided_regex": "a[0-9]"}, "guided_regex"),
    ("/v1/chat/completions", {"messages": HI, "structured_outputs": {"choice": ["b1", "b2"]}},
     "structured_outputs.choice"),
    ("/v1/completions", {"prompt": "hi", "stream": True, "guided_regex": "(a|b)[0-9]+"},
     "guided_regex"),
])
def test_a_grammar_the_vocabulary_cannot_go_on_with_is_the_clients_error(server, path, body,
                                                                          param):
    """A grammar this vocabulary can begin (a letter) but not go on with (a digit next):
    its first step passes the check at compile time, then the mask allows no token, the
    sampler draws one the grammar refuses, and the request failed as the server's bug (a
    500, "a token was sampled against the request's grammar"). It is the client's grammar
    that no output of this model can match: an error naming its field."""
    status, raw_headers, raw = http(server, "POST", path, json={**body, "max_tokens": 4})
    if body.get("stream"):
        assert status == 200, raw
        err = json.loads(raw.split(b"data: ", 2)[-1].split(b"\n")[0])["error"]
    else:
        assert status == 400, raw
        err = json.loads(raw)["error"]
    assert err["param"] == param, err
    assert "continue" in err["message"], err
    assert server.wait_idle()


@pytest.mark.parametrize("path,body,want", [
    ("/v1/completions", {"prompt": "hi", "guided_regex": "a(b|c)"}, ("ab", "ac")),
    ("/v1/chat/completions", {"messages": HI, "structured_outputs": {"choice": ["cab", "bad"]}},
     ("cab", "bad")),
    ("/v1/completions", {"prompt": "hi", "stream": True, "guided_choice": ["dc", "cd"]},
     ("dc", "cd")),
])
def test_an_output_that_matches_its_grammar_whole_ends_with_stop(server, path, body, want):
    """No eos, so nothing can end the output where its grammar is matched whole: the
    mask then allows no token, and the request was a 400 saying that no token could
    continue an output that already matched. Such an output is the answer: it finishes
    with "stop", its text all the grammar allows, no token past it counted."""
    status, _, raw = http(server, "POST", path, json={**body, "max_tokens": 8,
                                                      "temperature": 1.0})
    assert status == 200, raw
    if body.get("stream"):
        events = [json.loads(line[6:]) for line in raw.decode().split("\n")
                  if line.startswith("data: {")]
        assert not any("error" in e for e in events), events
        text = "".join(c["text"] for e in events for c in e["choices"])
        finish = [c["finish_reason"] for e in events for c in e["choices"]
                  if c["finish_reason"]]
        assert finish == ["stop"], events
    else:
        out = json.loads(raw)
        choice = out["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
        assert choice["finish_reason"] == "stop", out
        assert out["usage"]["completion_tokens"] == len(text.split()), out
    assert text.replace(" ", "") in want, text  # (the decoder puts a space between tokens)
    assert server.wait_idle()


def test_an_empty_prompt_is_the_bos_and_generates(server, model_dir):
    """"" is what the tokenizer makes of no text, [BOS], and generates from it, as vLLM
    encodes and serves it (it refuses only an empty token list): /v1/completions (alone
    and in a batch) and LLM.generate. Without the special tokens
    it is no token at all: refused, naming the prompt. It was refused either way."""
    from aiollm import LLM, SamplingParams

    assert _kept(server, "/v1/completions", {"prompt": ""}) == [BOS]
    assert _kept(server, "/v1/completions", {"prompt": ["", ""]}) == [BOS]
    status, out = post(server, "/v1/completions", {"prompt": "", "max_tokens": 1,
                                                  "add_special_tokens": False})
    assert status == 400 and out["error"]["param"] == "prompt", out
    assert "no token" in out["error"]["message"], out
    with LLM(model_dir, load_format="dummy", max_model_len=64, kv_tokens=256) as llm:
        out, = llm.generate([""], SamplingParams(max_tokens=1), use_tqdm=False)
    assert out.prompt_token_ids == [BOS] and len(out.outputs[0].token_ids) == 1, out
