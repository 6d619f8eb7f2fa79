"""HTTP answers of a Hugging Face model directory unlike the default model: tiny random weights
whose logits are wider than the tokenizer (49,216 over the default model's 49,152-token
tokenizer, as Qwen2.5's 151,936 over 151,665 and most checkpoints whose embedding was padded to
a multiple of 64 or 128), and a chat template that takes only alternating user and assistant
turns and raises on anything else (Mistral-7B-Instruct's and Mixtral-8x7B-Instruct's v0.1)."""

from __future__ import annotations

import json

import pytest

from chat_templates import ALTERNATING
from live_server import LiveServer, http, sse_events

from aiollm.model import load_tokenizer

VOCAB = 49152  # the default model's tokenizer
PAD_ID = VOCAB + 5  # a logit past the tokenizer
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": VOCAB + 64,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
}
HI = [{"role": "user", "content": "Hi"}]
# the padding id first, then a real token (logit_bias makes both all but certain)
FORCE = {"logit_bias": {str(PAD_ID): 100}, "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("padded-vocab")
    (d / "config.json").write_text(json.dumps(CONFIG))
    tok = load_tokenizer(None)
    tok.chat_template = ALTERNATING
    tok.save_pretrained(str(d))
    # processed logprobs: the padding id the bias forces is then the most likely token of its
    # row, so chat's top_logprobs list it too (raw, the default, has the model's own top)
    srv = LiveServer(model=str(d), load_format="dummy", max_model_len=256,
                     kv_tokens=1024, logprobs_mode="processed_logprobs").start()
    yield srv
    srv.close()


def _post(server, path: str, body: dict) -> dict:
    status, _, raw = http(server, "POST", path, json=body)
    assert status == 200, raw
    return json.loads(raw)


def _events(server, path: str, body: dict) -> list[dict]:
    status, _, raw = http(server, "POST", path, json={**body, "stream": True})
    assert status == 200, raw
    events = [json.loads(e) for e in sse_events(raw) if e != "[DONE]"]
    assert all("error" not in e for e in events), events
    return events


def test_logprobs_of_a_padding_id_are_an_empty_token(server):
    """A padding id has no text (the tokenizer decodes it to ""), as vLLM reports it.
    Completions and chat logprobs, whole and streamed, echo and prompt_logprobs: a
    padding id among the tokens or top logprobs was a 500 (IndexError in the table of token
    bytes), or an error event ending the stream."""
    out = _post(server, "/v1/completions", {"prompt": "Hi", "logprobs": 2, **FORCE})
    lp = out["choices"][0]["logprobs"]
    assert lp["tokens"][0] == "" and "" in lp["top_logprobs"][0], lp
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    chunks = _events(server, "/v1/completions", {"prompt": "Hi", "logprobs": 2, **FORCE})
    assert [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]] == lp["tokens"]

    chat = _post(server, "/v1/chat/completions",
                 {"messages": HI, "logprobs": True, "top_logprobs": 2, **FORCE})
    first = chat["choices"][0]["logprobs"]["content"][0]
    assert (first["token"], first["bytes"]) == ("", []), first
    assert {"token": "", "bytes": [], "logprob": first["logprob"]} in first["top_logprobs"]
    chunks = _events(server, "/v1/chat/completions",
                     {"messages": HI, "logprobs": True, "top_logprobs": 2, **FORCE})
    streamed = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]
    assert streamed == chat["choices"][0]["logprobs"]["content"]

    # a padding id in the prompt: echoed and scored
    prompt = [19556, PAD_ID, 905]
    echo = _post(server, "/v1/completions", {"prompt": prompt, "echo": True, "max_tokens": 1,
                                             "logprobs": 1, "temperature": 0})
    assert echo["choices"][0]["logprobs"]["tokens"][:3] == ["Hello", "", " world"]
    scored = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1,
                                               "prompt_logprobs": 1})
    entry = scored["choices"][0]["prompt_logprobs"][1][str(PAD_ID)]
    assert entry["decoded_token"] == "", entry


