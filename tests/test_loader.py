"""load_model on HF safetensors directories of each family, dummy weights, rope and tokenizer.

Each family is a tiny random transformers model saved with save_pretrained (also sharded, so
the index file is read); our logits must match transformers' on the same input at every
position. Biases and norm weights are randomised too: at their default init (zeros, ones) a
wrong mapping of them would go unnoticed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from aiollm.model import RopeConfig, load_model, load_tokenizer
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool, ReqToTokenTable
from aiollm.model.rope import cos_sin_cache

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

FAMILIES = {
    "llama3-rope-untied": LlamaConfig(**TINY, rope_parameters=LLAMA3_ROPE,
                                      tie_word_embeddings=False),
    "llama-linear-rope-bias-tied": LlamaConfig(
        **TINY, attention_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.0}),
    "mistral": MistralConfig(**TINY, sliding_window=None, tie_word_embeddings=False),
    "qwen2-qkv-bias-tied": Qwen2Config(**TINY, tie_word_embeddings=True),
    "qwen3-qk-norm": Qwen3Config(**{**TINY, "num_key_value_heads": 1}, head_dim=32,
                                 tie_word_embeddings=False),
}
YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 64}
PROMPTS = [[3, 17, 99, 4, 150, 23, 7], [42, 8, 1, 77, 159, 0, 12, 5, 66, 31, 2]]


def save_random_hf_model(config, path: str, **save_kwargs):
    """A random model of `config` saved in `path`. The model gets a copy of the config
    (transformers keeps the object it is given): a test that edits the model's config to
    write a damaged file must not change the module-level configs later tests build from."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, **save_kwargs)
    return model


def all_position_logits(loaded, prompts: list[list[int]]) -> torch.Tensor:
    """Our logits at every token of `prompts`, prefilled together in one extend step."""
    cfg = loaded.config
    longest, total = max(len(p) for p in prompts), sum(len(p) for p in prompts)
    pool = KVPool(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, max(64, total), loaded.dtype,
                  "cpu")
    table = ReqToTokenTable(4, max(32, longest), "cpu")
    rows = torch.tensor([table.alloc_row() for _ in prompts])
    lens = torch.tensor([len(p) for p in prompts])
    slots = pool.alloc(int(lens.sum()))
    pos = torch.cat([torch.arange(n) for n in lens.tolist()])
    table.write_cpu(torch.repeat_interleave(rows, lens), pos, slots)
    ids = torch.tensor([t for p in prompts for t in p])
    batch = ForwardBatch.build(ids, slots, rows, torch.zeros_like(lens), lens, table.table, pool,
                               torch.device("cpu"))
    batch.logits_index = torch.arange(batch.num_tokens)
    return loaded.model(batch)


def test_editing_a_saved_models_config_leaves_the_shared_config_alone(tmp_path):
    """Tests write damaged files by editing the saved model's config (its model_type, an
    expert width): that config was the module-level one, so every later test in the process
    built its model from the edit (test_loader_errors' Qwen2-MoE GGUF test failed after
    test_moe_shape_errors in one process, as a qwen3_moe file)."""
    config = FAMILIES["qwen3-qk-norm"]
    hf = save_random_hf_model(config, str(tmp_path))
    hf.config.model_type = "llama"
    assert config.model_type == "qwen3"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
