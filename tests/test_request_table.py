"""The native request table: allocation, errors, zero-copy columns, gathers, stop check."""

import numpy as np
import pytest

from aiollm.native import FinishReason, RequestTable, ReqState, TableError
from aiollm.native.request_table import REQ_DTYPE


def test_alloc_free_cycle_is_o1_stack():
    t = RequestTable(8)
    slots = [t.alloc() for _ in range(8)]
    assert sorted(slots) == list(range(8))
    assert t.n_free == 0 and t.n_used == 8
    t.free(3)
    t.free(5)
    assert t.n_free == 2
    assert t.alloc() == 5  # last freed is handed out first
    assert t.alloc() == 3


def test_alloc_resets_fields():
    t = RequestTable(2)
    s = t.alloc()
    t[s]["output_len"] = 77
    t[s]["temperature"] = 0.5
    t.free(s)
    s2 = t.alloc()
    assert s2 == s
    assert t[s2]["output_len"] == 0
    assert t[s2]["temperature"] == 1.0
    assert t[s2]["top_k"] == -1
    assert t[s2]["state"] == ReqState.WAITING


def test_errors():
    t = RequestTable(2)
    a = t.alloc()
    t.alloc()
    with pytest.raises(TableError, match="full"):
        t.alloc()
    t.free(a)
    with pytest.raises(TableError, match="already free"):
        t.free(a)
    with pytest.raises(TableError, match="out of range"):
        t.free(2)
    with pytest.raises(TableError, match="out of range"):
        t.free(-1)
    with pytest.raises(TableError, match="out of range"):
        t[5]
    with pytest.raises(TableError, match="out of range"):
        t.gather("output_len", np.array([1, 9]))
    with pytest.raises(TableError, match="not in use"):
        t.gather("output_len", np.array([a]))
    with pytest.raises(KeyError):
        t.col("nonsense")
    with pytest.raises(ValueError):
        RequestTable(0)
    # the table is intact after all those errors
    assert t.n_free == 1 and t.alloc() == a


def test_columns_are_zero_copy_views():
    t = RequestTable(16)
    col = t.col("kv_len")
    assert col.base is not None and not col.flags.owndata
    s = t.alloc()
    col[s] = 123  # numpy write is visible through the record view and the C gather
    assert t[s]["kv_len"] == 123
    assert t.gather("kv_len", np.array([s]))[0] == 123
    t[s]["prompt_len"] = 9
    assert t.col("prompt_len")[s] == 9
    assert np.shares_memory(t.col("kv_len"), t.array)


def test_struct_layout_matches_c():
    from aiollm.native._table import ffi

    assert REQ_DTYPE.itemsize == ffi.sizeof("aio_req")
    for name, field in ffi.typeof("aio_req").fields:
        assert REQ_DTYPE.fields[name][1] == field.offset


def test_gather_all_field_kinds():
    rng = np.random.default_rng(0)
    t = RequestTable(64)
    slots = np.array([t.alloc() for _ in range(40)], dtype=np.int32)
    t.col("seed")[slots] = rng.integers(0, 2**62, len(slots))
    t.col("temperature")[slots] = rng.random(len(slots)).astype(np.float32)
    t.col("req_row")[slots] = rng.integers(0, 1000, len(slots))
    pick = rng.permutation(slots)[:25]
    for field in ("seed", "temperature", "req_row"):
        got = t.gather(field, pick)
        assert got.dtype == REQ_DTYPE.fields[field][0]
        np.testing.assert_array_equal(got, t.col(field)[pick])
    out = np.empty(len(pick), dtype=np.int32)
    assert t.gather("req_row", pick, out=out) is out
    with pytest.raises(ValueError):
        t.gather("stop_ids", pick)


def _stop_check_py(rec, tok, eos, stop_ids):
    rec = dict(rec)
    rec["output_len"] += 1
    reason = 0
    if rec["output_len"] >= rec["min_new_tokens"]:
        if tok in stop_ids:
            reason = FinishReason.STOP
        elif not rec["ignore_eos"] and tok in eos:
            reason = FinishReason.STOP
    if reason == 0 and rec["output_len"] >= rec["max_new_tokens"]:
        reason = FinishReason.LENGTH
    return reason, rec["output_len"]


