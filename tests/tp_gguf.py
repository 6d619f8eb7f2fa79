"""A tiny random Llama as a GGUF file, for the tensor-parallel tests that start processes
(`aiollm serve` nodes, offline scripts) and check how ranks fail, not what the model says.

A process given a Hugging Face directory imports transformers to read its config.json
(AutoConfig) and its tokenizer (AutoTokenizer): ~1.8 s of CPU in each lead process, about
as much as all its other imports (measured: a node of a two-node pair 5.1 -> 3.2 s of CPU,
the other 3.8 -> 2.1 s). A GGUF file's config and converted tokenizer come from aiollm's
cache (model/derived_cache.py; the session's $AIOLLM_CACHE_DIR, which the children
inherit), filled here once, so its processes never import transformers.

Its shape is test_tensor_parallel.TINY's where the tests lean on it (4 attention heads over
1 KV head, so -tp 2 and -tp 4 split it; an MLP of 96; 2 layers; 256 positions); its
vocabulary a byte-level BPE of VOCAB tokens made here (an end-of-text token, the 256 bytes
as GPT-2 writes them, then pairs of letters and digits: it encodes any text; reading the
default model's instead takes ~3.5 s of CPU), its weights random (seed 0)."""

from __future__ import annotations

import pytest

HIDDEN, MLP, LAYERS = 64, 96, 2  # 4 heads of 16; 1 KV head
VOCAB = 1024
_BUILT: dict[str, str] = {}  # basetemp -> the file: one per test process


def _tokenizer(w) -> None:
    """A byte-level BPE of VOCAB tokens into the gguf.GGUFWriter `w` (GGUF's "gpt2" model):
    token 0 the end of text (bos and eos), then the 256 bytes, then merged pairs."""
    import itertools

    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    alnum = [c for c in chars if c.isalnum()]
    pairs = itertools.islice(itertools.product(alnum, alnum), VOCAB - 1 - len(chars))
    merges = [f"{a} {b}" for a, b in pairs]
    tokens = ["<|endoftext|>", *chars, *(m.replace(" ", "") for m in merges)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (VOCAB - 1))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)


def write_tiny_gguf(path: str) -> str:
    """Write the tiny Llama GGUF file at `path`, then read its config and tokenizer once in
    this process (which fills aiollm's cache for the processes the tests start): `path`."""
    from test_loader import add_random_llama_tensors, finish_gguf, gguf_writer
    from transformers import LlamaConfig

    from aiollm.model import load_serving_tokenizer
    from aiollm.model.loader import read_config

    c = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                    num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=1,
                    max_position_embeddings=256)
    w = gguf_writer(c, path, "llama")
    _tokenizer(w)
    add_random_llama_tensors(w, c, std=0.5)
    finish_gguf(w)
    read_config(path)
    load_serving_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> str:
    """The path of the tiny Llama GGUF file (write_tiny_gguf), written once per test
    process: a module imports this fixture to use it."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = write_tiny_gguf(str(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"))
    return _BUILT[key]