def test_hf_directory_matches_transformers(tmp_path, family, sharded):
    config = FAMILIES[family]
    shard_kwargs = {"max_shard_size": "40KB"} if sharded else {}
    hf = save_random_hf_model(config, str(tmp_path), **shard_kwargs)
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == sharded

    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert cfg.architecture == config.model_type
    assert cfg.tie_word_embeddings == config.tie_word_embeddings
    assert cfg.qk_norm == (family.startswith("qwen3"))
    assert cfg.qkv_bias == (family.startswith("qwen2") or "bias" in family)

    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_hf_directory_reads_model_safetensors_only(tmp_path):
    """Beside model.safetensors a directory may hold other safetensors files: Mistral's own
    consolidated.safetensors, a LoRA adapter. transformers reads model.safetensors alone
    (without an index), and so do we; they were read and refused as tensors with no place."""
    from safetensors.torch import save_file

    hf = save_random_hf_model(FAMILIES["mistral"], str(tmp_path))
    save_file({"tok_embeddings.weight": torch.zeros(160, 64)},
              str(tmp_path / "consolidated.safetensors"))
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64)},
              str(tmp_path / "adapter_model.safetensors"))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tensor_name(name: str, layer_names: dict[str, str]) -> str:
    """llama.cpp's name of transformers' parameter `name` ("model.layers.3.mlp.down_proj.weight"
    -> "blk.3.ffn_down.weight"), its layers' modules named by `layer_names`."""
    if name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        module, suffix = rest.rsplit(".", 1)
        return f"blk.{layer}.{layer_names[module]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}[name]


def test_hf_directory_with_both_model_safetensors_and_an_index_reads_model_safetensors(
        tmp_path):
    """transformers' from_pretrained (its _get_resolved_checkpoint_files) takes
    model.safetensors when that file is there, and the index only without it; we read the
    index first, so the two served different weights from one directory."""
    import shutil

    save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path),
                         max_shard_size="40KB")
    torch.manual_seed(1)  # other weights in model.safetensors
    other = AutoModelForCausalLM.from_config(FAMILIES["qwen2-qkv-bias-tied"])
    other.save_pretrained(str(tmp_path / "other"))
    shutil.copy(tmp_path / "other" / "model.safetensors", tmp_path / "model.safetensors")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
        assert (ref - torch.cat([other(torch.tensor([p])).logits[0] for p in PROMPTS])
                ).abs().max() < 1e-4
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