@pytest.mark.parametrize("seed", range(5))
def test_stop_check_matches_python(seed):
    rng = np.random.default_rng(seed)
    t = RequestTable(300)
    slots = np.array([t.alloc() for _ in range(256)], dtype=np.int32)
    vocab = 20
    eos = np.array([0, 1], dtype=np.int32)
    t.col("output_len")[slots] = rng.integers(0, 10, len(slots))
    t.col("max_new_tokens")[slots] = rng.integers(1, 12, len(slots))
    t.col("min_new_tokens")[slots] = rng.integers(0, 6, len(slots))
    t.col("ignore_eos")[slots] = rng.integers(0, 2, len(slots))
    stop_ids = {}
    for s in slots:  # more than a record's 8 too: the rest are checked on the host
        stop_ids[s] = list(rng.choice(vocab, rng.integers(0, 13), replace=False))
        t.set_stop_ids(int(s), stop_ids[s])
    before = [
        {k: (t[s][k].copy() if k == "stop_ids" else t[s][k].item()) for k in REQ_DTYPE.names}
        for s in slots
    ]
    tokens = rng.integers(0, vocab, len(slots)).astype(np.int32)
    got = t.stop_check(slots, tokens, eos, now_ns=1234)
    for i, s in enumerate(slots):
        reason, out_len = _stop_check_py(before[i], int(tokens[i]), eos, stop_ids[s])
        assert got[i] == reason, (i, before[i], tokens[i])
        assert t[s]["output_len"] == out_len
        assert t[s]["finish_reason"] == reason
        assert t[s]["t_last_token"] == 1234
        if reason:
            assert t[s]["t_finish"] == 1234


def test_stop_check_rejects_free_slot():
    t = RequestTable(4)
    s = t.alloc()
    t.free(s)
    with pytest.raises(TableError, match="not in use"):
        t.stop_check(np.array([s]), np.array([1]), np.array([0]), 0)


def test_a_slot_takes_any_number_of_stop_ids():
    """set_stop_ids refused more than the 8 ids a record holds. The rest now live on the
    host: the stop check ends a request on any of its ids (not before min_new_tokens, and
    before max_new_tokens would), stop_ids() lists them all, and a freed slot forgets them."""
    t = RequestTable(4)
    a, b = t.alloc(), t.alloc()
    many = list(range(100, 130))
    t.set_stop_ids(a, many)
    t.set_stop_ids(b, [7])
    t.col("max_new_tokens")[[a, b]] = 3
    t.col("min_new_tokens")[a] = 2
    slots = np.array([a, b], dtype=np.int32)
    got = t.stop_check(slots, np.array([129, 129]), np.array([0]), now_ns=5)
    assert got.tolist() == [0, 0]  # a: before min_new_tokens; b: no stop id of its own
    got = t.stop_check(slots, np.array([129, 7]), np.array([0]), now_ns=6)
    assert got.tolist() == [FinishReason.STOP, FinishReason.STOP]
    assert t[a]["finish_reason"] == FinishReason.STOP and t[a]["t_finish"] == 6
    all_ids = t.stop_ids(slots)
    assert all_ids.shape == (2, 30) and sorted(all_ids[0]) == many
    assert all_ids[1].tolist() == [7] + [-1] * 29
    # at max_new_tokens, a host-held stop id is a stop, as a record's is
    t.col("output_len")[a] = 2
    assert t.stop_check(slots[:1], np.array([120]), np.array([0]), 7).tolist() == [
        FinishReason.STOP]
    t.free(a)
    c = t.alloc()
    assert c == a and t.stop_ids(np.array([c])).shape == (1, 0)
    t.col("max_new_tokens")[c], t.col("output_len")[c] = 9, 0
    assert t.stop_check(np.array([c]), np.array([129]), np.array([0]), 8).tolist() == [0]
    t.set_stop_ids(c, many)
    t.set_stop_ids(c, [1, 2])  # replaced: the host's part goes too
    assert t.stop_ids(np.array([c])).tolist() == [[1, 2]]


def test_gather_fields_packed_record():
    rng = np.random.default_rng(1)
    t = RequestTable(32)
    slots = np.array([t.alloc() for _ in range(20)], dtype=np.int32)
    t.col("seed")[slots] = rng.integers(0, 2**62, len(slots))
    t.col("top_p")[slots] = rng.random(len(slots)).astype(np.float32)
    t.col("kv_len")[slots] = rng.integers(0, 5000, len(slots))
    pick = rng.permutation(slots)[:13]
    rec = t.gather_fields(("kv_len", "seed", "top_p"), pick)
    for f in ("kv_len", "seed", "top_p"):
        np.testing.assert_array_equal(rec[f], t.col(f)[pick])
    with pytest.raises(KeyError):
        t.gather_fields(("stop_ids",), pick)
    t.free(int(pick[0]))
    with pytest.raises(TableError, match="not in use"):
        t.gather_fields(("kv_len",), pick)
