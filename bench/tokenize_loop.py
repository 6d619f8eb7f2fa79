"""What tokenizing a prompt costs the event loop: inline (the loop's thread runs the encode)
against on a worker thread (asyncio.to_thread; the tokenizer lets the GIL go while it
encodes, so the loop's thread pays only the hand-off). The API tokenizes text longer than
aiollm.engine.submission.TOKENIZE_INLINE_CHARS on a worker thread; this measures where that line
pays, with the default model's tokenizer on bench/serve.py's random-word prompts.

    python bench/tokenize_loop.py [--reps 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

TOKENS = (64, 128, 256, 512, 1024, 4096)  # 1,024: LightLLM's prompts


def measure(reps: int) -> list[dict]:
    import numpy as np
    from serve import PromptMaker

    from aiollm.model import load_tokenizer

    tok = load_tokenizer(None)
    maker = PromptMaker(np.random.default_rng(0), tok)
    rows = []

    async def off_loop(text: str) -> float:
        t0 = time.thread_time()  # the loop thread's CPU seconds only
        for _ in range(reps):
            await asyncio.to_thread(tok.encode, text)
        return (time.thread_time() - t0) / reps

    for n in TOKENS:
        text, _ = maker.make(n)
        chars = len(text)
        tok.encode(text)
        t0 = time.perf_counter()
        for _ in range(reps):
            ids = tok.encode(text)
        inline = (time.perf_counter() - t0) / reps
        hop = asyncio.run(off_loop(text))
        rows.append({"chars": chars, "tokens": len(ids), "inline_ms": round(1e3 * inline, 3),
                     "loop_ms_off_loop": round(1e3 * hop, 3)})
        print(f"{chars:6d} chars ({len(ids):5d} tokens): inline {1e3 * inline:7.3f} ms of the "
              f"loop; off the loop {1e3 * hop:6.3f} ms of the loop's thread")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from aiollm.engine.submission import TOKENIZE_INLINE_CHARS

    rows = measure(a.reps)
    commit = tree_commit()
    out = Path(a.out or result_path("tokenize-loop", commit=commit))
    write_report(out, {"bench": "tokenize_loop", "date": str(date.today()),
                       "commit": commit, "machine": "CPU (2 cores, shared)",
                       "inline_chars": TOKENIZE_INLINE_CHARS, "reps": a.reps,
                       "rows": rows}, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
