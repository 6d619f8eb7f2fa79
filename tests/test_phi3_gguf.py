"""llama.cpp's phi3 GGUF files (test_phi3_model's tiny Phi-3s as its converter writes them)
against transformers: fused attn_qkv and ffn_up, the partial rotary as rope.dimension_count,
LongRoPE's factor tensors, the sliding window, and the refusals of what no phi3 file holds.
"""

from __future__ import annotations

import pytest
import torch

from test_loader import (
    all_position_logits,
    finish_gguf,
    gguf_tensor_name,
    gguf_writer,
    save_random_hf_model,
)
from test_phi3_model import FAMILIES, PROMPTS, TINY, saved  # noqa: F401 (saved: a fixture)

from aiollm.model import load_model


def write_phi3_gguf(hf, path: str, window: int = 0, original: int | None = None) -> None:
    """`hf` as llama.cpp's converter writes a Phi-3 (float32 tensors, so that logits can be
    compared tightly): attn_qkv and ffn_up fused as in the checkpoint, the partial rotary as
    rope.dimension_count, LongRoPE's factors as tensors with the original context (or
    `original` in its place) and the attention factor in the metadata, the sliding window
    (0: none)."""
    import math

    import numpy as np

    c = hf.config
    rope = c.rope_parameters
    w = gguf_writer(c, path, "phi3")
    w.add_eos_token_id(7)
    w.add_rope_dimension_count(int(16 * rope.get("partial_rotary_factor", 1.0)))
    w.add_rope_scaling_orig_ctx_len(c.original_max_position_embeddings if original is None
                                    else original)
    w.add_sliding_window(window)
    if rope["rope_type"] == "longrope":
        scale = c.max_position_embeddings / c.original_max_position_embeddings
        w.add_rope_scaling_attn_factors(
            math.sqrt(1 + math.log(scale) / math.log(c.original_max_position_embeddings)))
        for kind in ("long", "short"):
            w.add_tensor(f"rope_factors_{kind}.weight",
                         np.array(rope[f"{kind}_factor"], dtype=np.float32))
    layer_names = {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
                   "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                   "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        w.add_tensor(gguf_tensor_name(name, layer_names), t.float().numpy())
    finish_gguf(w)


def test_gguf_file_matches_transformers(saved, tmp_path):
    """llama.cpp's phi3 file of each model gives transformers' logits, and a second load
    (from the derived cache) the same config."""
    name, _, hf = saved
    write_phi3_gguf(hf, str(tmp_path / "phi3.gguf"))
    loaded = load_model(str(tmp_path / "phi3.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.rope.type == ("longrope" if name.startswith("longrope") else "default")
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4
    again = load_model(str(tmp_path / "phi3.gguf"), dtype=torch.float32, device="cpu")
    assert again.config == loaded.config


def test_longrope_factor_tensors_outside_a_phi3_file_are_refused(tmp_path):
    """Only phi3 files' LongRoPE factors are read: another architecture's would be skipped
    as configuration tensors, silently running other frequencies."""
    import numpy as np

    from transformers import Qwen2Config

    hf = save_random_hf_model(Qwen2Config(**{**TINY, "pad_token_id": None}), str(tmp_path))
    w = gguf_writer(hf.config, str(tmp_path / "qwen2.gguf"), "qwen2")
    w.add_tensor("token_embd.weight", np.zeros((160, 64), dtype=np.float32))
    for kind in ("long", "short"):
        w.add_tensor(f"rope_factors_{kind}.weight", np.ones(8, dtype=np.float32))
    finish_gguf(w)
    with pytest.raises(ValueError, match="LongRoPE factors .* in phi3 files only, not 'qwen2'"):
        load_model(str(tmp_path / "qwen2.gguf"), dtype=torch.float32, device="cpu")


def test_gguf_sliding_window_slides_every_layer(tmp_path):
    """Phi-3-mini-4k's files carry its sliding_window (2047 of 4096): every layer slides, as
    in transformers' Phi-3 that the file was converted from (its logits past an 8-token
    window), the context kept; 0 (Phi-4's) is no window."""
    from transformers import Phi3Config

    hf = save_random_hf_model(Phi3Config(**TINY, sliding_window=8), str(tmp_path / "hf"))
    write_phi3_gguf(hf, str(tmp_path / "window.gguf"), window=8)
    loaded = load_model(str(tmp_path / "window.gguf"), dtype=torch.float32, device="cpu")
    assert (loaded.config.max_position, loaded.config.sliding_window) == (256, 8)
    prompts = [list(range(3, 40))]
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
    assert (all_position_logits(loaded, prompts) - ref).abs().max() < 1e-4
    write_phi3_gguf(hf, str(tmp_path / "none.gguf"), window=0)
    loaded = load_model(str(tmp_path / "none.gguf"), dtype=torch.float32, device="cpu")
    assert (loaded.config.max_position, loaded.config.sliding_window) == (256, None)


def test_a_longrope_file_has_the_checkpoints_rotary_table_for_long_prompts_too(tmp_path):
    """A GGUF file's LongRoPE model rotates as its safetensors checkpoint's: the same table,
    the long rows of prompts longer than the original context included (rope_rows.py),
    served past it; within it (--max-model-len 32), neither has them."""
    hf = save_random_hf_model(FAMILIES["longrope-partial"], str(tmp_path / "hf"))
    write_phi3_gguf(hf, str(tmp_path / "phi3.gguf"))
    for max_len, rows in ((None, 256 + 32), (32, 32)):
        tables = [load_model(str(tmp_path / name), dtype=torch.float32, device="cpu",
                             load_format=fmt, max_model_len=max_len).model.cos_sin_cache
                  for name, fmt in (("hf", "dummy"), ("phi3.gguf", "auto"))]
        assert tables[0].shape[0] == rows and torch.equal(tables[0], tables[1])


def test_a_longrope_file_with_an_original_context_of_0_is_refused_naming_it(tmp_path):
    """rope.scaling.original_context_length 0 in a file with LongRoPE factors was a
    ZeroDivisionError (the factor is the context over it): a traceback, not a message."""
    hf = save_random_hf_model(FAMILIES["longrope-partial"], str(tmp_path / "hf"))
    write_phi3_gguf(hf, str(tmp_path / "phi3.gguf"), original=0)
    with pytest.raises(ValueError, match=r"phi3.rope.scaling.original_context_length must "
                                         r"be >= 1, got 0"):
        load_model(str(tmp_path / "phi3.gguf"), dtype=torch.float32, device="cpu")
