"""The fused decode GEMVs (aiollm/kernels/gemv.py) alone, against the copy bandwidth and cuBLAS.

    python bench/gemv.py bench/configs/llama-3.2-1b bench/configs/llama-3.1-8b --tune

For each layer GEMV of each model shape at 1, 2 and 4 rows: tunes its launch config
(--tune: AIOLLM_AUTOTUNE=2, written to aiollm/kernels/configs/<gpu>.json), checks it against
its PyTorch reference on the GPU, and times it (median of triton's do_bench, L2 flushed
between runs) beside the unfused kernels it replaces (the norm, cuBLAS's F.linear, rotary +
KV store or SiLU-and-mul). Bandwidth is weight bytes / time, against the same run's copy
bandwidth (bytes read + written by a 2 GiB device copy). Then a model check: the 1B-shaped
model (random weights) on a few decode steps of 1-4 rows, fused path against the layered one.
Writes gemv-DATE-DEVICE-COMMIT.json to --out-dir (COMMIT: bench/commit.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

ROWS = (1, 4, 2)  # 4 before 2: the m4 key (rows 2-4) is tuned on 4 rows


def shape_of(model_dir: str) -> dict:
    c = json.loads((Path(model_dir) / "config.json").read_text())
    hq, hkv = c["num_attention_heads"], c["num_key_value_heads"]
    d = c.get("head_dim") or c["hidden_size"] // hq
    return {"name": Path(model_dir).name, "H": c["hidden_size"], "I": c["intermediate_size"],
            "hq": hq, "hkv": hkv, "D": d, "V": c["vocab_size"],
            "eps": c.get("rms_norm_eps", 1e-5), "theta": c.get("rope_theta", 10000.0)}


def ops(s: dict, M: int, dev="cuda"):
    """(name, weight bytes, fused fn, unfused fn, check fn) of each GEMV of a layer + lm_head."""
    from aiollm.kernels import gemv, rms_norm, rotary_store_kv, silu_and_mul

    bf = torch.bfloat16
    H, I, hq, hkv, D, V, eps = s["H"], s["I"], s["hq"], s["hkv"], s["D"], s["V"], s["eps"]
    g = torch.rand(H, dtype=bf, device=dev) + 0.5
    res = torch.randn(M, H, device=dev)
    xb = torch.randn(M, H, dtype=bf, device=dev)
    w_qkv = torch.randn((hq + 2 * hkv) * D, H, dtype=bf, device=dev) * 0.02
    w_o = torch.randn(H, hq * D, dtype=bf, device=dev) * 0.02
    w_gu = torch.randn(2 * I, H, dtype=bf, device=dev) * 0.02
    w_dn = torch.randn(H, I, dtype=bf, device=dev) * 0.02
    w_lm = torch.randn(V, H, dtype=bf, device=dev) * 0.02
    o_in = torch.randn(M, hq * D, dtype=bf, device=dev)
    act = torch.randn(M, I, dtype=bf, device=dev)
    S = 4096
    kc = torch.zeros(S, hkv, D, dtype=bf, device=dev)
    vc = torch.zeros_like(kc)
    inv = 1.0 / s["theta"] ** (torch.arange(0, D, 2, device=dev).float() / D)
    fr = torch.arange(S, device=dev).float()[:, None] * inv
    cs = torch.cat((fr.cos(), fr.sin()), -1)
    pos = torch.randint(0, S, (M,), device=dev)
    loc = torch.randperm(S, device=dev)[:M]

    def qkv_unfused():
        h, _ = rms_norm(xb, g, eps, res)
        qkv = torch.nn.functional.linear(h, w_qkv)
        q, k, v = qkv.split([hq * D, hkv * D, hkv * D], -1)
        rotary_store_kv(q.view(M, hq, D), k.view(M, hkv, D), v.view(M, hkv, D), pos, cs, kc,
                        vc, loc)

    def gu_unfused():
        h, _ = rms_norm(xb, g, eps, res)
        silu_and_mul(torch.nn.functional.linear(h, w_gu))

    def lm_unfused():
        h, _ = rms_norm(xb, g, eps, res)
        if h.is_cuda:
            torch.mm(h, w_lm.t(), out_dtype=torch.float32)
        else:
            torch.nn.functional.linear(h, w_lm).float()

    def check_qkv():
        kc2, vc2 = kc.clone(), vc.clone()
        q = gemv.gemv_norm_rope_kv_triton(res, g, eps, w_qkv, None, pos, cs, kc, vc, loc, hq)
        ref = gemv.gemv_norm_rope_kv_ref(res, g, eps, w_qkv, None, pos, cs, kc2, vc2, loc, hq)
        return max(rel(q, ref), rel(kc[loc], kc2[loc]), rel(vc[loc], vc2[loc]))

    def lin(w, x):
        return lambda: torch.nn.functional.linear(x, w)

    return [
        ("qkv+norm+rope+kv", w_qkv.numel() * 2,
         lambda: gemv.gemv_norm_rope_kv_triton(res, g, eps, w_qkv, None, pos, cs, kc, vc, loc, hq),
         qkv_unfused, lin(w_qkv, xb), check_qkv),
        ("o+residual", w_o.numel() * 2,
         lambda: gemv.gemv_residual_triton(o_in, w_o, None, res), lin(w_o, o_in), lin(w_o, o_in),
         lambda: rel(gemv.gemv_residual_triton(o_in, w_o, None, res.clone()),
                     gemv.gemv_residual_ref(o_in, w_o, None, res.clone()))),
        ("gate_up+norm+silu", w_gu.numel() * 2,
         lambda: gemv.gemv_norm_silu_triton(res, g, eps, w_gu), gu_unfused, lin(w_gu, xb),
         lambda: rel(gemv.gemv_norm_silu_triton(res, g, eps, w_gu),
                     gemv.gemv_norm_silu_ref(res, g, eps, w_gu))),
        ("down+residual", w_dn.numel() * 2,
         lambda: gemv.gemv_residual_triton(act, w_dn, None, res), lin(w_dn, act), lin(w_dn, act),
         lambda: rel(gemv.gemv_residual_triton(act, w_dn, None, res.clone()),
                     gemv.gemv_residual_ref(act, w_dn, None, res.clone()))),
        ("lm_head+norm", w_lm.numel() * 2,
         lambda: gemv.gemv_norm_triton(res, g, eps, w_lm, None, torch.float32), lm_unfused,
         lin(w_lm, xb),
         lambda: rel(gemv.gemv_norm_triton(res, g, eps, w_lm, None, torch.float32),
                     gemv.gemv_norm_ref(res, g, eps, w_lm, None, torch.float32))),
    ]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _warm(args) -> int:
    """Worker: compile the kernels of `configs` at every op and row class (fills the on-disk
    Triton cache, so the tuner in the parent only loads them)."""
    dirs, configs = args
    os.environ["AIOLLM_AUTOTUNE"] = "0"
    from aiollm.kernels import autotune, gemv

    autotune.CONFIG_DIR = Path("/nonexistent")  # the default config is what runs
    n = 0
    for cfg in configs:
        gemv.DEFAULT = cfg
        autotune._resolved.clear()
        autotune._tables.clear()
        for d in dirs[:1]:  # kernel variants do not depend on the shape's sizes
            for M in (1, 4):
                if gemv._as_config(cfg) not in gemv._candidates(gemv._block_m(M), 1 << 14):
                    continue
                for op in ops(shape_of(d), M):
                    try:
                        op[2]()
                        n += 1
                    except Exception:  # noqa: BLE001 - a config may not compile
                        pass
    torch.cuda.synchronize()
    return n


def warm(dirs: list[str], procs: int) -> float:
    from aiollm.kernels import gemv

    t0 = time.monotonic()
    parts = [gemv.CANDIDATES[i::procs] for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_warm, [(dirs, p) for p in parts if p])
    return time.monotonic() - t0


def tune_attention(s: dict) -> dict:
    """Tune decode attention's missing batch-1/4 keys of this shape (AIOLLM_AUTOTUNE=1) at the
    context classes of bench/decode.py (graph max 264 -> n512) and of serving (n4096), and
    time the tuned kernel: {key: us}."""
    from triton.testing import do_bench

    from aiollm.kernels import pdl
    from aiollm.kernels.decode_attention import decode_attention_triton

    saved = os.environ.get("AIOLLM_AUTOTUNE")
    os.environ["AIOLLM_AUTOTUNE"] = "1"
    hq, hkv, D = s["hq"], s["hkv"], s["D"]
    out = {}
    try:
        for B in (1, 4):
            for max_len, ctx in ((264, 192), (4096, 1100)):
                S = B * max_len + 8
                kc = torch.randn(S, hkv, D, dtype=torch.bfloat16, device="cuda")
                vc = torch.randn_like(kc)
                r2t = torch.randperm(S, device="cuda")[: B * max_len].view(B, max_len).int()
                q = torch.randn(B, hq, D, dtype=torch.bfloat16, device="cuda")
                rows = torch.arange(B, dtype=torch.int32, device="cuda")
                lens = torch.full((B,), ctx, dtype=torch.int32, device="cuda")

                def fn():
                    return decode_attention_triton(q, kc, vc, r2t, rows, lens, D**-0.5, max_len)

                fn()
                with pdl.suspended():
                    out[f"b{B}-max{max_len}-ctx{ctx}"] = 1e3 * float(
                        do_bench(fn, warmup=10, rep=50, return_mode="median"))
    finally:
        if saved is None:
            del os.environ["AIOLLM_AUTOTUNE"]
        else:
            os.environ["AIOLLM_AUTOTUNE"] = saved
    return out


def model_check(model_dir: str, dev: str = "cuda", steps: int = 4) -> dict:
    """Greedy tokens and logits of a few decode steps at 1-4 rows: fused against layered."""
    from aiollm.model import load_model
    from aiollm.model.forward_batch import ForwardBatch
    from aiollm.model.kv_pool import KVPool, ReqToTokenTable

    lm = load_model(model_dir, load_format="dummy", dtype=torch.bfloat16, device=dev,
                    max_model_len=512)
    cfg, model = lm.config, lm.model
    out = {}
    for B in (1, 2, 3, 4):
        pool = KVPool(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 4096, torch.bfloat16,
                      torch.device(dev))
        table = ReqToTokenTable(8, 512, torch.device(dev))
        rows = [table.alloc_row() for _ in range(B)]
        plen = 37
        lens = {r: 0 for r in rows}

        def batch(chunks):
            rs = list(chunks)
            ext = [len(chunks[r]) for r in rs]
            pre = [lens[r] for r in rs]
            slots = pool.alloc(sum(ext))
            start = 0
            for r, n in zip(rs, ext):
                table.write_row(r, lens[r], slots[start : start + n].numpy())
                lens[r] += n
                start += n
            ids = torch.tensor([t for r in rs for t in chunks[r]])
            return ForwardBatch.build(ids, slots, torch.tensor(rs), torch.tensor(pre),
                                      torch.tensor(ext), table.table, pool,
                                      torch.device(dev))

        g = torch.Generator().manual_seed(B)
        prompts = {r: torch.randint(0, 30000, (plen,), generator=g).tolist() for r in rows}
        last = model(batch(prompts)).argmax(-1)
        errs, agree, n = [], 0, 0
        for _ in range(steps):
            fb = batch({r: [int(t)] for r, t in zip(rows, last.tolist())})
            model.fused_small = True
            fused = model(fb)
            model.fused_small = False
            layered = model(fb)
            model.fused_small = True
            errs.append(rel(fused, layered))
            agree += int((fused.argmax(-1) == layered.argmax(-1)).sum())
            n += B
            last = layered.argmax(-1)
        out[B] = {"max_rel_err_logits": max(errs), "top1_agree": agree / n}
    del model, lm
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tune", action="store_true", help="retune every gemv key (mode 2)")
    ap.add_argument("--warm-procs", type=int, default=0,
                    help="compile the candidates in this many processes first")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU (Triton's interpreter), a tiny shape, one call per timing")
    args = ap.parse_args()
    if args.tune:
        os.environ["AIOLLM_AUTOTUNE"] = "2"
    dev = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"

        def bench(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3

        device, copy_bw = "cpu-dry-run", 1e10
    else:
        from triton.testing import do_bench

        from aiollm.kernels import pdl

        def bench(fn) -> float:  # plain launches: pdl.suspended says why
            with pdl.suspended():
                return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))

        device = torch.cuda.get_device_name()
        x = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")
        y = torch.empty_like(x)
        copy_bw = 2 * x.numel() * 2 / (bench(lambda: y.copy_(x)) * 1e-3)
        del x, y
    print(f"{device}: copy {copy_bw / 1e12:.2f} TB/s")
    report = {"bench": "gemv", "date": str(date.today()), "device": device,
              "commit": tree_commit(), "copy_bw_bytes_per_s": copy_bw,
              "shapes": {}}
    if args.warm_procs:
        report["warm_s"] = warm(args.models, args.warm_procs)
        print(f"compiled the candidates in {report['warm_s']:.1f} s")
    print(f"{'shape':12} {'op':18} {'M':>2} {'fused us':>9} {'of copy':>8} {'unfused us':>10} "
          f"{'cuBLAS us':>9} {'of copy':>8} {'rel err':>8}")
    t0 = time.monotonic()
    for d in args.models:
        s = shape_of(d)
        if args.dry_run:
            s.update(H=64, I=96, hq=4, hkv=2, D=16, V=300)
        rows = []
        for M in ROWS:
            for name, nbytes, fused, unfused, cublas, check in ops(s, M, dev):
                fused()  # tunes the key (mode 2: once per process) before timing
                err = check()
                tf, tu, tc = bench(fused), bench(unfused), bench(cublas)
                r = {"op": name, "M": M, "weight_bytes": nbytes, "fused_us": tf * 1e3,
                     "unfused_us": tu * 1e3, "cublas_linear_us": tc * 1e3,
                     "fused_of_copy": nbytes / (tf * 1e-3) / copy_bw,
                     "cublas_of_copy": nbytes / (tc * 1e-3) / copy_bw, "rel_err": err}
                rows.append(r)
                print(f"{s['name']:12} {name:18} {M:2d} {r['fused_us']:9.1f} "
                      f"{r['fused_of_copy']:8.1%} {r['unfused_us']:10.1f} {r['cublas_linear_us']:9.1f} "
                      f"{r['cublas_of_copy']:8.1%} {err:8.1e}")
        attn = {} if args.dry_run else tune_attention(s)
        print(f"{s['name']}: decode attention (tuned), us: {attn}")
        report["shapes"][s["name"]] = {"shape": s, "ops": rows, "decode_attention_us": attn}
    report["tune_and_time_s"] = time.monotonic() - t0
    check_dir = args.models[0]
    if args.dry_run:  # a 2-layer model of the first shape's kind, small enough for the CPU
        import tempfile

        cfg = json.loads((Path(check_dir) / "config.json").read_text())
        cfg.update(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, num_hidden_layers=2, vocab_size=30000)
        check_dir = tempfile.mkdtemp()
        (Path(check_dir) / "config.json").write_text(json.dumps(cfg))
    report["model_check"] = {Path(args.models[0]).name: model_check(check_dir, dev)}
    print("model check (fused vs layered):", json.dumps(report["model_check"]))
    path = result_path("gemv", device=device, commit=report["commit"], out_dir=args.out_dir)
    write_report(path, report, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
