"""Decode attention fused with o_proj and the residual add (aiollm/kernels/attention_oproj.py)
against its PyTorch reference, and a tiny Llama decoding through it.

Without CUDA the kernel runs under Triton's CPU interpreter with CPU_CONFIG (16-token K/V
blocks, 16 rows a program: contexts 16, 17 and 50 end inside, on and past a block's end; H
40 leaves the last row block part-empty; group 7 at head dim 64 reads W_o in 4-row tiles).
The test marked `gpu` checks the Llama-3.2-1B and 3.1-8B shapes in bf16 under every
candidate config.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aiollm.kernels import attention_oproj as ao  # noqa: E402
from aiollm.kernels import autotune  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# float16 on the CPU: Triton 3.9's interpreter returns garbage for tl.dot of bfloat16
# operands (tests/test_kernels.py); the gpu test runs bfloat16
HALF = torch.bfloat16 if torch.cuda.is_available() else torch.float16


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    torch.use_deterministic_algorithms(True, warn_only=True)  # torch.empty fills NaN
    yield
    torch.use_deterministic_algorithms(False)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "output has unwritten (NaN) elements"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_inputs(seq_len: int, HQ: int, HKV: int, D: int, H: int, dtype, spare: int = 9):
    """One request's scattered slots in a pool; the table's other entries point at other
    valid slots (a kernel reading past the length gets wrong numbers)."""
    S, L, R = seq_len + spare, seq_len + 5, 3
    k_cache = torch.randn(S, HKV, D, device=DEV).to(dtype)
    v_cache = torch.randn(S, HKV, D, device=DEV).to(dtype)
    table = torch.randint(0, S, (R, L), dtype=torch.int32, device=DEV)
    row = 1
    table[row, :seq_len] = torch.randperm(S, device=DEV)[:seq_len].to(torch.int32)
    rows = torch.tensor([row], dtype=torch.int32, device=DEV)
    lens = torch.tensor([seq_len], dtype=torch.int32, device=DEV)
    q = torch.randn(1, HQ, D, device=DEV).to(dtype)
    w_o = (torch.randn(H, HQ * D, device=DEV) / (HQ * D) ** 0.5).to(dtype)
    return q, k_cache, v_cache, table, rows, lens, w_o


def check(seq_len, HQ, HKV, D, H, dtype, config=None, res_dtype=torch.float32):
    q, kc, vc, table, rows, lens, w_o = make_inputs(seq_len, HQ, HKV, D, H, dtype)
    args = (q, kc, vc, table, rows, lens, D**-0.5, table.shape[1], w_o)
    res = torch.randn(1, H, device=DEV).to(res_dtype)
    ref = ao.attention_oproj_ref(*args, res.clone())
    out = ao.attention_oproj_triton(*args, res, config=config)
    if res_dtype == torch.float32:
        assert out.data_ptr() == res.data_ptr(), "a float32 residual is updated in place"
    else:
        assert out.dtype == torch.float32 and out.data_ptr() != res.data_ptr()
    assert rel_err(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("seq_len", [1, 2, 16, 17, 50])
@pytest.mark.parametrize("HQ,HKV,D,H", [(2, 2, 16, 40), (8, 2, 64, 40), (7, 1, 64, 33)],
                         ids=["group1-d16", "group4-d64", "group7-d64"])
def test_against_reference(seq_len, HQ, HKV, D, H):
    check(seq_len, HQ, HKV, D, H, torch.float32)


@pytest.mark.parametrize("seq_len", [2, 50])
def test_half_precision_and_a_half_residual(seq_len):
    """Half-precision weights and cache against the float32 reference; a residual that starts
    in the model dtype (layer 0's embedding) comes back as a new float32 stream."""
    check(seq_len, 8, 2, 64, 40, HALF)
    check(seq_len, 8, 2, 64, 40, HALF, res_dtype=HALF)


def test_reference_equals_the_unfused_reference_path():
    """In float32 the reference is decode_attention_ref then gemv_residual_ref to the bit."""
    from aiollm.kernels.decode_attention import decode_attention_ref
    from aiollm.kernels.gemv import gemv_residual_ref

    q, kc, vc, table, rows, lens, w_o = make_inputs(23, 8, 2, 16, 40, torch.float32)
    args = (q, kc, vc, table, rows, lens, 0.25, table.shape[1])
    res = torch.randn(1, 40, device=DEV)
    unfused = gemv_residual_ref(decode_attention_ref(*args).reshape(1, -1), w_o, None,
                                res.clone())
    assert torch.equal(ao.attention_oproj_ref(*args, w_o, res), unfused)


def test_counters_back_at_zero_after_two_launches():
    """The last program of each row block resets its counter: after two launches (the second
    merges correctly only if the first left them at zero) every counter is zero."""
    for _ in range(2):
        check(33, 8, 2, 16, 40, torch.float32)
    assert not ao._block_counters(DEV).any()


def test_other_configs():
    """A block covering the whole context, rows a program past H, wider programs."""
    for cfg in ({"BLOCK_N": 64, "BLOCK_KV": 64, "num_warps": 1, "num_stages": 1},
                {"BLOCK_N": 8, "BLOCK_KV": 32, "num_warps": 2, "num_stages": 1}):
        check(50, 8, 2, 16, 40, torch.float32, config=cfg)


def test_tile_rows_stay_within_the_register_budget():
    cfg = {"BLOCK_N": 128, "BLOCK_KV": 64, "num_warps": 4, "num_stages": 1}
    assert ao.TILE_ELEMENTS == 32
    assert ao._tile_rows(cfg, 4, 64) == 16  # the 1B shape: 256 columns a head group
    assert ao._tile_rows(cfg, 4, 128) == 8  # the 8B shape
    assert ao._tile_rows({**cfg, "BLOCK_N": 8}, 4, 64) == 8
    assert ao._tile_rows({**cfg, "num_warps": 1}, 16, 256) == 1


def test_more_than_one_request_is_refused():
    q, kc, vc, table, rows, lens, w_o = make_inputs(5, 4, 2, 16, 40, torch.float32)
    q2 = torch.cat([q, q])
    with pytest.raises(AssertionError, match="one request"):
        ao.attention_oproj_triton(q2, kc, vc, table, rows.repeat(2), lens.repeat(2), 0.25,
                                  8, w_o, torch.zeros(2, 40, device=DEV))


def test_takes_one_request_up_to_its_longest_context(monkeypatch):
    q, kc, _, _, _, _, w_o = make_inputs(5, 4, 2, 16, 40, torch.float32)
    q2 = torch.cat([q, q])
    monkeypatch.setattr(ao, "ENABLED", True)
    assert ao.takes(q, kc, w_o, ao.MAX_SEQ_LEN) and not ao.takes(q2, kc, w_o, 16)
    assert not ao.takes(q, kc, w_o, ao.MAX_SEQ_LEN + 1)
    monkeypatch.setattr(ao, "ENABLED", False)
    assert not ao.takes(q, kc, w_o, 16)


def test_takes_by_default_only_where_a_config_is_committed(monkeypatch):
    """ENABLED None: the CPU never (no GPU table); a GPU where its table holds the shape's
    config, at its class or the adjacent one, not for another shape."""
    q, kc, _, _, _, _, w_o = make_inputs(5, 4, 2, 16, 40, torch.float32)
    monkeypatch.setattr(ao, "ENABLED", None)
    assert not ao.takes(q, kc, w_o, 16)
    key = ao.config_key(4, 2, 16, 40, torch.float32, 512)
    table = {"attention_oproj": {key: dict(ao.DEFAULT_CONFIG)}}
    monkeypatch.setattr(autotune, "gpu_slug", lambda index: "TEST_GPU")
    monkeypatch.setitem(autotune._tables, "TEST_GPU", table)
    gpu = torch.device("cuda", 0)
    assert autotune.committed("attention_oproj", key, gpu) == ao.DEFAULT_CONFIG
    near = ao.config_key(4, 2, 16, 40, torch.float32, 256)
    assert autotune.committed("attention_oproj", near, gpu, {"n": ao.LENGTH_CLASSES})
    assert autotune.committed("attention_oproj", near, gpu) is None
    other = ao.config_key(4, 2, 16, 80, torch.float32, 512)
    assert autotune.committed("attention_oproj", other, gpu, {"n": ao.LENGTH_CLASSES}) is None
    assert autotune.committed("attention_oproj", key, torch.device("cpu")) is None


# ---- a tiny Llama decoding through the fused kernel ------------------------------------------

def tiny_llama(**window):
    """A random tiny Llama; `window`: ModelConfig's sliding_window and sliding_layers."""
    from aiollm.model.config import ModelConfig
    from aiollm.model.llama import LlamaForCausalLM
    from aiollm.model.rope_config import RopeConfig

    cfg = ModelConfig(architecture="llama", vocab_size=101, hidden_size=48,
                      intermediate_size=80, num_layers=3, num_heads=8, num_kv_heads=2,
                      head_dim=16, rms_norm_eps=1e-5, rope=RopeConfig(), max_position=128,
                      **window)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg, max_len=128)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 1.0 if "embed" in name else 0.3)
    return model.eval()


