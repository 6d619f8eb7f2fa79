"""A closed LLM or a stopped Engine that its owner drops is freed at once, by reference
counting alone: its engine, request table (native memory), prefix-cache tree, metrics and
event loop. They sat in reference cycles (the engine's metrics, planner and health probe held
the engine back, every prefix-cache node its parent), so they lived until Python's collector
happened to run: 25 LLM()/generate/close cycles grew a process from 342 to 574 MB. The tests
run with the collector off, which makes any cycle left a failure. The cycles were the
engine's, whatever its model: the tests run conftest's tiny random Llama (`tiny`)."""

from __future__ import annotations

import gc
import weakref

import pytest

from aiollm import LLM, Engine, SamplingParams
from conftest import run

FAST = dict(kv_tokens=1024, max_model_len=256, warm_up=False)


def held(eng: Engine) -> dict[str, weakref.ref]:
    """Weak references to what a used engine owns, by name."""
    tree = eng.prefix_cache.tree
    assert tree.root.children  # the prompt's prefix was cached: nodes with parents
    return {"engine": weakref.ref(eng), "table": weakref.ref(eng.table),
            "metrics": weakref.ref(eng.metrics),
            # a cached prefix's KV slot ids (host memory of the tree)
            "cached slots": weakref.ref(next(iter(tree.root.children.values())).slots),
            "event loop": weakref.ref(eng._event_loop)}


def alive(refs: dict[str, weakref.ref]) -> list[str]:
    return [name for name, ref in refs.items() if ref() is not None]


def garbage() -> list[str]:
    """The types of what a collection finds unreachable now (and frees)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "dropped-unclosed"])
def test_a_dropped_llm_is_freed_without_the_collector(tiny, closed):
    """Closed then dropped, or dropped unclosed (its finalizer stops the engine and ends
    its thread): nothing of it is left once its thread has ended."""
    gc.collect()
    gc.disable()
    try:
        llm = LLM(tiny, load_format="dummy", **FAST)
        out = llm.generate(["Hello there"], SamplingParams(max_tokens=2), progress=False)
        assert len(out[0].outputs[0].token_ids) == 2
        refs, thread = held(llm.engine), llm._thread.thread
        del out  # (outputs hold no engine; dropped so only the LLM is left)
        gc.collect()  # what the load left (first imports)
        if closed:
            llm.close()
        del llm
        thread.join(30)
        assert not thread.is_alive()
        assert alive(refs) == []
        # nothing of it is left to the collector (each metrics gauge was a cycle)
        assert garbage() == []
    finally:
        gc.enable()


def test_an_engine_stopped_after_a_restart_is_freed_without_the_collector(loop, tiny):
    """Started again after a stop, then stopped and dropped: the engine of each start is
    freed, also the first start's parts it replaced."""
    async def go() -> tuple[dict, dict]:
        eng = Engine(tiny, load_format="dummy", **FAST)
        await eng.start()
        await eng.generate("Hello there", SamplingParams(max_tokens=2))
        first = held(eng)
        await eng.stop()
        await eng.start()
        await eng.generate("Hello there", SamplingParams(max_tokens=2))
        assert alive(first) == ["engine", "event loop"]  # the first start's parts are gone
        second = held(eng)
        await eng.stop()
        return first, second

    gc.collect()
    gc.disable()
    try:
        first, second = run(loop, go())
        del first["event loop"], second["event loop"]  # the test module's loop: it lives
        assert alive(first) == alive(second) == []
    finally:
        gc.enable()
