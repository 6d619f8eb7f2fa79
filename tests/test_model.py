"""Our Llama forward on the default GGUF model against transformers loading the same file.

transformers is the reference for both the numerics (LlamaForCausalLM in fp32) and the GGUF
handling (its own dequantization and q/k un-permutation). Steps are driven through the real
KV pool, req-to-token table and ForwardBatch, the way the engine drives them: batched prefill,
decode of requests of different lengths, chunked prefill with a prefix already in the pool.
"""

from __future__ import annotations

import pytest
import torch

from aiollm.model import default_model_path, llama, load_model
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool, ReqToTokenTable

# fp32 on the CPU: both sides compute the same math in a different order.
ATOL = 2e-3


@pytest.fixture(scope="module")
def ours():
    return load_model(None, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def hf(hf_reference):
    return hf_reference  # conftest.py: transformers' own GGUF loading, shared by the session


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


class Steps:
    """Drives forward steps the way the engine does: KV slots from the pool, req_to_token rows."""

    def __init__(self, loaded, kv_tokens: int = 512, rows: int = 8, max_len: int = 128):
        cfg = loaded.config
        self.model = loaded.model
        self.pool = KVPool(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, kv_tokens,
                           torch.float32, "cpu")
        self.table = ReqToTokenTable(rows, max_len, "cpu")
        self.kv_len: dict[int, int] = {}  # row -> tokens in the pool

    def new_request(self) -> int:
        row = self.table.alloc_row()
        self.kv_len[row] = 0
        return row

    def batch(self, chunks: dict[int, list[int]]) -> ForwardBatch:
        rows = list(chunks)
        lens = torch.tensor([len(chunks[r]) for r in rows])
        prefix = torch.tensor([self.kv_len[r] for r in rows])
        slots = self.pool.alloc(int(lens.sum()))
        req_of_slot = torch.repeat_interleave(torch.tensor(rows), lens)
        pos = torch.cat([torch.arange(p, p + n) for p, n in zip(prefix.tolist(), lens.tolist())])
        self.table.write_cpu(req_of_slot, pos, slots)
        for r, n in zip(rows, lens.tolist()):
            self.kv_len[r] += n
        ids = torch.tensor([t for r in rows for t in chunks[r]])
        return ForwardBatch.build(ids, slots, torch.tensor(rows), prefix, lens, self.table.table,
                                  self.pool, torch.device("cpu"))

    def step(self, chunks: dict[int, list[int]]) -> torch.Tensor:
        return self.model(self.batch(chunks))


PROMPTS = [
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407],
    [504, 3458, 282, 4649, 314],
    [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198, 378, 3575,
     282, 4649, 314, 7042, 30, 378, 3575, 282, 6561],
]


def test_config_matches_transformers(ours, hf):
    cfg, ref = ours.config, hf.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (
        ref.vocab_size, ref.hidden_size, ref.intermediate_size)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
        ref.num_hidden_layers, ref.num_attention_heads, ref.num_key_value_heads, ref.head_dim)
    assert cfg.rms_norm_eps == ref.rms_norm_eps
    assert cfg.rope.theta == ref.rope_parameters["rope_theta"] and cfg.rope.type == "default"
    assert cfg.max_position == ref.max_position_embeddings == ours.max_model_len
    # transformers' eos first; llama.cpp also ends at <|endoftext|> and (a fill-in-the-middle
    # repo name) <reponame> by their text (gguf_eog.py)
    assert cfg.tie_word_embeddings and cfg.eos_token_ids == [ref.eos_token_id, 0, 4]


