"""The token ids generation ends at, as vLLM picks them: the tokenizer's eos and the
eos_token_id of the one generation config it reads: the model directory's
generation_config.json (else its config.json) under --generation-config auto or vllm, the
folder's under --generation-config PATH. aiollm read the model's own under PATH too, and
added config.json's eos ids to those of a generation_config.json. A GGUF file keeps its
vocabulary's end-of-generation ids (llama.cpp's) beside a folder's."""

from __future__ import annotations

import asyncio
import json

import pytest

from aiollm import Engine, SamplingParams
from aiollm.model import load_tokenizer

TOKENIZER_EOS = 2  # the default tokenizer's <|im_end|>
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "eos_token_id": 7,
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(model directory: config.json eos 7, generation_config.json eos [9, 0]; a folder
    whose generation_config.json gives eos 5 alone, as an int)."""
    model = tmp_path_factory.mktemp("model")
    (model / "config.json").write_text(json.dumps(CONFIG))
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 0]}))
    load_tokenizer(None).save_pretrained(str(model))
    folder = tmp_path_factory.mktemp("folder")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 5}))
    return str(model), str(folder)


def _engine(model: str | None, mode: str) -> Engine:
    return Engine(model, load_format="dummy" if model else "auto", generation_config=mode,
                  max_model_len=256, kv_tokens=512)


def _ends(model: str | None, mode: str, forced: tuple[int, ...] = ()):
    """(the engine's eos ids, (finish_reason, stop_reason, tokens) of a greedy request for
    each token of `forced`, which a logit bias makes the model pick)."""
    async def go():
        async with _engine(model, mode) as engine:
            outs = [await engine.generate([5, 6, 7], SamplingParams(
                max_tokens=2, temperature=0, logit_bias={token: 100.0})) for token in forced]
            return (sorted(engine.eos_ids.tolist()),
                    [(o.finish_reason, o.stop_reason, o.token_ids) for o in outs])
    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["auto", "vllm"])
def test_the_models_generation_config_gives_its_eos_ids(dirs, mode):
    """config.json's eos (7) is not one of them: vLLM reads config.json only without a
    generation_config.json."""
    assert _ends(dirs[0], mode)[0] == sorted({TOKENIZER_EOS, 9, 0})


def test_a_folders_generation_config_gives_them_in_place_of_the_models(dirs):
    eos, (five, nine) = _ends(dirs[0], dirs[1], forced=(5, 9))
    assert eos == [TOKENIZER_EOS, 5]
    assert five == ("stop", 5, [5])  # a stop id beside the tokenizer's eos, as in vLLM
    assert nine == ("length", None, [9, 9])  # the model's own: not read


def test_a_gguf_model_keeps_its_end_of_generation_ids_beside_a_folders(dirs):
    """The default model (SmolLM2's GGUF file): eos <|im_end|>, and <|endoftext|> and
    <reponame> by their text (gguf_eog.py)."""
    assert _ends(None, dirs[1])[0] == [0, 2, 4, 5]


def test_a_folders_eos_token_id_that_is_no_id_is_refused_naming_the_file(dirs, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ["</s>"]}))
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id must be a "
                                         r"token id or a list of them, got \['</s>'\]"):
        _ends(dirs[0], str(tmp_path))


def test_end_ids_outside_the_vocabulary_are_dropped_with_a_warning(dirs, tmp_path, caplog):
    """A generation config's eos id past the model's vocabulary (or negative) can never be
    sampled; it was kept, and the first request with min_tokens (which bans the end ids)
    failed its step indexing the logits with it. Dropped, and named in a warning (llama.cpp
    drops a GGUF file's special token id out of its vocabulary likewise)."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 49152,
                                                                                   -1]}))

    async def go():
        async with _engine(dirs[0], str(tmp_path)) as engine:
            out = await engine.generate([5, 6, 7], SamplingParams(
                max_tokens=3, min_tokens=2, temperature=0, logit_bias={5: 100.0}))
            return engine.eos_ids.tolist(), out

    with caplog.at_level("WARNING", logger="aiollm.engine.loading"):
        eos, out = asyncio.run(go())
    assert eos == [TOKENIZER_EOS, 5]
    assert (out.finish_reason, out.stop_reason, len(out.token_ids)) == ("stop", 5, 3)
    assert "[-1, 49152]" in caplog.text and "vocabulary of 49152" in caplog.text
