"""Time one batch-1 decode step's CUDA graph under kernel variants, round-robin in one process.

    python bench/decode_step.py bench/configs/llama-3.2-1b --tokenizer tok \
        --variant base '{}' --variant no-pdl '{"pdl": false}' \
        --variant attn64 '{"cfg": {"decode_attention": {"KEY": {...}}}}'

Loads the model once (random weights), gives request row 0 a context of --context tokens,
then captures the engine's own decode graph (engine/cuda_graph.py, batch 1) once per variant
and times its replays with CUDA events: --rounds rounds over all variants in turn, --replays
replays each, median per variant. Nothing is tuned (AIOLLM_AUTOTUNE=0): the graph takes the
committed configs, with a variant's "cfg" ({kernel: {shape key: config}}) laid over them.
A variant may also set "pdl" (false: plain launches), "merge" (decode attention's split
outputs merged in its own launch, else by a reduce launch), "attn_oproj" (true or false:
attention, o_proj and the residual add in one kernel, kernels/attention_oproj.py; default
that module's ENABLED: where a config is committed for the shape) and "skip", a list of
parts left out of the graph (what the step costs without them, a bound, not a model; the
outputs are garbage): "attention" (the attention kernel, of the unfused path),
"attention_block" (qkv, attention, o_proj), "mlp" (gate/up and down), "layers" (every
layer: embedding, lm_head and sampling remain).
Prints µs per step and the step's share of the weight-read roofline (--copy-tbs, the copy
bandwidth bench/decode.py measures), and writes the timings and each variant's spec as JSON
to --out when given. With --combine it then takes,
for each shape key, the fastest variant that changes only that key's config and beat "base"
by more than base's own spread, and times all of those together against base again: a
tuner by step time, for the one-row configs that kernels timed alone choose badly (a GEMV
timed alone cannot show what programmatic dependent launch overlaps in a step).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys

import torch

os.environ["AIOLLM_AUTOTUNE"] = "0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"),
                    default=[])
    ap.add_argument("--variants", default=None, help="a JSON file of {name: spec}, after --variant")
    ap.add_argument("--context", type=int, default=192, help="tokens already in the KV cache")
    ap.add_argument("--max-model-len", type=int, default=264,
                    help="the graph's longest context (bench/decode.py's: 128 + 128 + 8)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--copy-tbs", type=float, default=4.25)
    ap.add_argument("--combine", action="store_true",
                    help="then time the base against every single-key config that beat it")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from aiollm import Engine
    from aiollm.engine.cuda_graph import DecodeGraphs
    import importlib

    from aiollm.kernels import attention_oproj, autotune, pdl
    from aiollm.model import attention, llama, mlp

    # the module: aiollm.kernels exports a function of the same name, on which a variant's
    # "merge" would be set without effect (as it was until 2026-12-04)
    decode_attention = importlib.import_module("aiollm.kernels.decode_attention")

    eng = Engine(args.model, load_format="dummy", dtype="bfloat16", cuda_graph=False,
                 max_model_len=args.max_model_len, kv_tokens=args.max_model_len + 8,
                 max_running_requests=1, tokenizer=args.tokenizer)
    eng._load()
    runner = eng.runner
    model, kv_pool, r2t = runner.model, runner.kv_pool, runner.r2t
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roof_ms = weight_bytes / (args.copy_tbs * 1e12) * 1e3
    ctx = args.context
    assert ctx + 1 <= args.max_model_len
    r2t.table[0, :ctx] = torch.arange(ctx, dtype=torch.int32, device=r2t.table.device)
    for cache in (*kv_pool.k_cache, *kv_pool.v_cache):  # attention on data, not zeros
        cache.normal_(0, 1)

    slug = autotune.gpu_slug(torch.cuda.current_device())
    base_table = copy.deepcopy(autotune._table(slug))
    variants = [(n, json.loads(s)) for n, s in args.variant]
    if args.variants:
        with open(args.variants) as f:
            variants += list(json.load(f).items())
    skips = {
        "attention": (attention.Attention, "attend", lambda self, q, batch: q),
        "attention_block": (attention.Attention, "forward_small", lambda self, r, *a: r),
        "mlp": (mlp.MLP, "forward_small", lambda self, r, norm: r),
        "layers": (llama.DecoderLayer, "forward_small", lambda self, r, *a: r),
    }
    plain = {part: getattr(cls, attr) for part, (cls, attr, _) in skips.items()}
    fused_default = attention_oproj.ENABLED
    def capture(v: dict):
        table = copy.deepcopy(base_table)
        for kernel, entries in v.get("cfg", {}).items():
            table.setdefault(kernel, {}).update(entries)
        autotune._tables[slug] = table
        autotune._resolved.clear()
        attention_oproj._committed.cache_clear()  # ENABLED None reads this variant's table
        pdl._ON = v.get("pdl", True)
        decode_attention.MERGE_IN_KERNEL = v.get("merge", True)
        # the attention kernel is left out of the unfused path only
        attention_oproj.ENABLED = v.get(
            "attn_oproj", False if "attention" in v.get("skip", []) else fused_default)
        for part in v.get("skip", []):
            cls, attr, stub = skips[part]
            setattr(cls, attr, stub)
        try:
            g = DecodeGraphs(model, kv_pool, r2t, runner._prev_ids, 1)
        finally:
            for part, fn in plain.items():
                setattr(skips[part][0], skips[part][1], fn)
            autotune._tables[slug] = base_table
            pdl._ON, decode_attention.MERGE_IN_KERNEL = True, True
            attention_oproj.ENABLED = fused_default
        return g, g.stage(1, [7], [ctx], [ctx], [0])

    def time_all(graphs: dict) -> dict[str, list[float]]:
        times = {name: [] for name in graphs}
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for g, bs in graphs.values():  # warm-up
            for _ in range(20):
                g.run(bs)
        for _ in range(args.rounds):
            for name, (g, bs) in graphs.items():
                torch.cuda.synchronize()
                start.record()
                for _ in range(args.replays):
                    g.run(bs)
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / args.replays * 1e3)
        return times

    graphs, specs = {}, {}
    for name, v in variants:
        try:
            graphs[name] = capture(v)
            specs[name] = v
        except Exception as exc:  # a config that does not compile: say so, go on
            print(f"variant {name} failed: {exc!r}"[:300], file=sys.stderr, flush=True)
    times = time_all(graphs)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    model_name = os.path.basename(os.path.normpath(args.model))
    print(f"{model_name}: weights {weight_bytes / 1e9:.3f} GB, roofline {roof_ms * 1e3:.1f} us "
          f"at {args.copy_tbs} TB/s; context {ctx}")
    report(times, roof_ms)
    result = {"model": args.model, "context": ctx, "weight_bytes": weight_bytes,
              "copy_tbs": args.copy_tbs, "rounds": args.rounds, "replays": args.replays,
              "variants": {n: {"us": times[n], "spec": specs[n]} for n in times}}
    if args.combine and "base" in med:
        # per shape key, the fastest variant that changes only that key's config, where it
        # beats the base by more than the base's own spread; then all of them together
        spread = max(times["base"]) - min(times["base"])
        best: dict[tuple[str, str], tuple[float, dict]] = {}
        for name, v in specs.items():
            cfg = v.get("cfg", {})
            keys = [(k, key) for k, entries in cfg.items() for key in entries]
            if set(v) != {"cfg"} or len(keys) != 1 or med[name] >= med["base"] - spread:
                continue
            (k, key), = keys
            if (k, key) not in best or med[name] < best[(k, key)][0]:
                best[(k, key)] = (med[name], cfg[k][key])
        combined: dict[str, dict] = {}
        for (k, key), (_, c) in best.items():
            combined.setdefault(k, {})[key] = c
        print(f"combined (base spread {spread:.1f} us): {json.dumps(combined)}")
        if combined:
            graphs = {"base": graphs["base"], "combined": capture({"cfg": combined})}
            times2 = time_all(graphs)
            report(times2, roof_ms)
            result["combined"] = {"cfg": combined, "us": times2}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


def report(times: dict[str, list[float]], roof_ms: float) -> None:
    print(f"{'variant':24} {'us/step':>8} {'min':>8} {'max':>8} {'of roof':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24} {med:8.1f} {min(ts):8.1f} {max(ts):8.1f} {roof_ms * 1e3 / med:8.1%}")


if __name__ == "__main__":
    main()
