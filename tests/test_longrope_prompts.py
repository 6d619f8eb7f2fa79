"""LongRoPE prompts longer than the original context, against transformers.

transformers rotates a prompt longer than original_max_position_embeddings (here 16)
entirely by the long factors, and a prompt within it that grows past it while decoding by
the short factors below 16 and the long ones from there on (model/rope_rows.py). A tiny
random Phi-3 (Phi-4-mini's partial rotary, decisive weights: all-short, by-position or
all-long tables give other ids) served up to 64 tokens must give transformers' greedy ids and
prompt logprobs for both kinds, alone and in one batch, and the prefix cache must not hand
one kind's KV to the other.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import Phi3Config

from test_loader import save_random_hf_model
from test_moe_model import hf_greedy
from test_phi3_model import LONGROPE, TINY
from test_prefill_graphs import save_any_tokenizer

from aiollm import Engine, SamplingParams
from aiollm.engine.prefill_graphs import PrefillGraphs
from aiollm.model import load_model

CONFIG = Phi3Config(**{**TINY, "max_position_embeddings": 64, "tie_word_embeddings": True},
                    partial_rotary_factor=0.75, original_max_position_embeddings=16,
                    rope_scaling=LONGROPE)
BASE = [(11 * i + 5) % 160 for i in range(40)]
LONG, SHORT = BASE[:30], BASE[:12]  # prompts longer than 16 and within it
NEW_TOKENS = 20  # the short prompt decodes past 16 too


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("longrope"))
    hf = save_random_hf_model(CONFIG, path)
    with torch.no_grad():  # larger weights: the argmax then depends on the frequencies
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    hf.save_pretrained(path)
    save_any_tokenizer(path)
    return path, hf


def _greedy(path: str, prompts: list[list[int]], graphs: bool = False, **options) -> list:
    """Outputs of greedy requests for prompts, sent one after another (each list of
    `prompts` is one concurrent batch). graphs: prompt steps through the prefill graphs'
    segments and decode batches padded to their graph's bucket, uncaptured (the CPU runs
    what a GPU's graphs replay)."""
    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(path, max_model_len=64, **{"kv_tokens": 1024, **options}) as engine:
            if graphs:
                engine.runner.prefill_graphs = PrefillGraphs(
                    engine.runner.model, engine.kv_pool, max_tokens=64, capture=False)
                engine.runner.graphs.pad = True
            outs = [await asyncio.gather(*(engine.generate(p, params) for p in batch))
                    for batch in prompts]
            _greedy.evictions = engine.stats()["evictions"]
            return outs
    return asyncio.run(main())


def test_the_rotary_table_has_the_long_rows_of_the_first_positions(saved):
    """Served past 16: rows 64..80 are transformers' cos/sin of positions 0..16 in a
    sequence longer than 16 (long factors, attention factor included), as rows 16..64 of
    the others are; served within it, no such rows."""
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    path, _ = saved
    cache = load_model(path, dtype=torch.float32, device="cpu",
                       load_format="dummy").model.cos_sin_cache
    long_cos, long_sin = Phi3RotaryEmbedding(CONFIG)(torch.zeros(1), torch.arange(64)[None])
    assert cache.shape == (80, 16)
    long_rows = torch.cat((cache[64:], cache[16:64]))  # positions 0..64, all long
    assert torch.equal(long_rows[:, :6], long_cos[0, :, :6])
    assert torch.equal(long_rows[:, 8:14], long_sin[0, :, :6])
    within = load_model(path, dtype=torch.float32, device="cpu", load_format="dummy",
                        max_model_len=16).model.cos_sin_cache
    assert within.shape == (16, 16)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-buffers"])