def test_short_context_step_says_where_the_decode_graphs_capture_batch_one_again(monkeypatch):
    """The model's short_context_step (what engine/cuda_graph.py captures a second batch-1
    graph for): the fused kernel taken at that size; not on the CPU by default, not past
    MAX_SEQ_LEN, not with an o_proj bias."""
    model = tiny_llama()
    assert not model.short_context_step(ao.MAX_SEQ_LEN)  # ENABLED None: no GPU table here
    monkeypatch.setattr(ao, "ENABLED", True)
    assert model.short_context_step(ao.MAX_SEQ_LEN)
    assert not model.short_context_step(ao.MAX_SEQ_LEN + 1)
    o_proj = model.layers[0].self_attn.o_proj
    monkeypatch.setattr(o_proj, "bias", torch.nn.Parameter(torch.zeros(48)))
    assert not model.short_context_step(ao.MAX_SEQ_LEN)


def greedy(model, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """Prefill then `steps` decode steps of one request, the way the engine drives them:
    (the tokens, the decode steps' logits [steps, V])."""
    from aiollm.model.forward_batch import ForwardBatch
    from aiollm.model.kv_pool import KVPool, ReqToTokenTable

    cfg = model.config
    pool = KVPool(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 64, torch.float32, "cpu")
    table = ReqToTokenTable(2, 64, "cpu")
    row = table.alloc_row()

    def step(ids: list[int], prefix: int) -> torch.Tensor:
        slots = pool.alloc(len(ids))
        table.write_cpu([row] * len(ids), list(range(prefix, prefix + len(ids))), slots)
        batch = ForwardBatch.build(torch.tensor(ids), slots, torch.tensor([row]),
                                   torch.tensor([prefix]), torch.tensor([len(ids)]),
                                   table.table, pool, torch.device("cpu"))
        return model(batch)[0]

    tokens, logits = [], []
    last = step(prompt, 0)
    for i in range(steps):
        tokens.append(int(last.argmax()))
        last = step([tokens[-1]], len(prompt) + i)
        logits.append(last)
    return tokens, torch.stack(logits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU model path")
@pytest.mark.parametrize("window", [{}, {"sliding_window": 7, "sliding_layers": (0, 2)}],
                         ids=["whole", "sliding-window-7"])
def test_tiny_llama_decodes_the_same_through_the_fused_kernel(monkeypatch, window):
    """float32: the decode steps through the Triton kernel (the interpreter), through the
    fused path's reference (the CPU path) and through attention + o_proj GEMV give the same
    greedy tokens, logits within float32 rounding; 8 steps after a 12-token prompt (contexts
    13 to 20) cross a 16-token block (and layers 0 and 2 attend to their last 7 positions
    only). Under the interpreter each step's kernel costs, not the prompt."""
    model = tiny_llama(**window)
    prompt = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]
    monkeypatch.setattr(ao, "ENABLED", False)
    unfused = greedy(model, prompt, 8)
    monkeypatch.setattr(ao, "ENABLED", True)
    fused_ref = greedy(model, prompt, 8)
    assert fused_ref[0] == unfused[0] and torch.equal(fused_ref[1], unfused[1])
    calls = []

    def triton_on_cpu(*args, **kwargs):
        calls.append(1)
        return ao.attention_oproj_triton(*args, **kwargs)

    monkeypatch.setattr(ao, "attention_oproj", triton_on_cpu)
    fused = greedy(model, prompt, 8)
    assert len(calls) == 8 * model.config.num_layers
    assert fused[0] == unfused[0]
    assert rel_err(fused[1], unfused[1]) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("HQ,HKV,D,H", [(32, 8, 64, 2048), (32, 8, 128, 4096)],
                         ids=["llama3.2-1b", "llama3.1-8b"])
def test_gpu_every_candidate_at_model_shapes(HQ, HKV, D, H):
    """bf16 at the Llama-3.2-1B and 3.1-8B shapes, contexts 1, 192 (decode_step.py's) and
    1,000, under every candidate config (with PDL where the GPU has it), then captured in a
    CUDA graph and replayed on fresh inputs: the counters must be back at zero each time."""
    for cfg in ao.candidates(D):
        for seq_len in (1, 192, 1000):
            check(seq_len, HQ, HKV, D, H, torch.bfloat16, config=cfg)
    q, kc, vc, table, rows, lens, w_o = make_inputs(1000, HQ, HKV, D, H, torch.bfloat16)
    args = (q, kc, vc, table, rows, lens, D**-0.5, table.shape[1], w_o)
    res = torch.zeros(1, H, device=DEV)
    cfg = ao.DEFAULT_CONFIG  # given: nothing tuned, no config table written
    ao.attention_oproj_triton(*args, res, config=cfg)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ao.attention_oproj_triton(*args, res, config=cfg)
    for n in (1000, 1, 192):
        q.copy_(torch.randn_like(q))
        lens.fill_(n)
        start = torch.randn(1, H, device=DEV)
        res.copy_(start)
        graph.replay()
        assert rel_err(out, ao.attention_oproj_ref(*args, start.clone())) <= TOL[torch.bfloat16]
    assert not ao._block_counters(DEV).any()
