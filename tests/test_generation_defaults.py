"""A model directory's generation_config.json gives the sampling defaults of requests that
leave a field out (vLLM's --generation-config auto), on the OpenAI API, LightLLM's /generate
and the Engine's calls without params; a field the request sets keeps its value; vllm turns
them off; a bad value fails the load naming the file and the key. Tiny random weights of a
Qwen2 shape: their next-token distribution is near uniform over 49k tokens, so that one seed
sampled with and without top_k 20 gives other tokens."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from live_server import LiveServer, http

from aiollm.cli import main
from aiollm.model import load_tokenizer
from aiollm.model.generation_defaults import log_defaults, sampling_defaults
from aiollm.sampling_params import SamplingParams

CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 49152,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
}
# Qwen2.5-Instruct's, with a length (transformers' max_new_tokens) and its token ids
GENERATION = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.7,
              "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_new_tokens": 5}
FILE_VALUES = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}
PROMPT = {"prompt": "The capital of France is", "seed": 7, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("generation-defaults")
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "generation_config.json").write_text(json.dumps(GENERATION))
    load_tokenizer(None).save_pretrained(str(d))
    return d


def _serve(model_dir, mode: str) -> LiveServer:
    return LiveServer(model=str(model_dir), load_format="dummy", max_model_len=256,
                      kv_tokens=1024, generation_config=mode).start()


@pytest.fixture(scope="module")
def auto(model_dir):
    srv = _serve(model_dir, "auto")
    yield srv
    srv.close()


def _complete(server, body: dict) -> tuple[str, int]:
    status, _, raw = http(server, "POST", "/v1/completions", json=body)
    assert status == 200, raw
    out = json.loads(raw)
    return out["choices"][0]["text"], out["usage"]["completion_tokens"]


def _generate(server, parameters: dict) -> tuple[str, int]:
    status, _, raw = http(server, "POST", "/generate",
                          json={"inputs": PROMPT["prompt"], "parameters": parameters})
    assert status == 200, raw
    out = json.loads(raw)
    return out["generated_text"][0], out["count_output_tokens"]


def test_the_files_keys_are_read_by_sampling_params_names(model_dir, tmp_path):
    assert sampling_defaults("auto", str(model_dir)) == {
        **FILE_VALUES, "max_tokens": 5, "do_sample": True}
    assert sampling_defaults("vllm", str(model_dir)) == {}
    assert sampling_defaults("auto", "") == {}  # the default GGUF model: none
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 0, "min_p": None}))
    assert sampling_defaults(str(tmp_path), str(model_dir)) == {"top_k": -1}  # 0: off


@pytest.mark.parametrize("key, value, message", [
    ("top_p", 1.5, "top_p must be in"), ("temperature", "hot", "temperature "),
    ("max_new_tokens", 0, "max_new_tokens must be an integer >= 1"), ("do_sample", "yes", "do_sample must be"),
])
def test_a_bad_value_names_the_file_and_the_key(tmp_path, key, value, message):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"temperature": 0.6, key: value}))
    with pytest.raises(ValueError) as e:
        sampling_defaults("auto", str(tmp_path))
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value) and repr(value) in str(e.value)


def test_the_flag_refuses_a_folder_without_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--generation-config", str(tmp_path)])
    assert e.value.code == 2
    assert "argument --generation-config: generation_config must be" in capsys.readouterr().err


def test_fields_left_out_take_the_models_defaults(auto):
    # max_tokens null asks for the default length, as in chat; left out it is 16 in
    # /v1/completions, OpenAI's and vLLM's default there (generation configs leave it)
    assert _complete(auto, PROMPT)[1] == 16
    left_out = _complete(auto, {**PROMPT, "max_tokens": None})
    assert left_out[1] == 5  # max_new_tokens
    assert left_out == _complete(auto, {**PROMPT, **FILE_VALUES, "max_tokens": 5})
    assert left_out != _complete(auto, {**PROMPT, **NEUTRAL, "max_tokens": 5})
    chat = {"messages": [{"role": "user", "content": "Hi"}], "seed": 7, "ignore_eos": True}
    status, _, raw = http(auto, "POST", "/v1/chat/completions", json=chat)
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 5, raw


def test_fields_the_request_sets_win(auto):
    assert _complete(auto, {**PROMPT, "max_tokens": 3})[1] == 3
    greedy = _complete(auto, {**PROMPT, "temperature": 0})
    # greedy whatever the seed, and the defaults' top_k and top_p change nothing of it
    assert greedy == _complete(auto, {**PROMPT, "seed": 8, "temperature": 0, "top_k": -1,
                                      "top_p": 1.0})


def test_generate_takes_the_defaults_do_sample_too(auto):
    """/generate takes the sampling fields LightLLM reads from the file, do_sample too, but
    not its length: LightLLM's max_new_tokens left out is 16 whatever the file says."""
    left_out = _generate(auto, {"seed": 7, "ignore_eos": True})
    assert left_out[1] == 16
    explicit = {"seed": 7, "ignore_eos": True, "do_sample": True, "max_new_tokens": 16,
                **FILE_VALUES}
    assert left_out == _generate(auto, explicit)
    assert left_out != _generate(auto, {**explicit, **NEUTRAL})
    greedy = _generate(auto, {"do_sample": False, "ignore_eos": True, "seed": 7})
    assert greedy == _generate(auto, {"do_sample": False, "ignore_eos": True, "seed": 8})


