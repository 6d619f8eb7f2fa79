"""Engine.predicted_kv_peak (LightLLM's /token_load reads it as dynamic_max_load): the most
KV the running requests are predicted to hold, checked against what the pool holds as a
request of known length runs."""

from __future__ import annotations

import asyncio

import pytest

from aiollm import Engine, SamplingParams

NEW_TOKENS = 12


@pytest.mark.parametrize("scheduler", ["past_future", "aggressive"])
def test_a_request_of_known_length_is_predicted_to_hold_what_it_will_hold(scheduler):
    """A request of ignore_eos runs exactly max_tokens, so its peak is known: its prompt
    and every output token but the last (whose KV no step writes). Read between steps,
    the prediction was that plus its pending token and one more (20 slots for a pool that
    held 18 at most): a LightLLM router saw dynamic_max_load above 1 for a pool the
    scheduler had filled exactly, with nothing ever paused."""

    async def main():
        async with Engine(None, kv_tokens=512, max_model_len=512, scheduler=scheduler,
                          prefix_cache=False) as engine:
            ids = engine.tokenizer.encode("One two three four five six seven")
            seen = []
            params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=0)
            async for _ in engine.stream(ids, params):
                seen.append((engine.predicted_kv_peak(), engine.stats()["kv_used"]))
            return len(ids), seen

    n_prompt, seen = asyncio.run(main())
    final = n_prompt + NEW_TOKENS - 1
    assert max(used for _, used in seen) == final, seen  # what the pool did hold
    running = seen[:-1]  # the last delta comes once the request has finished
    assert running and all(peak == final for peak, _ in running), repr((final, seen))
    assert seen[-1] == (0, 0), seen
