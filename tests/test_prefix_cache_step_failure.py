"""The prefix cache after a failed step. A GPU step fails asynchronously: its done event
raises once the loop has planned (and launched) the next step, whose admissions may already
reuse the KV the failed step was to write. On the CPU a step fails at once, so the tests
inject the GPU's kind of failure: the step's launch returns normally, its done event raises,
and the KV it wrote is overwritten with garbage (what a failed device leaves there).

What must hold: no request goes on with KV of the failed step (it fails with the step's
error, as the step's own requests do), none of that KV stays in the cache for later
requests (they get the same tokens as before the failure), and every slot and reference
comes back (the invariants of tests/test_prefix_cache.py).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from test_prefix_cache import check_every_step, check_invariants

from aiollm import Engine, SamplingParams
from aiollm.errors import RequestFailed
from conftest import run, tiny_llama

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
GARBAGE = 50.0  # what the failed step leaves in its KV slots


class _FailingDone:
    """A device event whose step failed: not done, and its wait raises."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        raise RuntimeError("injected asynchronous step failure")


@pytest.fixture
def tiny(tmp_path):
    return tiny_llama(tmp_path, vocab_size=256, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, max_position_embeddings=512)


def fail_steps(eng: Engine, which, count: int = 1) -> tuple[list[np.ndarray], object]:
    """Make `count` launched steps in a row fail as GPU steps do (a device's error is
    sticky: the steps after a failed one fail too), from the first for which which(step) is
    true: their KV slots are filled with GARBAGE and their done events raise. Returns a list
    that gets the failed steps' KV slots, and a function that ends the injection (the steps
    after it run as usual)."""
    prepare, launch = eng.runner.prepare, eng.runner.launch
    planned, failed = [], []

    def spy_prepare(step, table):
        planned.append(step)
        return prepare(step, table)

    def failing_launch(inp):
        out = launch(inp)
        step = planned[-1]
        if len(failed) < count and (failed or which(step)):
            loc = torch.as_tensor(step.out_cache_loc)
            for cache in (*eng.kv_pool.k_cache, *eng.kv_pool.v_cache):
                cache[loc] = GARBAGE
            out.done = _FailingDone()
            failed.append(step.out_cache_loc.copy())
        return out

    def restore():
        eng.runner.prepare, eng.runner.launch = prepare, launch

    eng.runner.prepare, eng.runner.launch = spy_prepare, failing_launch
    return failed, restore


def chunk_ending_at(prompt: list[int], end: int):
    """The step predicate for fail_steps: the step holds the chunk of the request on
    `prompt` that ends at token `end`."""
    return lambda s: any(r.prompt_ids == prompt and p + n == end
                         for r, p, n in zip(s.reqs, s.prefix_lens, s.extend_lens))


def a_and_b_prompts() -> tuple[list[int], list[int]]:
    """A's 110-token prompt, and B's: A's first 100 tokens and one more."""
    a_prompt = np.random.default_rng(5).integers(3, 256, 110).tolist()
    return a_prompt, a_prompt[:100] + [9]


def garbage_cached(eng: Engine) -> int:
    """Slots of the prefix cache whose KV is the garbage a failed step left."""
    out, stack = [], [eng.prefix_cache.tree.root]
    while stack:
        node = stack.pop()
        out.append(node.slots)
        stack.extend(node.children.values())
    k = eng.kv_pool.k_cache[0][torch.as_tensor(np.concatenate(out))]
    return int((k == GARBAGE).flatten(1).all(1).sum())


def failure_scenario(tiny, body) -> None:
    """Run `await body(eng)` on a started engine of `tiny` (1,024 KV slots, 16-token prefill
    chunks), then check what must hold after failed steps: the prefix cache's invariants,
    no garbage cached, no KV slot or request left."""
    loop = asyncio.new_event_loop()

    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=1024, max_prefill_tokens=16)
        await eng.start()
        try:
            await body(eng)
            check_invariants(eng)
            assert garbage_cached(eng) == 0
            assert eng.stats()["kv_used"] == 0
            assert not eng._requests
        finally:
            await eng.stop()

    try:
        run(loop, go(), 120)
    finally:
        loop.close()


@pytest.mark.parametrize("fail_at", [48, 110])
def test_a_hit_on_a_failed_steps_chunk_fails_and_leaves_no_kv_in_the_cache(tiny, fail_at):
    """A prefills a 110-token prompt in 16-token chunks; B (its first 100 tokens and one
    more) waits for it and is admitted in the step after A's last chunk, reusing that chunk.
    The step of A's chunk that ends at token `fail_at` fails after the next step was planned.
    At 110, B went on with the garbage and gave wrong tokens, and after B's end the garbage
    stayed cached for every later request with that prefix (the flush after the failure
    left it, as B held it). At 48, the next step holds A's next chunk, which the cache has
    too: B, not yet admitted, computes its prompt itself."""
    a_prompt, b_prompt = a_and_b_prompts()

    async def body(eng):
        ref = (await eng.generate(b_prompt, GREEDY)).token_ids
        eng.flush_cache()
        steps = check_every_step(eng)
        failed, _ = fail_steps(eng, chunk_ending_at(a_prompt, fail_at))
        a, b = await asyncio.gather(eng.generate(a_prompt, GREEDY),
                                    eng.generate(b_prompt, GREEDY), return_exceptions=True)
        assert failed and steps[0] > 0
        assert isinstance(a, RequestFailed), a
        if fail_at == 110:  # B read the failed step's KV: it fails as A does
            assert isinstance(b, RequestFailed) and "step failed" in str(b), b
        else:
            assert b.token_ids == ref and b.cached_tokens == 0
        check_invariants(eng)
        assert garbage_cached(eng) == 0
        again = await eng.generate(b_prompt, GREEDY)
        assert again.token_ids == ref
        assert eng.stats()["kv_used"] == 0

    failure_scenario(tiny, body)