def llama_cpp_rope_factors(config) -> list[float]:
    """llama.cpp's converter turns llama3 rope scaling into per-frequency divisors."""
    r = config.rope_parameters
    dim = config.hidden_size // config.num_attention_heads
    low_wavelen = r["original_max_position_embeddings"] / r["low_freq_factor"]
    high_wavelen = r["original_max_position_embeddings"] / r["high_freq_factor"]
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * r["rope_theta"] ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(r["factor"])
        else:
            smooth = (r["original_max_position_embeddings"] / wavelen - r["low_freq_factor"]) / (
                r["high_freq_factor"] - r["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / r["factor"] + smooth))
    return factors


def gguf_writer(c, path: str, arch: str):
    """A gguf.GGUFWriter for `path` with the attention and shape metadata of the HF config
    `c` that every architecture's file carries, as llama.cpp's converter writes them."""
    import gguf

    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    return w


def add_random_llama_tensors(w, c, std: float) -> None:
    """Random float32 tensors of the Llama config `c`, by llama.cpp's names, into the
    gguf.GGUFWriter `w`: norms all ones, matrices normal(0, std) drawn in file order from
    seed 0; no output.weight (the LM head is the embedding, as in a tied file)."""
    import numpy as np

    h, m, kv = c.hidden_size, c.intermediate_size, (
        c.hidden_size // c.num_attention_heads * c.num_key_value_heads)
    shapes = {"token_embd.weight": (c.vocab_size, h), "output_norm.weight": (h,)}
    for i in range(c.num_hidden_layers):
        shapes |= {f"blk.{i}.attn_norm.weight": (h,), f"blk.{i}.ffn_norm.weight": (h,),
                   f"blk.{i}.attn_q.weight": (h, h), f"blk.{i}.attn_k.weight": (kv, h),
                   f"blk.{i}.attn_v.weight": (kv, h), f"blk.{i}.attn_output.weight": (h, h),
                   f"blk.{i}.ffn_gate.weight": (m, h), f"blk.{i}.ffn_up.weight": (m, h),
                   f"blk.{i}.ffn_down.weight": (h, m)}
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        t = np.ones(shape) if len(shape) == 1 else rng.normal(0, std, shape)
        w.add_tensor(name, t.astype(np.float32))


def finish_gguf(w) -> None:
    """Write a gguf.GGUFWriter's header, metadata and tensors to its file, and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf(hf, path: str, raw_types: dict | None = None, rope_scaling: str | None = None,
               rope_dims: int | None = None, metadata: dict | None = None) -> None:
    """Write an HF model as llama.cpp would (fp16 tensors; llama q/k rows permuted); a tensor
    named in raw_types (GGUF name -> GGMLQuantizationType) is written as zero bytes of it,
    rope_scaling as the file's rope.scaling.type (factor 4), rope_dims as its
    rope.dimension_count (the rotated part of each head), metadata's keys as strings (a str
    value), arrays (a list: one value per layer) or float32 numbers, each in place of the
    key gguf_writer wrote, if it did."""
    c = hf.config
    arch = c.model_type
    w = gguf_writer(c, path, arch)
    w.add_eos_token_id(7)
    for key, value in (metadata or {}).items():
        w.kv_data[0].pop(key, None)  # the writer warns of a key written twice
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            (w.add_string if isinstance(value, str) else w.add_float32)(key, value)
    if rope_dims is not None:
        w.add_rope_dimension_count(rope_dims)
    if rope_scaling is not None:
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling))
        w.add_rope_scaling_factor(4.0)
    if c.rope_parameters["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", torch.tensor(llama_cpp_rope_factors(c)).numpy())
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        gguf_name = gguf_tensor_name(name, GGUF_LAYER_NAMES)
        heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}.get(
            name.split(".")[-2])
        if arch == "llama" and heads:
            half = t.shape[0] // heads // 2
            t = t.reshape(heads, 2, half, *t.shape[1:]).transpose(1, 2).reshape(t.shape)
        if gguf_name in (raw_types or {}):
            import gguf

            block, size = gguf.GGML_QUANT_SIZES[raw_types[gguf_name]]
            raw = torch.zeros(t.shape[0], t.shape[1] // block * size, dtype=torch.uint8)
            w.add_tensor(gguf_name, raw.numpy(), raw_dtype=raw_types[gguf_name])
            continue
        # llama.cpp keeps 1-D tensors (norms, biases) in fp32
        w.add_tensor(gguf_name, t.numpy().astype("float16" if t.dim() == 2 else "float32"))
    finish_gguf(w)


@pytest.mark.parametrize("family", ["llama3-rope-untied", "qwen2-qkv-bias-tied", "qwen3-qk-norm"])
def test_gguf_file_matches_hf_model(tmp_path, family):
    hf = save_random_hf_model(FAMILIES[family], str(tmp_path / "hf"))
    with torch.no_grad():  # the GGUF holds fp16 matrices: give the reference the same numbers
        for p in hf.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    write_gguf(hf, str(tmp_path / "model.gguf"))

    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert (cfg.architecture, cfg.eos_token_ids) == (hf.config.model_type, [7])
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    assert (cfg.rope.freq_factors is not None) == family.startswith("llama3")
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    # A second load reads what the first derived (aiollm/model/derived_cache.py): the same model.
    again = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert again.config == cfg
    assert torch.equal(all_position_logits(again, PROMPTS), logits)


def test_load_format_names_what_the_model_path_is(tmp_path):
    """vLLM's load_format "safetensors" or "gguf" loads the model when it is what the path
    holds (aiollm refused both); the other one is a ValueError naming load_format, the path
    and what to give, before anything loads. "auto" reads either; "dummy" neither."""
    hf = save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path / "hf"))
    gguf_path = str(tmp_path / "model.gguf")
    write_gguf(hf, gguf_path)
    directory = str(tmp_path / "hf")
    ref = all_position_logits(load_model(directory, dtype=torch.float32, device="cpu"), PROMPTS)
    loaded = load_model(directory, dtype=torch.float32, device="cpu",
                        load_format="safetensors")
    assert torch.equal(all_position_logits(loaded, PROMPTS), ref)
    loaded = load_model(gguf_path, dtype=torch.float32, device="cpu", load_format="gguf")
    assert loaded.path == gguf_path
    for path, fmt, says in ((directory, "gguf", "a Hugging Face model directory"),
                            (gguf_path, "safetensors", "a GGUF file")):
        with pytest.raises(ValueError) as e:
            load_model(path, dtype=torch.float32, device="cpu", load_format=fmt)
        for text in (f"load_format {fmt}", path, says, "auto"):
            assert text in str(e.value), (text, str(e.value))
    with pytest.raises(ValueError, match="load_format must be one of"):
        load_model(directory, dtype=torch.float32, device="cpu", load_format="pt")


def test_gguf_tensor_type_without_dequantization_is_refused(tmp_path):
    """Q8_1 (and Q8_K, integer types) have no dequantization in the gguf package: refused
    when the file is read, naming the tensor and its type, before anything is loaded."""
    from gguf import GGMLQuantizationType

    hf = save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"),
               raw_types={"blk.1.ffn_up.weight": GGMLQuantizationType.Q8_1})
    with pytest.raises(ValueError, match="'blk.1.ffn_up.weight' has type Q8_1"):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


def test_gguf_rope_other_than_ours_is_refused(tmp_path):
    """llama.cpp's YaRN parameters are not transformers': a GGUF file with yarn scaling is
    refused rather than run with the HF defaults (and longrope has none)."""
    hf = save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path / "hf"))
    for kind in ("yarn", "longrope"):
        write_gguf(hf, str(tmp_path / f"{kind}.gguf"), rope_scaling=kind)
        with pytest.raises(ValueError, match=f"rope scaling '{kind}' is not supported"):
            load_model(str(tmp_path / f"{kind}.gguf"), dtype=torch.float32, device="cpu")
    write_gguf(hf, str(tmp_path / "linear.gguf"), rope_scaling="linear")
    loaded = load_model(str(tmp_path / "linear.gguf"), dtype=torch.float32, device="cpu")
    assert (loaded.config.rope.type, loaded.config.rope.factor) == ("linear", 4.0)
    # llama.cpp rotates only the first rope.dimension_count dimensions of each head
    write_gguf(hf, str(tmp_path / "partial.gguf"), rope_dims=8)
    with pytest.raises(ValueError, match="rope.dimension_count 8 .*head_dim 16"):
        load_model(str(tmp_path / "partial.gguf"), dtype=torch.float32, device="cpu")
    write_gguf(hf, str(tmp_path / "full.gguf"), rope_dims=16)
    load_model(str(tmp_path / "full.gguf"), dtype=torch.float32, device="cpu")


def test_gguf_without_a_required_field_is_refused(tmp_path):
    """A GGUF file without a shape field every model file has (here embedding_length): a
    ValueError naming it, which aiollm serve reports in one line, not a TypeError traceback."""
    import gguf
    import numpy as np

    path = str(tmp_path / "partial.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(128)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    finish_gguf(w)
    with pytest.raises(ValueError, match="'llama.embedding_length'"):
        load_model(path, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("declared, cuda", [("float16", torch.float16),
                                             ("bfloat16", torch.bfloat16),
                                             ("float32", torch.bfloat16), (None, torch.bfloat16)])
def test_auto_dtype_keeps_a_half_checkpoint_in_half(tmp_path, declared, cuda):
    """--dtype auto: on a GPU, the checkpoint's own float16 / bfloat16 (vLLM's rule), bfloat16
    for float32 or none; float32 on the CPU whatever the checkpoint says."""
    from aiollm.model.hf_config import load_hf_config
    from aiollm.model.loader import auto_dtype

    config = LlamaConfig(**TINY)
    config.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        fields = json.load(f)
    fields.pop("torch_dtype", None)
    fields["dtype"] = declared
    with open(tmp_path / "config.json", "w") as f:
        json.dump(fields, f)
    mc = load_hf_config(str(tmp_path))
    assert auto_dtype(mc, torch.device("cuda")) == cuda
    assert auto_dtype(mc, torch.device("cpu")) == torch.float32
    loaded = load_model(str(tmp_path), dtype=None, device="cpu", load_format="dummy")
    assert loaded.dtype == torch.float32


def test_dummy_weights_from_config_only(tmp_path):
    config = FAMILIES["qwen3-qk-norm"]
    config.save_pretrained(tmp_path)
    assert os.listdir(tmp_path) == ["config.json"]
    loaded = load_model(str(tmp_path), dtype=torch.bfloat16, device="cpu", load_format="dummy",
                        max_model_len=128)
    params = dict(loaded.model.named_parameters())
    q, kv = 4 * 32, 1 * 32
    assert params["layers.1.self_attn.qkv_proj.weight"].shape == (q + 2 * kv, 64)
    assert params["layers.0.mlp.gate_up_proj.weight"].shape == (2 * 96, 64)
    assert params["lm_head.weight"].shape == (160, 64)
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    assert loaded.model.cos_sin_cache.dtype == torch.float32
    assert loaded.model.cos_sin_cache.shape == (128, 32) and loaded.max_model_len == 128
    assert loaded.weight_bytes == 2 * loaded.config.num_params()
    logits = all_position_logits(loaded, PROMPTS)
    assert logits.shape == (18, 160) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and logits.std() > 0


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
    {**LLAMA3_ROPE, "rope_theta": 500000.0},
    # dynamic NTK changes the frequencies only past max_position_embeddings, where we never go
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    YARN_ROPE,
    # DeepSeek-style: attention factor from mscale / mscale_all_dim, range not truncated
    {**YARN_ROPE, "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707, "beta_fast": 16,
     "beta_slow": 2, "truncate": False},
    {**YARN_ROPE, "attention_factor": 0.5},
], ids=["default", "linear", "llama3", "dynamic", "yarn", "yarn-mscale", "yarn-attn-factor"])
def test_rope_cache_matches_transformers(rope_parameters):
    from aiollm.model.hf_config import config_from_hf
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf_config = LlamaConfig(hidden_size=1024, num_attention_heads=8,
                            max_position_embeddings=4096, rope_parameters=dict(rope_parameters))
    cfg = config_from_hf(hf_config)
    cache = cos_sin_cache(cfg.rope, cfg.head_dim, 4096)
    positions = torch.arange(4096)[None]
    cos, sin = LlamaRotaryEmbedding(hf_config)(torch.zeros(1, dtype=torch.float32), positions)
    half = cfg.head_dim // 2
    assert torch.equal(cache[:, :half], cos[0, :, :half])
    assert torch.equal(cache[:, half:], sin[0, :, :half])


def test_longrope_cache_is_transformers_short_set_then_long_set():
    """LongRoPE, which transformers runs on any model type: below
    original_max_position_embeddings the rows transformers computes for a sequence within it
    (short factors), from it on those for a longer one (long factors), both with the
    attention factor of max_position_embeddings / original (rope._longrope_rows); then,
    for prompts longer than the original context, the long set below it."""
    from aiollm.model.hf_config import config_from_hf
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = {"rope_type": "longrope", "rope_theta": 10000.0,
            "original_max_position_embeddings": 1024,
            "short_factor": [1.0 + 0.05 * i for i in range(64)],
            "long_factor": [1.0 + 0.5 * i for i in range(64)]}
    hf_config = LlamaConfig(hidden_size=1024, num_attention_heads=8,
                            max_position_embeddings=4096, rope_parameters=rope)
    cfg = config_from_hf(hf_config)
    cache = cos_sin_cache(cfg.rope, cfg.head_dim, 4096)
    embed = LlamaRotaryEmbedding(hf_config)
    x = torch.zeros(1, dtype=torch.float32)
    short_cos, short_sin = embed(x, torch.arange(1024)[None])
    long_cos, long_sin = embed(x, torch.arange(4096)[None])
    assert torch.equal(cache[:1024, :64], short_cos[0, :, :64])
    assert torch.equal(cache[:1024, 64:], short_sin[0, :, :64])
    assert torch.equal(cache[1024:4096, :64], long_cos[0, 1024:, :64])
    assert torch.equal(cache[1024:4096, 64:], long_sin[0, 1024:, :64])
    # then those of prompts longer than 1024 at their first 1024 positions: the long set
    assert torch.equal(cache[4096:, :64], long_cos[0, :1024, :64])
    assert torch.equal(cache[4096:, 64:], long_sin[0, :1024, :64])


@pytest.mark.parametrize("config", [
    Qwen2Config(**TINY, rope_parameters=dict(YARN_ROPE)),
    Qwen3Config(**TINY, head_dim=32, rope_parameters={**YARN_ROPE, "factor": 8.0}),
    LlamaConfig(**TINY, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                         "factor": 4.0}),
], ids=["qwen2-yarn", "qwen3-yarn", "llama-dynamic"])
def test_scaled_rope_models_match_transformers(tmp_path, config):
    hf = save_random_hf_model(config, str(tmp_path))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.rope.type == config.rope_parameters["rope_type"]
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_yarn_extends_the_context_to_original_times_factor(tmp_path):
    """YaRN scales a model to factor x its original context (Qwen2.5's docs: add
    rope_scaling yarn, factor 4, original_max_position_embeddings 32768 to reach 131,072
    tokens), while max_position_embeddings keeps the original. vLLM derives the context as
    original_max_position_embeddings x factor, and so do we: the table's frequencies do not
    depend on the position, and transformers does not cap positions either. Logits past
    max_position_embeddings match transformers'; the context stopped there before."""
    config = Qwen2Config(**{**TINY, "max_position_embeddings": 64},
                         rope_parameters=dict(YARN_ROPE))
    hf = save_random_hf_model(config, str(tmp_path))
    with pytest.raises(ValueError, match="max_model_len 257 exceeds the model's context of 256"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", max_model_len=257)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.max_position == loaded.max_model_len == 256
    assert loaded.model.cos_sin_cache.shape[0] == 256
    torch.manual_seed(2)
    prompts = [torch.randint(0, 160, (200,)).tolist(), PROMPTS[0]]
    logits = all_position_logits(loaded, prompts)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_yarn_context_through_engine_max_model_len(tmp_path):
    """EngineConfig.max_model_len (--max-model-len) up to original x factor is accepted, and
    greedy generation past max_position_embeddings gives transformers' ids; one more is
    refused at start-up."""
    from test_moe_model import hf_greedy

    from aiollm import Engine, SamplingParams

    config = Qwen2Config(**{**TINY, "max_position_embeddings": 64},
                         rope_parameters=dict(YARN_ROPE))
    hf = save_random_hf_model(config, str(tmp_path))
    load_tokenizer(None).save_pretrained(str(tmp_path))  # any tokenizer: the prompt is ids
    torch.manual_seed(3)
    prompt = torch.randint(0, 160, (90,)).tolist()
    want = hf_greedy(hf, prompt, 10)

    async def generate(max_model_len: int) -> list[int]:
        params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
        async with Engine(str(tmp_path), max_model_len=max_model_len, kv_tokens=512) as engine:
            assert engine.max_model_len == max_model_len
            return (await engine.generate(prompt, params)).token_ids

    assert asyncio.run(generate(256)) == want
    with pytest.raises(ValueError, match="max_model_len 257 exceeds the model's context of 256"):
        asyncio.run(generate(257))


def test_gguf_freq_factors_divide_the_frequencies():
    base = cos_sin_cache(RopeConfig(theta=10000.0), 8, 16)
    scaled = cos_sin_cache(RopeConfig(theta=10000.0, freq_factors=(1.0, 1.0, 2.0, 8.0)), 8, 16)
    p = torch.arange(16, dtype=torch.float32)[:, None]
    inv = 1.0 / 10000.0 ** (torch.arange(0, 8, 2) / 8) / torch.tensor([1.0, 1.0, 2.0, 8.0])
    assert torch.allclose(scaled[:, :4], torch.cos(p * inv), atol=1e-6)
    assert torch.equal(scaled[:, :2], base[:, :2])


def test_bad_paths_and_lengths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="local files only"):
        load_model(str(tmp_path / "nope"), dtype=torch.float32, device="cpu")
    FAMILIES["mistral"].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", max_model_len=1000)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**cfg, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, f)
    with pytest.raises(ValueError, match="'gpt2' is not supported"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    # a model_type transformers does not know either: our message, not AutoConfig's
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**cfg, "model_type": "frobnicator"}, f)
    with pytest.raises(ValueError, match="'frobnicator' is not supported.*supported: llama"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_a_sliding_window_model_keeps_its_context(tmp_path):
    """A sliding-window model runs exact past its window (each layer attends to the window's
    keys only), so its context is max_position_embeddings' 256, not the window's 128 (which
    capped it before): a max_model_len past the window is taken, one past 256 refused naming
    256 and not the window."""
    MistralConfig(**TINY, sliding_window=128).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy",
                        max_model_len=200)
    assert loaded.max_model_len == 200 and loaded.config.sliding_window == 128
    assert [layer.self_attn.window for layer in loaded.model.layers] == [128, 128]
    with pytest.raises(ValueError, match=r"max_model_len 300 exceeds the model's context of "
                                         r"256: set max_model_len"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy",
                   max_model_len=300)
    # a window no context reaches runs the unwindowed kernels
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy",
                        max_model_len=128)
    assert [layer.self_attn.window for layer in loaded.model.layers] == [0, 0]


