"""The sampler's top-k draw: time of sample() for a decode batch, top_k 50 on every row.

Shapes: batch 64 and 256, vocabularies 151,936 (Qwen) and 49,152; temperature 0.7,
top_k 50, seeded rows, no logprobs. Three kinds of logits: "bf16" (random normals x 2 rounded
to bf16, then fp32, as a bf16 model's upcast logits: ties at the 50th value are common, and
the fraction of rows whose tie reaches past rank 50, "ties", where a draw on the top 50
alone leaves tied tokens out, is reported), "fp32" (the same without rounding: no ties) and
"masked" (the fp32 logits with all but 20 tokens of each row -inf, as a grammar step leaves
them: the cut-off ties at -inf, with tokens that never win). Forms timed:

- tree: aiollm.model.sampler.sample() of the tree the script runs in (main or a branch);
  since h187 the whole-row threshold draw below, with sample()'s own bookkeeping;
- candidates: the draw before r190, written out here (topk(50), a stats pass over the
  row, the Gumbel race on the 50 candidates only: it drops tokens tied with the 50th past
  them, so a row's draw depends on the batch's largest top_k), the reference for speed;
- threshold: the whole-row threshold draw (topk(50) for the floor, then one row scan
  giving argmax, logsumexp and the race over every token >= the floor, vLLM's form of
  top-k), with the row scan of this tree (which skips the noise of blocks below the
  floor): the batch-independent answer every form's draws are compared with.

Each form is timed eagerly (CUDA events around `--iters` back-to-back calls, host launch
cost included: the engine samples outside its graphs) and, device time alone, replayed from
a CUDA graph; medians of `--rounds`. Writes bench/results/sampler-DATE-DEVICE-COMMIT.json.
`--dry-run` runs tiny shapes on the CPU (wall-clock timing; checks the script, not speed).

    python bench/sampler.py [--rounds 7] [--iters 50] [--out-dir bench/results] [--dry-run]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aiollm.kernels.sampling import row_scan
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402
from results_file import result_path, write_report  # noqa: E402

TOP_K, TEMPERATURE = 50, 0.7


def params(b: int, vocab: int, device: str) -> SamplingTensors:
    """top_k 50, temperature 0.7 on every row, seeds 0..b-1, no logprobs."""
    f = lambda x: np.full(b, x, np.float32)  # noqa: E731
    return SamplingTensors.from_numpy(
        temperature=f(TEMPERATURE), top_p=f(1.0), top_k=np.full(b, TOP_K), min_p=f(0.0),
        repetition_penalty=f(1.0), presence_penalty=f(0.0), frequency_penalty=f(0.0),
        seed=np.arange(b), step=np.zeros(b, np.int64), top_logprobs=np.full(b, -1),
        vocab_size=vocab, device=device)


def floor_of(logits: torch.Tensor, st: SamplingTensors):
    """(values, ids) of the top 50 and [2, B] [1/T, the 50th value]."""
    vals, ids = logits.topk(TOP_K, dim=-1)
    return vals, ids, torch.stack([st.scale_floor[0], vals[:, -1]])


def candidates_form(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    vals, ids, scale_floor = floor_of(logits, st)
    row_scan(logits)  # argmax and logsumexp, as sample() computes them
    _, _, choice = row_scan(vals, scale_floor, st.keys, ids, stats=False)
    return ids.gather(1, choice[:, None]).squeeze(1)


def threshold_form(logits: torch.Tensor, st: SamplingTensors, vocab_ids) -> torch.Tensor:
    _, _, scale_floor = floor_of(logits, st)
    return row_scan(logits, scale_floor, st.keys, vocab_ids)[2]


def eager_us(fn, iters: int, cuda: bool) -> float:
    """Microseconds a call of fn, over `iters` back-to-back calls."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e6 / iters


def graph_us(fn, iters: int, rounds: int) -> float:
    """Median microseconds of one call of fn replayed from a CUDA graph of `iters` calls."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    times = []
    for _ in range(rounds):
        times.append(eager_us(g.replay, 1, True) / iters)
    return statistics.median(times)


def measure(b: int, vocab: int, kind: str, device: str, args) -> dict:
    gen = torch.Generator().manual_seed(b * 7 + vocab)
    logits = torch.randn(b, vocab, generator=gen) * 2.0
    if kind == "bf16":
        logits = logits.bfloat16().float()
    elif kind == "masked":  # 20 allowed tokens a row, fewer than top_k
        allowed = torch.rand(b, vocab, generator=gen).argsort(dim=-1)[:, :20]
        logits = torch.full_like(logits, float("-inf")).scatter_(1, allowed,
                                                                  logits.gather(1, allowed))
    logits = logits.to(device)
    st = params(b, vocab, device)
    vocab_ids = torch.arange(vocab, device=device)[None, :]
    kth = logits.topk(TOP_K + 1, dim=-1).values
    # the 51st ties the 50th (a finite tie: past a tie at -inf no token can win)
    ties = float(((kth[:, -1] >= kth[:, -2]) & kth[:, -1].isfinite()).float().mean())
    forms = {
        "tree": lambda: sample(logits, st).next_ids,
        "candidates": lambda: candidates_form(logits, st),
        "threshold": lambda: threshold_form(logits, st, vocab_ids),
    }
    # the threshold draw is the batch-independent answer; the tree should give it
    want = forms["threshold"]()
    row = {"batch": b, "vocab": vocab, "logits": kind, "tied_rows": ties}
    cuda = device == "cuda"
    for name, fn in forms.items():
        row[f"{name}_matches_threshold"] = float((fn() == want).float().mean())
        for _ in range(3):
            fn()  # compiles, fills caches
        times = [eager_us(fn, args.iters, cuda) for _ in range(args.rounds)]
        row[f"{name}_eager_us"] = statistics.median(times)
        if cuda:
            torch.cuda.synchronize()
            row[f"{name}_graph_us"] = graph_us(fn, args.iters, args.rounds)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes on the CPU: checks the script, times nothing useful")
    args = ap.parse_args()
    if args.dry_run:
        device, shapes, args.rounds, args.iters = "cpu", [(4, 1000), (16, 512)], 2, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run to check the script on the CPU")
        device = "cuda"
        shapes = [(b, v) for b in (64, 256) for v in (151_936, 49_152)]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []
    print(f"{'batch':>5} {'vocab':>7} {'logits':>6} {'ties':>5}  "
          + "  ".join(f"{f + ' eager/graph us':>26}" for f in ("tree", "candidates", "threshold")))
    for b, v in shapes:
        for kind in ("bf16", "fp32", "masked"):
            r = measure(b, v, kind, device, args)
            rows.append(r)
            cells = [f"{r[f + '_eager_us']:>12.1f} / {r.get(f + '_graph_us', float('nan')):>9.1f}"
                     for f in ("tree", "candidates", "threshold")]
            print(f"{b:>5} {v:>7} {kind:>6} {r['tied_rows']:>5.2f}  " + "  ".join(cells))
    report = {"device": name, "commit": tree_commit(dirty=True), "top_k": TOP_K,
              "temperature": TEMPERATURE, "rounds": args.rounds, "iters": args.iters,
              "dry_run": args.dry_run, "torch": torch.__version__, "rows": rows}
    path = write_report(result_path("sampler", device=name, commit=report["commit"],
                                    out_dir=args.out_dir), report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
