"""A rank that fails its load at start-up (tensor parallelism on the CPU, gloo, 2 ranks):
the user sees that rank's own error (its number, exception type and message), from Engine
and from `aiollm serve`, not rank 0's gloo "Connection closed by peer"; no rank is left.

Rank 1 alone fails: a sitecustomize on the children's PYTHONPATH makes the rank-model build
of rank 1 (and of no other rank) raise, as a rank's own shard check or out-of-memory would."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from test_tensor_parallel import AIOLLM, _children, tiny_model  # noqa: F401 - a fixture

from aiollm.engine import Engine

FAULT = "MemoryError: rank 1 ran out of memory loading its shard"
_SITECUSTOMIZE = f'''
import aiollm.engine.loading as loading
_build = loading.build_rank_model
def build_rank_model(cfg, loaded, device, dtype, tp, *rest):
    if tp is not None and tp.rank == 1:
        raise MemoryError("{FAULT.split(": ", 1)[1]}")
    return _build(cfg, loaded, device, dtype, tp, *rest)
loading.build_rank_model = build_rank_model
'''


@pytest.fixture
def rank1_fails(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the spawned ranks' (this one has started)


def test_engine_raises_the_failing_ranks_error(tiny_model, rank1_fails):  # noqa: F811
    async def start():
        async with Engine(tiny_model, device="cpu", tensor_parallel_size=2, kv_tokens=256,
                          max_model_len=128):
            pass

    with pytest.raises(RuntimeError) as got:
        asyncio.run(start())
    assert str(got.value) == f"tensor parallel rank 1 failed: {FAULT}"
    assert _children(__import__("os").getpid()) == []


def test_serve_exits_with_the_failing_ranks_error(tiny_model, rank1_fails):  # noqa: F811
    proc = subprocess.run([AIOLLM, "serve", tiny_model, "--device", "cpu", "--kv-tokens", "256",
                           "--max-model-len", "128", "--tensor-parallel-size", "2",
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    tail = out.strip().splitlines()[-1]
    assert f"tensor parallel rank 1 failed: {FAULT}" in tail, out
    assert "Connection closed by peer" not in tail, out