def test_tools_reach_a_template_that_takes_no_system_turn(server):
    """A template that knows no tools gets them as text: in a system message, or where the
    template refuses one, at the head of the first user message. Every request with tools
    was a 400 blaming the client's messages ("Conversation roles must alternate"), which
    held no system turn; /tokenize gives the same prompt."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    body = {"messages": HI, "tools": tools, "max_tokens": 1, "temperature": 0}
    plain = _post(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 1,
                                                    "temperature": 0})
    out = _post(server, "/v1/chat/completions", body)
    assert out["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20, out
    ids = _post(server, "/tokenize", {"messages": HI, "tools": tools})["tokens"]
    assert len(ids) == out["usage"]["prompt_tokens"]
    text = _post(server, "/detokenize", {"tokens": ids})["prompt"]
    assert text.startswith("<|im_start|>[INST] You may call functions.") and "get_weather" in text
    assert text.endswith("\n\nHi [/INST]"), text
    # the client's own system turn is still the client's error, named as the template says
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        **body, "messages": [{"role": "system", "content": "Be brief."}, *HI]})
    assert status == 400 and "alternate" in json.loads(raw)["error"]["message"], raw


@pytest.fixture(scope="module")
def bos_server(tmp_path_factory):
    """The tiny model with the default tokenizer made to start every text with a start
    token, as Llama's, Mistral's and Gemma's do (<s>, <|begin_of_text|>, <bos>): here its
    <|endoftext|> (id 0)."""
    import tokenizers

    d = tmp_path_factory.mktemp("start-token")
    (d / "config.json").write_text(json.dumps(CONFIG))
    tok = load_tokenizer(None)
    tok.backend_tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{START} $A", special_tokens=[(START, 0)])
    tok.save_pretrained(str(d))
    # processed logprobs: the padding id the bias forces is then the most likely token of its
    # row, so chat's top_logprobs list it too (raw, the default, has the model's own top)
    srv = LiveServer(model=str(d), load_format="dummy", max_model_len=256,
                     kv_tokens=1024, logprobs_mode="processed_logprobs").start()
    yield srv
    srv.close()


START = "<|endoftext|>"


def _echo(server, body: dict) -> list[tuple[str, dict | None]]:
    """(text, logprobs) of a completion, whole and streamed (its chunks' lists joined)."""
    out = _post(server, "/v1/completions", body)["choices"][0]
    text, lps = "", None
    for c in _events(server, "/v1/completions", body):
        text += c["choices"][0]["text"]
        if c["choices"][0]["logprobs"] is not None:
            lps = {k: (lps or {}).get(k, []) + v
                   for k, v in c["choices"][0]["logprobs"].items()}
    return [(out["text"], out["logprobs"]), (text, lps)]


@pytest.mark.parametrize("body", [{"max_tokens": 0}, {"max_tokens": 0, "logprobs": 1},
                                  {"max_tokens": 2, "logprobs": 1, "temperature": 0}],
                         ids=["echo", "scored", "continued"])
def test_echo_is_the_prompt_as_sent_under_a_start_token(bos_server, body):
    """A tokenizer that starts every text with a start token: echo gives back the prompt as
    the client sent it, as vLLM does; it came back with the start token ("<|endoftext|>Hello",
    "<s>Hello"). The echoed tokens are still one per prompt token (usage counts the start
    token, vLLM's prompt logprobs list it): the start token's is "" with no logprob (it
    stands for none of the text), so the tokens join to the text and text_offset indexes it.
    A start token the client sent (its id, or its text in the prompt) is echoed."""
    body = {**body, "prompt": "Hello", "echo": True}
    usage = _post(bos_server, "/v1/completions", body)["usage"]
    assert usage["prompt_tokens"] == 2, usage  # the start token and "Hello"
    for text, lp in _echo(bos_server, body):
        assert text.startswith("Hello"), text
        if "logprobs" not in body:
            assert lp is None and text == "Hello"
            continue
        assert lp["tokens"][:2] == ["", "Hello"], lp
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None, lp
        assert len(lp["tokens"]) == 2 + usage["completion_tokens"], lp
        assert "".join(lp["tokens"]) == text, lp
        assert lp["text_offset"] == [len("".join(lp["tokens"][:i]))
                                     for i in range(len(lp["tokens"]))], lp
    for prompt in ([0, 19556], START + "Hello"):  # the client's own start token
        sent = {**body, "prompt": prompt}
        for text, lp in _echo(bos_server, sent):
            assert text.startswith(START + "Hello"), text
            if lp is not None:
                assert lp["tokens"][:3] == (["", START, "Hello"] if isinstance(prompt, str)
                                            else [START, "Hello"] + lp["tokens"][2:3]), lp
                assert "".join(lp["tokens"]) == text, lp


@pytest.mark.parametrize("keep, echoed", [(-1, "Hello world"), (3, "Hello world"),
                                          (2, " world"), (1, "")],
                         ids=["context", "all", "cut", "start-token-only"])
@pytest.mark.parametrize("body", [{"max_tokens": 0}, {"max_tokens": 0, "logprobs": 1},
                                  {"max_tokens": 2, "logprobs": 1, "temperature": 0}],
                         ids=["echo", "scored", "continued"])
def test_echo_of_a_truncated_prompt_leaves_out_the_added_start_token(bos_server, body, keep,
                                                                     echoed):
    """truncate_prompt_tokens that keeps the tokenizer's start token (-1, or as many tokens
    as the prompt has) echoes the prompt as without truncation: it echoed
    "<|endoftext|>Hello" while its logprobs' tokens gave the start token "" (they no longer
    joined to the text). A cut keeps the start token too, as vLLM's tokenizer truncates a
    text prompt, and the prompt's last tokens that fit beside it: the echo is those tokens'
    text, without the start token (the start token alone echoes nothing)."""
    body = {**body, "prompt": "Hello world", "echo": True, "truncate_prompt_tokens": keep}
    usage = _post(bos_server, "/v1/completions", body)["usage"]
    assert usage["prompt_tokens"] == (3 if keep == -1 else keep), usage
    for text, lp in _echo(bos_server, body):
        assert text.startswith(echoed) and START not in text, text
        if body["max_tokens"] == 0:
            assert text == echoed
        if lp is not None:
            assert lp["tokens"][0] == "", lp  # the start token's
            assert "".join(lp["tokens"]) == text, lp


@pytest.mark.parametrize("prompt", ["Hello", ["Hello", "Hello"]], ids=["one", "batch"])
def test_add_special_tokens_false_leaves_out_the_start_token(bos_server, prompt):
    """vLLM's add_special_tokens on /v1/completions (default true): false tokenizes a text
    prompt without the tokenizer's start token. It was an unknown field, ignored, so the
    start token was always added. The same prompt then gives the same logprobs as its
    token ids sent without the start token."""
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 1}
    n = len(prompt) if isinstance(prompt, list) else 1
    assert _post(bos_server, "/v1/completions", body)["usage"]["prompt_tokens"] == 2 * n
    out = _post(bos_server, "/v1/completions", {**body, "add_special_tokens": False})
    assert out["usage"]["prompt_tokens"] == n, out["usage"]
    ids = _post(bos_server, "/v1/completions", {**body, "prompt": [19556]})
    # equal up to the CPU matmul's rounding, which may differ between a batch of two and one
    # prompt alone (AMD EPYC: 1e-6)
    assert (out["choices"][0]["logprobs"]["token_logprobs"]
            == pytest.approx(ids["choices"][0]["logprobs"]["token_logprobs"], abs=1e-4, rel=0))
