"""Prefill graphs (aiollm/engine/prefill_graphs.py): eager steps as graph segments between
attention calls. On the CPU the segments run eagerly on the same padded static buffers that
the graphs replay on a GPU; they must give transformers' logits and model.forward's, store
the same K/V, and write nothing else but the pool's scratch slot."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
import torch
from transformers import GraniteConfig, LlamaConfig, Qwen2Config, Qwen3Config

from aiollm import Engine, SamplingParams
from aiollm.engine.prefill_graphs import PrefillGraphs, token_buckets
from aiollm.model import load_model, load_tokenizer
from test_loader import save_random_hf_model
from test_model import Steps
from test_moe_model import FAMILIES as MOE

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=False)
FAMILIES = {
    "llama": LlamaConfig(**TINY),
    "qwen2": Qwen2Config(**TINY),  # q/k/v biases
    "qwen3": Qwen3Config(**TINY, head_dim=24),  # q/k norms; q_size 96 != hidden_size 64
    # the embedding multiplied in segment 0, the softmax scale, the folded residual scale
    "granite": GraniteConfig(**TINY, embedding_multiplier=12.0, residual_multiplier=0.22,
                             attention_multiplier=0.015625, logits_scaling=8.0),
}
PROMPTS = [[3, 17, 99, 4, 150, 23, 7], [42, 8, 1, 77, 159, 0, 12, 5, 66, 31, 2],
           [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]


def test_every_step_size_has_a_bucket_with_bounded_padding():
    buckets = token_buckets(2048)
    assert buckets == sorted(set(buckets)) and buckets[0] == 16 and buckets[-1] == 2048
    for t in range(1, 2049):
        pad = next(b for b in buckets if b >= t) - t
        assert pad < (16 if t <= 256 else 32)
    assert token_buckets(100)[-1] == 100 and token_buckets(1) == [1]
    with pytest.raises(ValueError, match="max_tokens"):
        token_buckets(0)


def save_family(name: str, path: str) -> torch.nn.Module:
    """A tiny random model of FAMILIES or of test_moe_model's MoE families, saved at path;
    MoE routers made decisive (near-ties between experts flip under any summation order)."""
    if name not in MOE:
        return save_random_hf_model(FAMILIES[name], path)
    hf = save_random_hf_model(MOE[name], path)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight")):
                p.normal_(0, 1.0)
    hf.save_pretrained(path)
    return hf


# qwen3_moe: sparse layers around a dense one; qwen2_moe: a shared expert beside the routed
@pytest.fixture(scope="module", params=list(FAMILIES) + ["qwen3_moe", "qwen2_moe"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_family(request.param, str(path))
    return hf, load_model(str(path), dtype=torch.float32, device="cpu")


def save_any_tokenizer(path: str) -> None:
    """The default model's tokenizer (the prompts are ids), or on a machine without the
    default model (the GPU machine) the one AIOLLM_TEST_TOKENIZER names."""
    try:
        load_tokenizer(None).save_pretrained(path)
    except FileNotFoundError:
        tok = os.environ.get("AIOLLM_TEST_TOKENIZER")
        if not tok:
            pytest.skip("no default model and no AIOLLM_TEST_TOKENIZER")
        for f in os.listdir(tok):
            shutil.copy(os.path.join(tok, f), path)


def hf_last_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0, -1].float()


def test_mixed_steps_match_transformers_and_the_eager_forward(tiny):
    """A prefill step, then a mixed one (two decodes and a new prompt), run twice on two KV
    pools: once by model.forward, once by the segments on padded buffers."""
    hf, loaded = tiny
    eager, graphs = Steps(loaded), Steps(loaded)
    pg = PrefillGraphs(loaded.model, graphs.pool, max_tokens=64, capture=False)
    rows = {}
    for s in (eager, graphs):
        rows[id(s)] = [s.new_request() for _ in PROMPTS]
    first = {}
    for s, run in ((eager, loaded.model), (graphs, pg.forward)):
        r = rows[id(s)]
        batch = s.batch({r[0]: PROMPTS[0], r[1]: PROMPTS[1]})
        assert pg.covers(batch) and pg.bucket(batch.num_tokens) == 32  # 18 tokens, padded
        first[id(s)] = run(batch)
    want = torch.stack([hf_last_logits(hf, p) for p in PROMPTS[:2]])
    for out in first.values():
        assert (out - want).abs().max() < 1e-4
    nxt = [int(t) for t in want.argmax(-1)]
    for s, run in ((eager, loaded.model), (graphs, pg.forward)):
        r = rows[id(s)]
        batch = s.batch({r[0]: [nxt[0]], r[1]: [nxt[1]], r[2]: PROMPTS[2]})
        assert batch.mixed_parts is not None and batch.num_decode == 2
        first[id(s)] = run(batch)
    want = torch.stack([hf_last_logits(hf, PROMPTS[0] + [nxt[0]]),
                        hf_last_logits(hf, PROMPTS[1] + [nxt[1]]), hf_last_logits(hf, PROMPTS[2])])
    assert (first[id(graphs)] - want).abs().max() < 1e-4
    assert (first[id(graphs)] - first[id(eager)]).abs().max() < 1e-5
    # a smaller step after a larger one: its padding rows must not reuse the stale slots
    last = [int(t) for t in want.argmax(-1)]
    for s, run in ((eager, loaded.model), (graphs, pg.forward)):
        r = rows[id(s)]
        batch = s.batch({r[0]: [last[0]], r[1]: [last[1]], r[2]: [last[2]]})
        assert batch.is_decode and pg.bucket(batch.num_tokens) == 16
        first[id(s)] = run(batch)
    assert (first[id(graphs)] - first[id(eager)]).abs().max() < 1e-5
    # the same K/V in every slot but the scratch one, which only the padding rows wrote
    scratch = graphs.pool.scratch_slot
    for a, b in ((eager.pool.k_cache, graphs.pool.k_cache),
                 (eager.pool.v_cache, graphs.pool.v_cache)):
        for la, lb in zip(a, b):
            assert (la[:scratch] - lb[:scratch]).abs().max() < 1e-5
            assert lb[scratch].any()


def test_steps_outside_the_graphs_are_refused_by_covers(tiny):
    _, loaded = tiny
    s = Steps(loaded)
    pg = PrefillGraphs(loaded.model, s.pool, max_tokens=16, capture=False)
    r = s.new_request()
    assert not pg.covers(s.batch({r: [5]}))  # one token: the fused GEMV path
    assert not pg.covers(s.batch({r: list(range(1, 18))}))  # 17 tokens > max_tokens
    # the planner fills a step up to the rows it computes (Planner.fill_to): the bucket of a
    # step the graphs take, the step itself where they refuse it (nothing padded to fill)
    assert [pg.fill_to(t) for t in (1, 2, 9, 16, 17, 40)] == [1, 16, 16, 16, 17, 40]


def test_a_bucket_whose_capture_fails_runs_its_segments_eagerly(tiny, caplog):
    """A capture that fails (out of memory on a full GPU, a kernel that cannot be captured;
    here a machine without CUDA) fails neither its step nor the later ones of its size: the
    bucket runs its segments eagerly, with model.forward's logits, and is not tried again."""
    if torch.cuda.is_available():
        pytest.skip("the capture fails here for want of CUDA")
    _, loaded = tiny
    eager, graphs = Steps(loaded), Steps(loaded)
    pg = PrefillGraphs(loaded.model, graphs.pool, max_tokens=64, capture=True)
    for prompt in PROMPTS[:2]:
        want = loaded.model(eager.batch({eager.new_request(): prompt}))
        with caplog.at_level("WARNING", logger="aiollm.engine.prefill_graphs"):
            got = pg.forward(graphs.batch({graphs.new_request(): prompt}))
        assert (got - want).abs().max() < 1e-5
    failed = [r for r in caplog.records if "capturing" in r.getMessage()]
    assert len(failed) == 1 and "16 tokens" in failed[0].getMessage()