def test_the_engine_calls_without_params_take_them(auto):
    engine = auto.engine
    assert engine.default_params() == SamplingParams(**FILE_VALUES, max_tokens=5)
    outs = asyncio.run_coroutine_threadsafe(
        engine.generate_batch(["Hi", "Hello"], progress=False), auto.loop).result(30)
    # 5 tokens (SamplingParams' default is 16), unless an end-of-text token came first
    assert all(o.completion_tokens == 5 or o.finish_reason == "stop" for o in outs), outs


def test_start_up_says_which_defaults_it_takes(model_dir, caplog):
    caplog.set_level(logging.INFO, "aiollm.model.generation_defaults")
    log_defaults(sampling_defaults("auto", str(model_dir)), "auto")
    assert ("from generation_config.json: temperature=0.7, top_p=0.8, top_k=20, "
            "repetition_penalty=1.05, max_new_tokens=5, do_sample=True") in caplog.text


def test_vllm_mode_leaves_them_out(model_dir, caplog):
    caplog.set_level(logging.INFO, "aiollm.model.generation_defaults")
    srv = _serve(model_dir, "vllm")
    try:
        assert "none from a generation config (--generation-config vllm)" in caplog.text
        assert srv.engine.default_params() == SamplingParams()
        left_out = _complete(srv, {**PROMPT, "max_tokens": 5})
        assert left_out == _complete(srv, {**PROMPT, **NEUTRAL, "max_tokens": 5})
        # LightLLM's default: greedy, 16 tokens
        greedy = _generate(srv, {"ignore_eos": True, "seed": 7})
        assert greedy[1] == 16
        assert greedy == _generate(srv, {"ignore_eos": True, "seed": 8})
    finally:
        srv.close()


def test_a_length_past_the_context_is_the_rest_of_the_context(tmp_path):
    """max_new_tokens 100000 (past a 64-token context) made every request that left the
    length out a 400 naming max_tokens, a field it never sent. /generate reads no length
    from the file (LightLLM's 16)."""
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 100000}))
    load_tokenizer(None).save_pretrained(str(tmp_path))
    srv = LiveServer(model=str(tmp_path), load_format="dummy", max_model_len=64,
                     kv_tokens=256).start()
    try:
        status, _, raw = http(srv, "POST", "/generate", json={
            "inputs": PROMPT["prompt"], "parameters": {"ignore_eos": True}})
        assert status == 200, raw
        out = json.loads(raw)
        assert out["count_output_tokens"] == 16, out
        text, tokens = _complete(srv, {**PROMPT, "max_tokens": None})
        assert tokens == 64 - out["prompt_tokens"]
        # the engine's calls without params, as vLLM's LLM caps an output at the context
        # (InvalidRequest naming max_tokens, a field never given, before)
        engine, ids = srv.engine, load_tokenizer(None).encode(PROMPT["prompt"])
        prompts = [PROMPT["prompt"], ids, {"prompt_token_ids": ids}]
        outs = asyncio.run_coroutine_threadsafe(
            engine.generate_batch(prompts, progress=False), srv.loop).result(30)
        outs.append(asyncio.run_coroutine_threadsafe(engine.generate(ids), srv.loop).result(30))
        assert all(len(ids) + o.completion_tokens == 64 or o.finish_reason == "stop"
                   for o in outs), outs

        async def stream():
            return [d async for d in engine.stream(PROMPT["prompt"])]
        assert asyncio.run_coroutine_threadsafe(stream(), srv.loop).result(30)
    finally:
        srv.close()


def test_the_python_llm_takes_them_as_vllms_does(model_dir):
    from aiollm import LLM

    with LLM(str(model_dir), load_format="dummy", max_model_len=256, kv_tokens=1024) as llm:
        assert llm.get_default_sampling_params() == SamplingParams(**FILE_VALUES, max_tokens=5)
        [out] = llm.generate(["Hi"], progress=False)
        # 5 tokens (SamplingParams' default is 16), unless an end-of-text token came first
        assert out.completion_tokens == 5 or out.finish_reason == "stop"
