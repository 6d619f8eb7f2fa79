"""GGUF files that are not a model aiollm serves, refused in one line saying what they are:
an architecture aiollm does not run (named as llama.cpp's files name the ones it does), a
LoRA adapter, a vision model's projector (mmproj)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from aiollm.model import load_model


def write(path, arch: str, general_type: str | None = None,
          tensor: str = "token_embd.weight") -> str:
    w = gguf.GGUFWriter(str(path), arch)
    if general_type is not None:
        w.add_type(general_type)
    w.add_tensor(tensor, np.zeros((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_an_architecture_aiollm_does_not_run_names_those_it_does_as_gguf_names_them(tmp_path):
    with pytest.raises(ValueError, match=r"GGUF architecture 'phi2' is not supported "
                                         r"\(supported, as llama.cpp names them: llama "
                                         r"\(Llama, Mistral, Mixtral\), qwen2, qwen3, "
                                         r"qwen2moe, qwen3moe, granite, granitemoe, gemma, "
                                         r"gemma2, gemma3, phi3\)"):
        load_model(write(tmp_path / "m.gguf", "phi2"), dtype=torch.float32, device="cpu")


def test_a_lora_adapter_is_named_as_one(tmp_path):
    path = write(tmp_path / "a.gguf", "llama", "adapter", "blk.0.attn_q.weight.lora_a")
    with pytest.raises(ValueError, match="is a LoRA adapter, not a model: .*merged"):
        load_model(path, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("arch, general_type", [("clip", "mmproj"), ("clip", None)])
def test_a_vision_projector_is_named_as_one(tmp_path, arch, general_type):
    path = write(tmp_path / "mmproj.gguf", arch, general_type, "v.patch_embd.weight")
    with pytest.raises(ValueError, match=r"multimodal projector \(mmproj\) .* give the "
                                         "language model's own .gguf file"):
        load_model(path, dtype=torch.float32, device="cpu")