def test_a_moe_model_has_segments_with_sparse_and_dense_layers(tmp_path):
    """Routing, alignment and the grouped GEMMs size their launches by the token count
    alone, so MoE layers (here with a dense one between them) run in the segments too; and
    one-token steps run fused (SparseMoe.forward_small), except with Qwen2-MoE's shared
    expert."""
    save_family("qwen3_moe", str(tmp_path / "q3"))
    loaded = load_model(str(tmp_path / "q3"), dtype=torch.float32, device="cpu")
    assert loaded.model.graph_segments and loaded.model.fused_small
    assert [hasattr(layer.mlp, "experts") for layer in loaded.model.layers] == [True, False, True]
    save_family("qwen2_moe", str(tmp_path / "q2"))
    assert not load_model(str(tmp_path / "q2"), dtype=torch.float32, device="cpu").model.fused_small


def test_engine_greedy_output_is_unchanged(tmp_path):
    """Through the Engine, with streams decoding while prompts arrive (mixed steps): the same
    greedy tokens with the segments on padded buffers as with model.forward; nothing leaks."""
    save_random_hf_model(FAMILIES["llama"], str(tmp_path))
    save_any_tokenizer(str(tmp_path))
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    steps = []

    async def run(use_graphs: bool):
        async with Engine(str(tmp_path), kv_tokens=1024, max_model_len=256) as engine:
            runner = engine.runner
            if use_graphs:
                runner.prefill_graphs = PrefillGraphs(runner.model, engine.kv_pool,
                                                      max_tokens=64, capture=False)
                real = runner.prefill_graphs.forward

                def spy(batch):
                    steps.append(batch.num_tokens)
                    return real(batch)
                runner.prefill_graphs.forward = spy
            first = asyncio.ensure_future(engine.generate(PROMPTS[0], params))
            await asyncio.sleep(0.2)
            outs = await asyncio.gather(first, *(engine.generate(p, params) for p in PROMPTS[1:]))
            assert engine.stats()["kv_used"] == 0
        return [o.token_ids for o in outs]

    plain = asyncio.run(run(False))
    assert asyncio.run(run(True)) == plain
    assert steps and max(steps) > 1


