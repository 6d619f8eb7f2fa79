"""Text that encodes to few tokens or none, on a model whose tokenizer adds a BOS (`<s>`)
and drops whitespace (a word-level vocabulary split on whitespace): "" and "   " are
[BOS] with the special tokens, [] without. Tiny random weights.

- LightLLM's /generate and /generate_stream tokenize their inputs and generate from
  whatever that gives, [BOS] for "" (LightLLM's HttpServerManager._encode, then
  _check_and_repair_length, which refuses only an empty list of ids). They refused any
  empty inputs; now only text that encodes to no token, with a 400 naming inputs.
- vLLM's /tokenize answers text that encodes to no token with tokens [] and count 0
  (OpenAIServingTokenization.create_tokenize counts what the tokenizer gave), and
  LightLLM's /tokens with ntokens 0: both refused "   " (a 400 naming the prompt).
- /generate_stream sends one event per generated token, its text "" where the token adds
  none (a skipped special token), as LightLLM's detokenizer queues every token.
"""

from __future__ import annotations

import json

import pytest
from conftest import tiny_llama
from live_server import LiveServer, http, sse_events
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = {w: i for i, w in enumerate(["hello", "world", "a", "b", "c"])}
UNK, BOS = len(WORDS), len(WORDS) + 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("words"))
    backend = Tokenizer(models.WordLevel({**WORDS, "<unk>": UNK, "<s>": BOS},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", BOS)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                            bos_token="<s>").save_pretrained(d)
    tiny_llama(d, vocab_size=16, max_position_embeddings=128, bos_token_id=BOS, eos_token_id=None)
    srv = LiveServer(model=d, load_format="dummy", max_model_len=128, kv_tokens=512).start()
    yield srv
    srv.close()


def post(server, path: str, body: dict) -> tuple[int, dict]:
    status, _, raw = http(server, "POST", path, json=body)
    return status, json.loads(raw)


def stream(server, body: dict) -> list[dict]:
    status, _, raw = http(server, "POST", "/generate_stream", json=body)
    assert status == 200, raw
    return [json.loads(e) for e in sse_events(raw)]


@pytest.mark.parametrize("text", ["", "   "])
def test_lightllm_inputs_of_the_bos_alone_generate(server, text):
    """LightLLM encodes the inputs and generates from [BOS]: prompt_tokens 1."""
    body = {"inputs": text, "parameters": {"max_new_tokens": 2}}
    status, out = post(server, "/generate", body)
    assert status == 200, out
    assert out["prompt_tokens"] == 1 and out["count_output_tokens"] == 2, out
    events = stream(server, body)
    assert len(events) == 2 and events[-1]["finished"], events
    assert all(e["token"]["prompt_tokens"] == 1 for e in events), events
    status, out = post(server, "/", {**body, "stream": False})
    assert status == 200 and out["prompt_tokens"] == 1, out


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
@pytest.mark.parametrize("inputs", ["", "   ", []])
def test_lightllm_inputs_of_no_token_are_refused_naming_inputs(server, path, inputs):
    """No token at all (no BOS added, or an empty list of ids) is refused naming inputs
    (417, LightLLM's status), in the client's words, as LightLLM refuses an empty list of
    prompt ids."""
    status, out = post(server, path, {"inputs": inputs, "parameters": {
        "max_new_tokens": 2, "add_special_tokens": False}})
    assert status == 417 and out["error"]["param"] == "inputs", out
    message = out["error"]["message"]
    assert message.startswith("inputs must not be empty") and "prompt" not in message, out
    assert server.wait_idle()


def test_tokenize_text_of_no_token_counts_none(server):
    """vLLM's /tokenize of text the tokenizer drops: tokens [] and count 0 (its BOS with
    the special tokens); LightLLM's /tokens: ntokens 0. Both were 400s."""
    for text in ("", "   "):
        assert post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}) == (
            200, {"tokens": [], "count": 0, "max_model_len": 128}), text
        assert post(server, "/tokenize", {"prompt": text, "return_token_strs": True}) == (
            200, {"tokens": [BOS], "count": 1, "max_model_len": 128,
                  "token_strs": ["<s>"]}), text
        assert post(server, "/tokens", {"text": text, "parameters": {
            "add_special_tokens": False}}) == (200, {"ntokens": 0}), text
        assert post(server, "/tokens", {"text": text}) == (200, {"ntokens": 1}), text
    assert post(server, "/tokenize", {"prompt": " hello  world ", "add_special_tokens": False}
                )[1]["tokens"] == [WORDS["hello"], WORDS["world"]]
    assert post(server, "/detokenize", {"tokens": []}) == (200, {"prompt": ""})


def test_stream_sends_an_event_for_each_token_of_no_text(server):
    """Every generated token is an event, its text "" where it adds none (the BOS,
    skipped as a special token), with its id and count: a client counting events counts
    the tokens, as LightLLM's benchmark_qps does; the events' text joins to /generate's."""
    for allowed in ([BOS], [BOS, WORDS["a"]]):
        body = {"inputs": "hello", "parameters": {
            "max_new_tokens": 6, "allowed_token_ids": allowed, "return_details": True}}
        status, whole = post(server, "/generate", body)
        assert status == 200 and whole["count_output_tokens"] == 6, whole
        events = stream(server, body)
        assert [e["token"]["id"] for e in events] == [t["id"] for t in whole["tokens"]]
        assert [e["token"]["count_output_tokens"] for e in events] == list(range(1, 7))
        assert [e["token"]["text"] for e in events] == [
            "" if t["id"] == BOS else t["text"] for t in whole["tokens"]], events
        assert all(e["token"]["special"] == (e["token"]["id"] == BOS) for e in events)
        assert "".join(e["token"]["text"] for e in events) == whole["generated_text"][0]
    assert server.wait_idle()
