"""Granite and GraniteMoe on a GPU (Triton kernels, CUDA graphs): float32 greedy ids and
logprobs equal to transformers' and to the CPU path, in batched steps and in one-token steps
(each layer as fused GEMVs, replayed from the batch-1 decode graph); bfloat16 top-1 agreement
with transformers. The models are test_granite.py's, scalars far from 1. Skipped without
CUDA."""

from __future__ import annotations

import asyncio

import pytest
import torch

from aiollm import Engine, SamplingParams
from test_granite import PROMPTS, hf_greedy, save_granite
from test_prefill_graphs import save_any_tokenizer

pytestmark = pytest.mark.gpu
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=["granite", "granitemoe"])
def granite(request, tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    path = tmp_path_factory.mktemp(request.param)
    hf = save_granite(request.param, path, tokenizer=False)
    save_any_tokenizer(str(path))
    return request.param, str(path), hf


async def _generate(path: str, device: str, dtype: str, alone: bool):
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, logprobs=0)
    async with Engine(path, kv_tokens=2048, max_model_len=256, device=device,
                      dtype=dtype) as engine:
        if device == "cuda":
            assert engine.runner.model.fused_small  # a request alone: one-token steps
        if alone:
            return [await engine.generate(p, params) for p in PROMPTS]
        return await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))


@pytest.mark.parametrize("alone", [False, True])
def test_gpu_fp32_matches_transformers_and_cpu(granite, alone):
    torch.backends.cuda.matmul.allow_tf32 = False
    family, path, hf = granite
    want = [hf_greedy(hf.float(), p, NEW_TOKENS) for p in PROMPTS]
    gpu = asyncio.run(_generate(path, "cuda", "float32", alone))
    cpu = asyncio.run(_generate(path, "cpu", "float32", alone))
    assert [o.token_ids for o in cpu] == [i for i, _ in want]
    assert [o.token_ids for o in gpu] == [o.token_ids for o in cpu]
    for out, (_, logprobs) in zip(gpu, want):
        got = torch.tensor([lp.logprob for lp in out.logprobs])
        torch.testing.assert_close(got, torch.tensor(logprobs), atol=1e-3, rtol=0)


def test_gpu_bf16_top1_agrees_with_transformers(granite):
    """Teacher-forced on our bf16 greedy output: at each generated position our token against
    transformers' fp32 top-1 (the reference), as often as transformers' own bf16 top-1 is
    (bf16 rounding alone flips some argmaxes of random weights), less one position."""
    family, path, hf = granite
    outs = asyncio.run(_generate(path, "cuda", "bfloat16", alone=False))
    hf32 = hf.float().cuda()
    ours = hf16 = total = 0
    with torch.no_grad():
        top32, top16 = [], []
        for p, out in zip(PROMPTS, outs):
            seq = torch.tensor([p + out.token_ids], device="cuda")
            top32.append(hf32(seq).logits[0, len(p) - 1:-1].argmax(-1).cpu())
        hf16_model = hf32.to(torch.bfloat16)
        for p, out in zip(PROMPTS, outs):
            seq = torch.tensor([p + out.token_ids], device="cuda")
            top16.append(hf16_model(seq).logits[0, len(p) - 1:-1].argmax(-1).cpu())
    for out, ref, bf16 in zip(outs, top32, top16):
        got = torch.tensor(out.token_ids)
        ours += int((got == ref).sum())
        hf16 += int((bf16 == ref).sum())
        total += len(got)
    print(family, ours / total, hf16 / total)
    assert ours >= min(hf16, total) - 1 and ours / total >= 0.9, (ours, hf16, total)