def test_a_long_prompt_and_a_short_one_in_one_batch_are_transformers(saved, graphs):
    """Greedy ids of a 30-token prompt (all long) and a 12-token one decoding past 16, in
    one batch and then alone, each transformers' alone; the prefix cache off, so each
    computes its own KV. Also through the graphs' static buffers (prefill segments, padded
    decode batches), which take the rotary rows their own way."""
    path, hf = saved
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in (LONG, SHORT)]
    together, alone = _greedy(path, [[LONG, SHORT], [LONG]], graphs, prefix_cache=False)
    assert [o.token_ids for o in together] == want
    assert alone[0].token_ids == want[0]


def test_a_long_prompt_prefilled_in_chunks_is_transformers(saved):
    """A 30-token prompt computed 8 tokens a step: chunks below 16, across it and past it
    each take their tokens' rows."""
    path, hf = saved
    (out,), = _greedy(path, [[LONG]], prefix_cache=False, max_prefill_tokens=8)
    assert out.token_ids == hf_greedy(hf, LONG, NEW_TOKENS)


def test_prompts_of_exactly_the_original_context_and_one_more_are_transformers(saved):
    """16 tokens (short: its first generated token, at position 16, takes the long row) and
    17 (long: all 17 prompt tokens long), in one batch prefilled 3 tokens a step, so that
    some steps feed one token of a prompt below 16 (the fused one-token path's rows)."""
    path, hf = saved
    prompts = [BASE[:16], BASE[:17]]
    (outs,) = _greedy(path, [prompts], prefix_cache=False, max_prefill_tokens=3)
    assert [o.token_ids for o in outs] == [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]


def test_a_long_prompts_logprobs_are_transformers_at_every_position(saved):
    """Prompt logprobs of a 30-token prompt: transformers' log_softmax of its forward over
    the whole prompt (which it rotates by the long factors) at every position."""
    path, hf = saved
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([LONG])).logits[0].float(), dim=-1)

    async def main():
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        async with Engine(path, kv_tokens=1024, max_model_len=64) as engine:
            return await engine.generate(LONG, params)

    out = asyncio.run(main())
    got = torch.tensor([lp.logprob for lp in out.prompt_logprobs[1:]])
    want = ref[torch.arange(len(LONG) - 1), torch.tensor(LONG[1:])]
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("first, then", [(LONG, SHORT), (SHORT, LONG)],
                         ids=["short-after-long", "long-after-short"])
def test_the_prefix_cache_keeps_long_and_short_keys_apart(saved, first, then):
    """A request sharing a prefix with an earlier one of the other kind reuses none of its
    KV (the keys of the same tokens differ) and gives transformers' ids; a long one after a
    long one with that prefix does reuse it."""
    path, hf = saved
    again = BASE[:34]  # long too, with LONG's first 30 tokens
    outs = _greedy(path, [[first], [then], [again]])
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in (first, then, again)]
    assert [o[0].token_ids for o in outs] == want
    assert outs[1][0].cached_tokens == 0
    assert outs[2][0].cached_tokens >= len(LONG) - 1


@pytest.mark.gpu
def test_gpu_long_and_short_prompts_with_graphs_equal_the_cpu(saved):
    """fp32 on the GPU with CUDA graphs (decode graphs, prefill graphs' captured segments,
    the fused one-token path) gives the CPU's greedy ids for long and short prompts in one
    batch and one after another through the prefix cache."""
    path, _ = saved
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    batches = [[LONG, SHORT], [SHORT], [BASE[:34]], [LONG]]
    runs = [[[o.token_ids for o in batch] for batch in
             _greedy(path, batches, device=device, dtype="float32")]
            for device in ("cpu", "cuda")]
    assert runs[0] == runs[1]


def test_paused_long_and_short_requests_resume_as_transformers(saved):
    """A pool too small for the batch (80 tokens for three requests of 32 to 50) pauses
    requests; each, recomputed from its prompt and output (through the prefix cache, which
    holds what a paused request computed), keeps its kind and gives transformers' ids."""
    path, hf = saved
    prompts = [LONG, SHORT, BASE[5:35]]
    (outs,) = _greedy(path, [prompts], kv_tokens=80, scheduler="aggressive")
    assert _greedy.evictions > 0
    assert [o.token_ids for o in outs] == [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