@pytest.mark.parametrize("config, field", [
    # transformers runs these MLPs with the exact (erf) GELU, or experts with the tanh one;
    # our kernels compute SiLU, and GELU's tanh approximation in dense MLPs only
    (LlamaConfig(**TINY, hidden_act="gelu"), "hidden_act 'gelu'"),
    (MixtralConfig(**TINY, num_local_experts=4, hidden_act="gelu_pytorch_tanh"),
     "hidden_act 'gelu_pytorch_tanh' is not supported .the experts' kernels compute SiLU"),
    (MixtralConfig(**TINY, num_local_experts=4, hidden_act="relu"), "hidden_act 'relu'"),
    # a checkpoint of another family relabelled (transformers would run a Gemma checkpoint
    # as the Llama its model_type names, without Gemma's numerics), or another head on a
    # Llama body
    (LlamaConfig(**TINY, architectures=["GemmaForCausalLM"]),
     r"architectures \['GemmaForCausalLM'\] is not supported with model_type 'llama'"),
    (Qwen2Config(**TINY, architectures=["Qwen2ForRewardModel"]), "Qwen2ForRewardModel"),
    (LlamaConfig(**TINY, quantization_config={"quant_method": "fp8"}), "quant_method 'fp8'"),
    # mlx-lm's quantized checkpoints say so in `quantization`, which transformers leaves
    # unread: their packed uint32 weights were refused as of the wrong shape, blaming the
    # config's sizes
    (LlamaConfig(**TINY, quantization={"group_size": 64, "bits": 4}),
     r"quantization \{'bits': 4, 'group_size': 64\}: an MLX-quantized checkpoint"),
    # transformers fails on partial rotary with a scaled rope (frequencies for part of the
    # head, applied to all of it); we rotated the whole head as if it were not there
    (LlamaConfig(**TINY, rope_parameters={**YARN_ROPE, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor 0.5 with rope scaling 'yarn'"),
    (LlamaConfig(**TINY, rope_parameters={**LLAMA3_ROPE, "partial_rotary_factor": 0.25}),
     "partial_rotary_factor 0.25 with rope scaling 'llama3'"),
    (Qwen2Config(**TINY, partial_rotary_factor=0.5,
                 rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
     "partial_rotary_factor 0.5 with rope scaling 'linear'"),
    # Phi-3 rotates int(head_dim x partial_rotary_factor) dimensions: 16 x 0.5625 = 9 is odd
    (Phi3Config(**TINY, partial_rotary_factor=0.5625), "partial_rotary_factor 0.5625"),
    # transformers warns of a longrope factor list of the wrong length outside Phi-3, then
    # fails multiplying it into the frequencies
    (LlamaConfig(**TINY, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4,
                                          "original_max_position_embeddings": 64,
                                          "short_factor": [1.0] * 3, "long_factor": [2.0] * 8}),
     "short_factor must be a list of 8 positive numbers"),
], ids=["llama-gelu", "mixtral-gelu-tanh", "mixtral-relu", "gemma-class", "reward-model",
        "fp8-quantized", "mlx-quantized", "partial-yarn", "partial-llama3", "partial-linear",
        "phi3-odd-rotary", "longrope-factors-length"])
def test_config_fields_that_change_the_math_are_refused(tmp_path, config, field):
    """A config field we do not implement is refused at load, naming the field and value,
    instead of running a model whose outputs differ from transformers'."""
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_partial_rotary_factor_with_the_default_rope_matches_transformers(tmp_path):
    """The default rotary of these model types rotates the whole head in transformers,
    whatever partial_rotary_factor says: such a config is not refused, and runs as there."""
    config = Qwen2Config(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                  "partial_rotary_factor": 0.5})
    hf = save_random_hf_model(config, str(tmp_path))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("classes", [["LLaMAForCausalLM"], None, [], "LlamaForCausalLM"],
                         ids=str)
def test_llama_configs_transformers_loads_by_model_type_load(tmp_path, classes):
    """The architectures check refuses other heads and families, not the old class name of
    the first converted Llama checkpoints (LLaMAForCausalLM, still in their fine-tunes'
    configs) nor a config that names no class: transformers loads both by model_type. Nor
    a class named by a string, not a list, which transformers takes too: it was refused as
    architectures ['L', 'l', 'a', ...]."""
    config = LlamaConfig(**TINY, architectures=classes)
    config.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    assert loaded.config.architecture == "llama"


def test_default_tokenizer_has_smollm2_chat_template(tmp_path):
    tok = load_tokenizer(None)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    # The same tokenizer saved as an HF directory loads back through the other path.
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    assert again.encode("Hello world") == tok.encode("Hello world")


@pytest.mark.parametrize("held", ["both-differ", "both-equal", "lm_head-only"])
def test_tied_config_with_an_lm_head_in_the_checkpoint_loads_as_transformers_does(tmp_path,
                                                                                  held):
    """A config.json that ties the word embeddings over a checkpoint holding lm_head.weight
    (a fine-tune that untied them, saved under the base model's config): transformers keeps
    an lm_head that differs from the embedding apart (warning that the config is wrong),
    ties an equal one, and takes an lm_head alone for the embedding too. We ignored every
    lm_head.weight of a tied config: the first served other logits, the last was refused
    as missing model.embed_tokens.weight."""
    from safetensors.torch import load_file, save_file

    save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path))
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    embed = tensors["model.embed_tokens.weight"]
    tensors["lm_head.weight"] = embed.clone() if held == "both-equal" else torch.randn_like(embed)
    if held == "lm_head-only":
        del tensors["model.embed_tokens.weight"]
    save_file(tensors, path, metadata={"format": "pt"})

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.tie_word_embeddings == (held != "both-differ")
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    logits = all_position_logits(loaded, PROMPTS)
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_a_llama_config_with_a_sliding_window_keeps_its_context(tmp_path):
    """transformers' Llama attends over the whole sequence whatever sliding_window a
    config.json carries (left there by a 'llamafied' Qwen2 or Mistral conversion, e.g.
    DeepSeek-R1-Distill-Qwen's 4096 beside 131072 positions): its context was capped at
    the window, and a longer prompt refused, although transformers runs it."""
    config = LlamaConfig(**TINY, sliding_window=64)
    hf = save_random_hf_model(config, str(tmp_path))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert (loaded.config.max_position, loaded.config.sliding_window) == (256, None)
    torch.manual_seed(4)
    prompts = [torch.randint(0, 160, (100,)).tolist()]
    with torch.no_grad():
        ref = hf(torch.tensor(prompts)).logits[0]
    assert (all_position_logits(loaded, prompts) - ref).abs().max() < 1e-4
