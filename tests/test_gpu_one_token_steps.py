"""One-token steps on a GPU: a request decoding alone runs each layer as fused kernels
(llama.FUSED_MAX_TOKENS: GEMVs with the norms folded in, Qwen3's q/k norms in the rotation,
MoE layers routed inside their two GEMVs; SparseMoe.forward_small), replayed from the batch-1
decode graph. In float32 (no TF32) its greedy tokens are transformers' on the same weights."""

from __future__ import annotations

import asyncio

import pytest
import torch

from aiollm import Engine, SamplingParams
from test_moe_model import hf_greedy
from test_prefill_graphs import PROMPTS, save_any_tokenizer, save_family


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "mixtral"])
def test_gpu_one_token_steps_give_transformers_tokens(tmp_path, family):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    hf = save_family(family, str(tmp_path))
    save_any_tokenizer(str(tmp_path))
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def run():
        async with Engine(str(tmp_path), kv_tokens=2048, max_model_len=256, device="cuda",
                          dtype="float32") as engine:
            assert engine.runner.model.fused_small
            return [(await engine.generate(p, params)).token_ids for p in PROMPTS]

    assert asyncio.run(run()) == [hf_greedy(hf.float(), p, 12) for p in PROMPTS]
