"""HTTP answers of a model whose logits are wider than its tokenizer (Qwen2.5's 151,936 logits
over a 151,665-token tokenizer, and most checkpoints whose embedding was padded to a multiple of
64 or 128): tiny random weights of 49,216 logits served with the default model's 49,152-token
tokenizer. The model may pick a padding id, or list one among its top logprobs; such an id has
no text (the tokenizer decodes it to ""), as vLLM reports it."""

from __future__ import annotations

import json

import pytest

from live_server import LiveServer, http, sse_events

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
    srv = LiveServer(model=str(d), load_format="dummy", max_model_len=256,
                     kv_tokens=1024).start()
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
    """Completions and chat logprobs, whole and streamed, echo and prompt_logprobs: a
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
