"""/v1/completions of a sliding-window model past its window, against transformers.

A tiny random Mistral (every layer slides, window 8 tokens) with the default tokenizer saved
beside it, served as `aiollm serve` serves it: greedy completions of prompts several windows
long equal transformers' greedy tokens (its own forward and sliding-window cache). The same
prompt again, and a prompt sharing its first 32 tokens, start from the prefix cache: a cached
prefix four windows long, the new tokens attending to its last window only.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MistralConfig

from live_server import LiveServer, http
from test_loader import save_random_hf_model
from test_moe_model import hf_greedy

from aiollm.model import load_tokenizer

VOCAB = 49152  # the default tokenizer's
WINDOW = 8
NEW_TOKENS = 12
CONFIG = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, sliding_window=WINDOW,
                       tie_word_embeddings=False)
gen = torch.Generator().manual_seed(3)
LONG = torch.randint(3, VOCAB, (40,), generator=gen).tolist()
SHARED = LONG[:32] + torch.randint(3, VOCAB, (9,), generator=gen).tolist()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistral-window-8")
    hf = save_random_hf_model(CONFIG, str(d))
    hf.config._attn_implementation = "sdpa"
    load_tokenizer(None).save_pretrained(str(d))
    srv = LiveServer(model=str(d), max_model_len=256, kv_tokens=1024).start()
    yield srv, hf
    srv.close()


def completion_ids(server, prompt: list[int]) -> tuple[list[int], int]:
    """The greedy completion's token ids, and how many prompt tokens the prefix cache held."""
    body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True,
            "logprobs": 0, "return_tokens_as_token_ids": True}
    status, _, raw = http(server, "POST", "/v1/completions", json=body)
    assert status == 200, raw
    out = json.loads(raw)
    tokens = out["choices"][0]["logprobs"]["tokens"]
    return ([int(t.removeprefix("token_id:")) for t in tokens],
            out["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_greedy_completions_past_the_window_match_transformers(served):
    server, hf = served
    want = {name: hf_greedy(hf, p, NEW_TOKENS) for name, p in
            (("long", LONG), ("shared", SHARED), ("short", LONG[:5]))}
    assert completion_ids(server, LONG)[0] == want["long"]
    ids, cached = completion_ids(server, LONG)  # its prefix cached
    assert ids == want["long"] and cached >= 32
    ids, cached = completion_ids(server, SHARED)
    assert ids == want["shared"] and cached >= 32
    assert completion_ids(server, LONG[:5])[0] == want["short"]  # decodes past the window
