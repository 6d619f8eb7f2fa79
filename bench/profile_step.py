"""Where a decode step's device time goes: kernels of an eager decode, grouped by name.

    python bench/profile_step.py bench/configs/llama-3.1-8b --batch 1

Runs one request (random weights, --load-format dummy) through the Engine with CUDA graphs
off under torch.profiler, and prints each kernel's device time per decode step with its share
of the step. The kernels are the ones the graph replays; only the launch gaps differ.
"""

from __future__ import annotations

import argparse
import asyncio
import collections

import torch


async def profile(model_dir: str, batch: int, input_len: int, steps: int, tokenizer):
    from aiollm import Engine, SamplingParams

    eng = Engine(model_dir, load_format="dummy", dtype="bfloat16", cuda_graph=False,
                 max_model_len=input_len + steps + 8, kv_tokens=batch * (input_len + steps + 8),
                 max_running_requests=batch, tokenizer=tokenizer)
    await eng.start()
    params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    prompts = torch.randint(0, 30000, (batch, input_len)).tolist()
    try:
        await asyncio.gather(*(eng.generate(p, SamplingParams(max_tokens=4, temperature=0))
                               for p in prompts))  # warm-up: compile and tune the kernels
        # prefill first, outside the trace, so the trace holds decode steps only
        streams = [eng.stream(p, params) for p in prompts]
        firsts = [s.__anext__() for s in streams]
        await asyncio.gather(*firsts)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            async def drain(s):
                async for _ in s:
                    pass
            await asyncio.gather(*(drain(s) for s in streams))
            torch.cuda.synchronize()
    finally:
        await eng.stop()
    return prof, steps - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    prof, n = asyncio.run(profile(args.model, args.batch, args.input_len, args.steps,
                                  args.tokenizer))
    per = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name][0] += e.device_time_total if hasattr(e, "device_time_total") \
                else e.cuda_time_total
            per[e.name][1] += 1
    total = sum(t for t, _ in per.values())
    print(f"decode steps: {n}; device time per step {total / n / 1e3:.3f} ms (kernels and copies)")
    print(f"{'us/step':>9} {'share':>6} {'calls/step':>10}  kernel")
    for name, (t, c) in sorted(per.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{t / n:9.1f} {t / total:6.1%} {c / n:10.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
