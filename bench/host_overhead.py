"""Host time per engine step, measured on the CPU with a tiny random model.

The engine loop's own work (planning, batch metadata from the request table, stop checks,
waking streams) is what a GPU cannot hide unless the loop overlaps it with the next step. A
2-layer model with 64-wide layers makes the model's share small, so the engine's
`aiollm_step_host_seconds` histogram shows the loop's cost per decode step at each batch size.
Usage: python bench/host_overhead.py [--batch 1 16 64 256] [--steps 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
}


def _hist(metric) -> tuple[float, float]:
    samples = {s.name: s.value for s in metric.collect()[0].samples}
    name = metric._name
    return samples[f"{name}_sum"], samples[f"{name}_count"]


async def measure(model_dir: str, batch: int, steps: int) -> dict:
    from aiollm import Engine, SamplingParams

    async with Engine(model_dir, load_format="dummy", kv_tokens=batch * (steps + 64),
                      max_running_requests=batch) as eng:
        params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
        await eng.generate([1, 2, 3], SamplingParams(max_tokens=4))  # warm-up
        h0, m0 = _hist(eng.metrics.step_host), _hist(eng.metrics.step_model)
        await asyncio.gather(*(eng.generate([5 + i % 100] * 16, params) for i in range(batch)))
        h1, m1 = _hist(eng.metrics.step_host), _hist(eng.metrics.step_model)
    n = h1[1] - h0[1]
    return {"steps": n, "host_ms": 1e3 * (h1[0] - h0[0]) / n,
            "model_ms": 1e3 * (m1[0] - m0[0]) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(TINY))
        for b in args.batch:
            rows[b] = asyncio.run(measure(d, b, args.steps))
            r = rows[b]
            print(f"batch {b:4d}: host {r['host_ms']:6.2f} ms/step  model {r['model_ms']:6.2f} "
                  f"ms/step  ({r['steps']:.0f} steps)")
    commit = tree_commit()
    write_report(result_path("host-overhead"), {
        "bench": "host_overhead", "date": str(date.today()), "commit": commit,
        "machine": "CPU", "steps": args.steps, "batches": rows}, indent=2)


if __name__ == "__main__":
    main()
