"""The step log (AIOLLM_STEP_LOG, aiollm/engine/step_log.py): an Engine that stops writes one
JSON line per step it ran, with the step's size and its times in order."""

from __future__ import annotations

import asyncio
import json

import pytest

from test_tensor_parallel import tiny_model  # noqa: F401  (a pytest fixture)

from aiollm.engine import Engine
from aiollm.sampling_params import SamplingParams


def test_a_stopped_engine_writes_an_entry_a_step(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    path = tmp_path / "steps.jsonl"
    monkeypatch.setenv("AIOLLM_STEP_LOG", str(path))

    async def run():
        async with Engine(tiny_model, device="cpu", kv_tokens=256, max_model_len=64) as engine:
            params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
            return await engine.generate([3, 17, 99], params)

    assert len(asyncio.run(run()).token_ids) == 5
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    # the prefill gives the first token, a decode step each of the other four; the loop runs
    # one step ahead, so a fifth decode may have been launched before the request ended
    assert len(recs) in (5, 6)
    assert (recs[0]["reqs"], recs[0]["tokens"], recs[0]["prefill_tokens"]) == (1, 3, 3)
    assert all((r["reqs"], r["tokens"], r["prefill_tokens"]) == (1, 1, 0) for r in recs[1:])
    assert all(r["launched"] <= r["done_seen"] <= r["processed"] for r in recs)
    assert all(r["device_s"] is None and r["forward_s"] is None for r in recs)  # CPU: no events


def test_kernel_compiles_get_entries_of_their_own(tmp_path):
    """The log watches Triton's JIT hooks while it is open: a compile becomes an entry with
    its kernel, start and seconds; the hook before the compile must not skip it (a true
    return would); writing the log gives the hooks back."""
    knobs = pytest.importorskip("triton").knobs
    from aiollm.engine.step_log import StepLog

    log = StepLog(str(tmp_path / "steps.jsonl"))
    rt = knobs.runtime
    assert rt.jit_cache_hook is not None and rt.jit_post_compile_hook is not None

    class Fn:
        name = "_rms_norm_kernel"
    assert not rt.jit_cache_hook(key="k", repr="r", fn=Fn(), compile={},
                                 is_manual_warmup=False, already_compiled=False)
    rt.jit_post_compile_hook(key="k", repr="r", fn=Fn(), compile={}, is_manual_warmup=False,
                             already_compiled=False)
    log.write()
    assert rt.jit_cache_hook is None and rt.jit_post_compile_hook is None
    (rec,) = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert rec["compile"] == "_rms_norm_kernel" and rec["s"] >= 0 and rec["at"] > 0
