"""Where the host's time per decode step goes: cProfile while one request decodes (random
weights, CUDA graphs on). On Python 3.12+ one profiler sees every thread (sys.monitoring),
so the event loop, the model thread and the event waiter are all in it.

    python bench/profile_host.py bench/configs/llama-3.2-1b --tokenizer DIR
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

import torch


async def decode(model_dir: str, steps: int, tokenizer):
    from aiollm import Engine, SamplingParams

    eng = Engine(model_dir, load_format="dummy", dtype="bfloat16", max_model_len=1024,
                 kv_tokens=4096, max_running_requests=8, cuda_graph_max_batch=8,
                 tokenizer=tokenizer)
    await eng.start()
    prompt = torch.randint(0, 30000, (128,)).tolist()
    params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    try:
        await eng.generate(prompt, SamplingParams(max_tokens=8, temperature=0))
        loop_prof = cProfile.Profile()
        t0 = time.perf_counter()
        loop_prof.enable()
        await eng.generate(prompt, params)
        loop_prof.disable()
        dt = time.perf_counter() - t0
    finally:
        await eng.stop()
    return loop_prof, dt


def show(title: str, prof: cProfile.Profile, steps: int, top: int) -> None:
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    print(f"== {title}: {st.total_tt / steps * 1e3:.3f} ms/step of CPU in profiled functions")
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats("aiollm", top)
    print("\n".join(s.getvalue().splitlines()[6:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    prof, dt = asyncio.run(decode(args.model, args.steps, args.tokenizer))
    print(f"{args.steps} tokens in {dt:.3f} s: {dt / args.steps * 1e3:.3f} ms/token (profiled)")
    show("all threads", prof, args.steps, args.top)


if __name__ == "__main__":
    main()
