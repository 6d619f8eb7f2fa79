"""Host time a constrained decode step adds, on this CPU: the engine's grammar work per step.

B requests under bench/grammar_gpu.sh's JSON schema, with the 8B model's 128,256 logits over
the default model's 49,152-token tokenizer (the GPU benchmark's pairing). Each step does what
the engine loop does for them: `Grammars.masks()` (advance nothing, fill the bitmask rows) and
then `Grammars.accept()` of the tokens picked (the argmax of random logits under the mask).
`--baseline FILE` times another grammar.py the same way (e.g. `git show REV:aiollm/engine/
grammar.py > /tmp/old.py`), for a before/after.

    python bench/grammar_host.py [--batch 100] [--steps 64] [--baseline /tmp/old.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

# bench/grammar_gpu.sh's schema: an array of records that cannot end within the run
SCHEMA = json.dumps({
    "type": "array", "minItems": 200, "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8},
                       "qty": {"type": "integer", "minimum": 0, "maximum": 999},
                       "kind": {"enum": ["tool", "part", "kit"]}, "ok": {"type": "boolean"}},
        "required": ["name", "qty", "kind", "ok"], "additionalProperties": False}})
VOCAB = 128256  # Llama 3.1 8B's logits
STOP_IDS = [2, 128001, 128008, 128009]  # the tokenizer's eos and the 8B config's


def measure(module, batch: int, steps: int, seed: int = 0) -> dict:
    from aiollm.model import load_tokenizer
    from aiollm.model.logit_masks import apply_constraints
    from aiollm.model.sampling_tensors import SamplingTensors
    from aiollm.sampling_params import Constraint, GrammarSpec

    tok = load_tokenizer(None)
    kw = {"max_rows": batch} if "max_rows" in module.Grammars.__init__.__code__.co_varnames \
        else {}
    g = module.Grammars(tok, VOCAB, STOP_IDS, torch.device("cpu"), **kw)
    c = Constraint(GrammarSpec("json_schema", SCHEMA))
    g.compile_now(c.grammar)
    states = [g.start(c) for _ in range(batch)]
    gen = torch.Generator().manual_seed(seed)
    st = SamplingTensors(*([None] * 9), all_greedy=True, any_greedy=True, use_top_p=False,
                         use_min_p=False, trunc_width=0, max_top_logprobs=0,
                         want_logprobs=False)
    masks, accepts = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        m = g.masks(states)
        t1 = time.perf_counter()
        st.allowed = m.bitmask
        tokens = apply_constraints(torch.randn(batch, VOCAB, generator=gen), st).argmax(-1)
        tokens = tokens.numpy()
        t2 = time.perf_counter()
        status = g.accept(states, tokens)
        t3 = time.perf_counter()
        assert not any(status), status  # the schema cannot end, and no token is refused
        masks.append(t1 - t0)
        accepts.append(t3 - t2)
    ms = 1e3 * np.array(masks)
    ac = 1e3 * np.array(accepts)
    return {"masks_ms_median": float(np.median(ms)), "masks_ms_mean": float(ms.mean()),
            "accept_ms_median": float(np.median(ac)), "accept_ms_mean": float(ac.mean()),
            "step_ms_median": float(np.median(ms + ac))}


def _load(path: str):
    spec = importlib.util.spec_from_file_location("grammar_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--baseline", default=None, help="another grammar.py to time the same way")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from aiollm.engine import grammar

    runs = {}
    if args.baseline:
        runs["baseline"] = measure(_load(args.baseline), args.batch, args.steps)
    runs["current"] = measure(grammar, args.batch, args.steps)
    for label, r in runs.items():
        print(f"{label:9s} {args.batch} rows: masks {r['masks_ms_median']:.3f} ms, accept "
              f"{r['accept_ms_median']:.3f} ms, step {r['step_ms_median']:.3f} ms (medians)")
    commit = tree_commit()
    out = args.out or result_path("grammar-host", commit=commit)
    write_report(out, {"bench": "grammar_host", "date": str(date.today()),
                       "commit": commit, "machine": "CPU (2 cores, shared)",
                       "batch": args.batch, "steps": args.steps, "vocab": VOCAB,
                       "baseline": args.baseline, "runs": runs}, indent=2)


if __name__ == "__main__":
    main()