def test_batched_prefill_matches_hf_at_every_position(ours, hf):
    steps = Steps(ours)
    batch = steps.batch({steps.new_request(): p for p in PROMPTS})
    # Ask for the logits of every token, not only the last of each request.
    batch.logits_index = torch.arange(batch.num_tokens)
    logits = ours.model(batch)
    ref = torch.cat([hf_logits(hf, p) for p in PROMPTS])
    assert logits.shape == (sum(map(len, PROMPTS)), ours.config.vocab_size)
    assert logits.dtype == torch.float32
    assert (logits - ref).abs().max() < ATOL
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_decode_steps_match_hf(ours, hf):
    steps = Steps(ours)
    rows = [steps.new_request() for _ in PROMPTS]
    seqs = {r: list(p) for r, p in zip(rows, PROMPTS)}
    logits = steps.step(dict(seqs))
    decoded = []  # logits of each decode step, [B, V]
    for _ in range(4):
        for r, t in zip(rows, logits.argmax(-1).tolist()):
            seqs[r].append(t)
        batch = steps.batch({r: [seqs[r][-1]] for r in rows})
        assert batch.is_decode
        logits = ours.model(batch)
        decoded.append(logits)
    # Causal: HF's logits at position p of the final sequence are those after its first p+1
    # tokens, so one HF forward per request checks every decode step.
    for i, r in enumerate(rows):
        ref = hf_logits(hf, seqs[r])[len(PROMPTS[i]):]
        got = torch.stack([step[i] for step in decoded])
        assert (got - ref).abs().max() < ATOL
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_one_token_steps_match_hf(ours, hf):
    """Steps of one token run the fused-GEMV layers (llama.FUSED_MAX_TOKENS; the references
    on the CPU): a one-token prompt, then decode steps, against HF at every position."""
    assert ours.model.fused_small
    steps = Steps(ours)
    row = steps.new_request()
    seq = [PROMPTS[1][0]]
    got = [steps.step({row: seq})[0]]
    for _ in range(3):
        seq.append(int(got[-1].argmax()))
        batch = steps.batch({row: [seq[-1]]})
        assert batch.num_tokens <= llama.FUSED_MAX_TOKENS
        got.append(ours.model(batch)[0])
    ref = hf_logits(hf, seq)
    assert (torch.stack(got) - ref).abs().max() < ATOL
    assert torch.equal(torch.stack(got).argmax(-1), ref.argmax(-1))


def test_chunked_prefill_equals_one_shot(ours):
    prompt = PROMPTS[2]
    one_shot = Steps(ours)
    expected = one_shot.step({one_shot.new_request(): prompt})[0]

    steps = Steps(ours)
    row, other = steps.new_request(), steps.new_request()
    steps.step({row: prompt[:10], other: PROMPTS[1]})
    # A middle chunk batched with a decode of another request: a mixed extend step.
    mixed = steps.batch({row: prompt[10:19], other: [42]})
    assert not mixed.is_decode and mixed.prefix_lens.tolist() == [10, len(PROMPTS[1])]
    ours.model(mixed)
    last = steps.step({row: prompt[19:]})[0]
    assert (last - expected).abs().max() < 1e-4
    assert last.argmax() == expected.argmax()


def test_mixed_batch_parts_are_packed_aligned(ours):
    """Decodes first, then a prompt chunk: build() counts the decodes, packs the decode and
    extend parts separately, and every view starts 16-byte aligned (Triton compiles one
    kernel variant per alignment pattern of its pointer arguments)."""
    steps = Steps(ours)
    a, b, c = (steps.new_request() for _ in range(3))
    steps.step({a: PROMPTS[0], b: PROMPTS[1]})
    fb = steps.batch({a: [42], b: [43], c: PROMPTS[2][:7]})
    n0, n1 = len(PROMPTS[0]), len(PROMPTS[1])
    assert fb.num_decode == 2 and fb.decode_max_seq_len == max(n0, n1) + 1
    (d_rows, d_seq), (e_rows, e_pre, e_ext, e_start) = fb.mixed_parts
    assert d_rows.tolist() == [a, b] and d_seq.tolist() == [n0 + 1, n1 + 1]
    assert (e_rows.tolist(), e_pre.tolist(), e_ext.tolist(), e_start.tolist()) == ([c], [0], [7], [2])
    for t in (fb.input_ids, fb.positions, fb.out_cache_loc, fb.token_rows, fb.logits_index,
              fb.req_rows, fb.prefix_lens, fb.extend_lens, fb.seq_lens, fb.q_start_loc,
              d_rows, d_seq, e_rows, e_pre, e_ext, e_start):
        assert t.data_ptr() % 16 == 0
    assert fb.positions.tolist() == [n0, n1] + list(range(7))


def test_first_layer_attention_input_writes_its_stream_into_residual_out(ours):
    """Layer 0's stream is its input x itself: with residual_out given (the prefill graphs'
    float32 stream) x goes there, as rms_norm's residual_out does on the later layers, and
    the norm still reads x."""
    layer = ours.model.layers[0]
    x = torch.randn(3, ours.config.hidden_size)
    buf = torch.zeros_like(x)
    h, stream = layer.attention_input(x, None, buf)
    assert stream.data_ptr() == buf.data_ptr() and torch.equal(buf, x)
    assert torch.equal(h, layer.attention_input(x, None)[0])
