"""Host cost of the prefix cache: match and insert of one long prompt in a populated tree.

The tree holds `branches` prompts that share the first half of an 8k-token prompt and then
branch off at random points (so the walk passes several split nodes); we time, per request,
what the planner does: match at admission (longest prefix, all but the last token), lock,
insert at release, unlock. Also the one-time conversion of the prompt's id list to an array
(done when the request is submitted, not by the planner).

Usage: python bench/prefix_cache.py [--prompt-len 8192] [--branches 1,8,64] [--repeats 200]
Writes bench/results/prefix_cache_host-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from aiollm.engine.prefix_cache import RadixTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import result_path, write_report  # noqa: E402  (bench/ is scripts, not a package)


def measure(prompt_len: int = 8192, branches: int = 64, repeats: int = 200,
            seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tree = RadixTree()
    prompt = rng.integers(0, 128_000, prompt_len, dtype=np.int32)
    next_slot = 0
    for _ in range(branches):  # other prompts: a shared part, then their own tokens
        cut = int(rng.integers(prompt_len // 2, prompt_len))
        other = np.concatenate([prompt[:cut], rng.integers(0, 128_000, 500, dtype=np.int32)])
        node, n, _ = tree.match(other)
        slots = np.arange(next_slot, next_slot + other.shape[0] - n, dtype=np.int64)
        next_slot += slots.shape[0]
        tree.insert(node, other[n:], slots)
    # the request: its prompt computed once, then matched, locked, released, many times
    node, n, _ = tree.match(prompt)
    tree.insert(node, prompt[n:], np.arange(next_slot, next_slot + prompt_len - n))
    as_list = prompt.tolist()
    t_conv, t_match, t_release = [], [], []
    hit = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        arr = np.asarray(as_list, dtype=np.int32)
        t1 = time.perf_counter()
        node, hit, slots = tree.match(arr, prompt_len - 1)
        tree.lock(node)
        t2 = time.perf_counter()
        _, there = tree.insert(node, arr[hit:], np.arange(1, dtype=np.int64) + 10**9)
        tree.unlock(node)
        t3 = time.perf_counter()
        assert there == prompt_len - hit and slots.shape[0] == hit
        t_conv.append(t1 - t0)
        t_match.append(t2 - t1)
        t_release.append(t3 - t2)

    def us(t):  # the median: a shared machine's other work shows up in the mean
        return float(np.median(t)) * 1e6

    return {"prompt_len": prompt_len, "branches": branches, "repeats": repeats,
            "hit_tokens": hit, "tree_tokens": tree.size, "path_nodes": depth(tree, node),
            "match_us": us(t_match), "release_us": us(t_release),
            "list_to_array_us": us(t_conv)}


def depth(tree: RadixTree, node) -> int:
    n = 0
    while node is not tree.root:
        n, node = n + 1, node.parent
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-len", type=int, default=8192)
    ap.add_argument("--branches", default="1,8,64", help="comma-separated: one run each")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    runs = []
    for b in (int(x) for x in args.branches.split(",")):
        res = measure(args.prompt_len, b, args.repeats)
        runs.append(res)
        print(f"{args.prompt_len}-token prompt, {b} other prompts branching off it: "
              f"match+lock {res['match_us']:.1f} µs, insert+unlock {res['release_us']:.1f} µs "
              f"per request, median ({res['path_nodes']} nodes on the path; list->array at "
              f"submission {res['list_to_array_us']:.1f} µs)")
    date = time.strftime("%Y-%m-%d")
    out = result_path("prefix_cache_host", day=date,
                      out_dir=Path(__file__).resolve().parent / "results")
    write_report(out, {"bench": "prefix_cache_host", "date": date,
                       "cpu": platform.processor() or platform.machine(),
                       "load_1min": os.getloadavg()[0], "runs": runs})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