def test_engine_prefix_hits_chunks_and_long_steps_are_unchanged(tmp_path):
    """Every kind of prompt step through the Engine: an extend over a cached prefix, a prompt
    chunked by max_prefill_tokens, steps at a bucket's edge and past max_tokens (those run
    model.forward): the same greedy tokens with the segments as without; nothing leaks."""
    save_random_hf_model(FAMILIES["qwen3"], str(tmp_path))
    save_any_tokenizer(str(tmp_path))
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    shared = [(7 * i) % 150 + 1 for i in range(40)]
    prompts = [shared + [3, 4], shared + [5, 6, 7, 8, 9], list(range(100, 116)),
               [(3 * i) % 155 + 2 for i in range(150)]]
    steps = []

    async def run(use_graphs: bool):
        async with Engine(str(tmp_path), kv_tokens=1024, max_model_len=256,
                          max_prefill_tokens=64) as engine:
            if use_graphs:
                runner = engine.runner
                pg = runner.prefill_graphs = PrefillGraphs(runner.model, engine.kv_pool,
                                                           max_tokens=32, capture=False)
                real = pg.forward
                pg.forward = lambda batch: steps.append(batch.num_tokens) or real(batch)
            outs = [await engine.generate(p, params) for p in prompts[:3]]
            outs += await asyncio.gather(*(engine.generate(p, params) for p in prompts[2:]))
            engine.flush_cache()
            assert engine.stats()["kv_used"] == 0
        return [o.token_ids for o in outs]

    plain = asyncio.run(run(False))
    assert asyncio.run(run(True)) == plain
    # 5: the extend over the cached prefix; 16: a bucket edge; no step past max_tokens
    assert {5, 16} <= set(steps) and max(steps) <= 32


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "granite"])
def test_gpu_captured_segments_give_the_eager_tokens(tmp_path, monkeypatch, family):
    """On CUDA (fp32, no TF32): the same greedy tokens with captured segments as with
    AIOLLM_PREFILL_GRAPHS=0, each bucket captured once, L + 1 graphs in it."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    save_family(family, str(tmp_path))
    save_any_tokenizer(str(tmp_path))
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)

    async def run():
        async with Engine(str(tmp_path), kv_tokens=2048, max_model_len=256, device="cuda",
                          dtype="float32") as engine:
            first = asyncio.ensure_future(engine.generate(PROMPTS[0], params))
            await asyncio.sleep(0.2)
            outs = await asyncio.gather(first, *(engine.generate(p, params) for p in PROMPTS[1:]))
            again = await engine.generate(PROMPTS[2], params)  # a bucket captured already
            assert engine.stats()["kv_used"] == 0
            pg = engine.runner.prefill_graphs
            return [o.token_ids for o in outs] + [again.token_ids], pg

    with_graphs, pg = asyncio.run(run())
    assert pg is not None and pg.graphs
    assert all(len(g) == TINY["num_hidden_layers"] + 1 for g in pg.graphs.values())
    monkeypatch.setenv("AIOLLM_PREFILL_GRAPHS", "0")
    eager, off = asyncio.run(run())
    assert off is None
    assert with_graphs == eager
