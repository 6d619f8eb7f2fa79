"""A GGUF model's generation ends where llama.cpp's does: at the file's eos, eot and eom ids
and at the end-of-turn markers its vocabulary holds (aiollm/model/gguf_eog.py). An older
Llama 3 Instruct file names <|end_of_text|> as its eos and no eot: its chats end with
<|eot_id|>, where llama.cpp stops and aiollm went on to max_tokens."""

from __future__ import annotations

import asyncio
import logging

import gguf
from test_gguf_qwen_tokenizer_log import default_tokenizer_fields
from test_loader import add_random_llama_tensors, finish_gguf, gguf_writer

from aiollm import Engine, SamplingParams
from aiollm.model.gguf_eog import end_of_generation
from aiollm.model.weights_gguf import read_gguf

CONTROL, NORMAL = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
# the default model's first tokens renamed as an older Llama 3 Instruct file has them
LLAMA3 = {0: "<|end_of_text|>", 1: "<|begin_of_text|>", 2: "<|eot_id|>", 3: "<|start_header_id|>",
          4: "<|end_header_id|>"}


def write_model(path: str, renamed: dict[int, str], types: dict[int, int] | None = None,
                keys: dict[str, int] | None = None) -> None:
    """A tiny random Llama GGUF file (one layer, hidden 32) whose vocabulary is the default
    model's first tokens (default_tokenizer_fields) with the texts `renamed` (id -> text) and
    token types `types` (id -> type) in place of its own, and whose token-id keys are `keys`
    (e.g. eos_token_id -> id; no others: the default model's are left out)."""
    from transformers import LlamaConfig

    fields = {key: (value, kind, sub) for key, value, kind, sub in default_tokenizer_fields()}
    texts = list(fields["tokenizer.ggml.tokens"][0])
    token_types = list(fields["tokenizer.ggml.token_type"][0])
    for i, text in renamed.items():
        texts[i] = text
    for i, kind in (types or {}).items():
        token_types[i] = int(kind)
    c = LlamaConfig(vocab_size=len(texts), hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256)
    w = gguf_writer(c, path, "llama")
    for key, (value, kind, sub) in fields.items():
        if (not key.endswith("_token_id")
                and key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                "tokenizer.chat_template")):
            w.add_key_value(key, value, kind, sub_type=sub)
    w.add_token_list(texts)
    w.add_token_types(token_types)
    for key, token in (keys or {}).items():
        w.add_uint32(f"tokenizer.ggml.{key}", token)
    add_random_llama_tensors(w, c, std=0.02)
    finish_gguf(w)


def test_an_older_llama3_file_ends_generation_at_eot_id(tmp_path, caplog):
    path = str(tmp_path / "llama3.gguf")
    write_model(path, LLAMA3, keys={"eos_token_id": 0, "bos_token_id": 1})

    async def generate(*biased: int):
        async with Engine(path, max_model_len=64, kv_tokens=256) as engine:
            # the bias makes greedy decoding pick the token, as a chat model picks <|eot_id|>
            return [await engine.generate([5, 6, 7], SamplingParams(
                max_tokens=4, temperature=0, logit_bias={token: 100.0})) for token in biased]

    with caplog.at_level(logging.INFO, logger="aiollm.model.gguf_eog"):
        eot, header = asyncio.run(generate(2, 3))
    assert (eot.token_ids, eot.finish_reason) == ([2], "stop")
    assert "2 '<|eot_id|>'" in caplog.text  # the id added, logged
    assert (header.token_ids, header.finish_reason) == ([3] * 4, "length")  # no marker
    assert read_gguf(path).config.eos_token_ids == [0, 2]  # the eos key's first


def test_a_marker_ends_generation_whatever_its_type_and_the_keys_come_first(tmp_path):
    """llama.cpp ends at a marker the file types as a normal token (and warns: the file is
    probably wrong); an eot the file names needs no text; a fill-in-the-middle id named by
    its key ends generation too; texts that are no marker do not."""
    path = str(tmp_path / "chatml.gguf")
    write_model(path, {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>", 3: "<fim_pad>",
                       4: "<|eom_id|>", 7: "<|im_end|>x"},
                types={2: NORMAL}, keys={"eos_token_id": 0, "eot_token_id": 9,
                                         "fim_rep_token_id": 6})
    model = read_gguf(path)
    assert model.config.eos_token_ids == [0, 9, 2, 3, 4, 6]
    warned, = model.warnings
    assert "GGUF token 2 '<|im_end|>' ends generation" in warned


def test_llama_cpps_exceptions_and_fill_in_the_middle_texts():
    """Harmony's <|end|> closes a message, not the turn (so with <|return|> and <|call|> it
    is no end); </s> beside Gemma 4's <|tool_response>; FIM tokens found by text only where
    the file has no key for them, and a key's id out of the vocabulary ignored."""
    harmony = ["a", "<|end|>", "<|return|>", "<|call|>", "<|endoftext|>"]
    assert end_of_generation(harmony, {}, []) == [2, 3, 4]
    assert end_of_generation(harmony[:3], {}, []) == [1, 2]  # no <|call|>: <|end|> ends
    assert end_of_generation(["</s>", "<|tool_response>", "b"], {}, []) == [1]
    assert end_of_generation(["</s>", "b"], {}, [0]) == []  # the eos: a key, not added
    fim = ["a", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<PAD>"]
    assert end_of_generation(fim, {}, []) == [1, 2, 3, 4]
    pad_key = {"tokenizer.ggml.fim_pad_token_id": 4}
    assert end_of_generation(fim, pad_key, []) == [2, 3, 4]  # <|fim_pad|>: not the pad
    assert end_of_generation(fim, {"tokenizer.ggml.fim_pad_token_id": 99}, []) == [2, 3]
