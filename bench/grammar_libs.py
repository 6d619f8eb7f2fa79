"""Grammar libraries on this CPU: xgrammar vs llguidance, the two candidates for aiollm's
constrained decoding (issue 17).

For each library and each vocabulary (the default model's 49,152 tokens, and a 128,256-token
vocabulary built from it by adding byte-level tokens that join two existing ones: Llama 3's
size, since no 128k tokenizer may be downloaded here) it measures:

- tokenizer set-up: once per served model;
- compile time of a few real JSON schemas, cold (first time) and cached (second time);
- mask time per token: advance the matcher by one token and fill its row of the token
  bitmask, along a valid JSON document of each schema (the mean over the document's tokens).

    python bench/grammar_libs.py            # prints a table, writes bench/results/grammar_libs-*.json
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

SCHEMAS = {
    # a tool call's arguments: the shape agent frameworks send on every request
    "weather_args": {
        "type": "object",
        "properties": {"city": {"type": "string"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                       "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city", "unit"], "additionalProperties": False},
    # nested objects, arrays, optional fields, bounded numbers, anyOf
    "order": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "customer": {"type": "object", "properties": {
                "name": {"type": "string"}, "email": {"type": "string", "format": "email"},
                "vip": {"type": "boolean"}}, "required": ["name"]},
            "items": {"type": "array", "minItems": 1, "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1},
                "price": {"type": "number", "minimum": 0}}, "required": ["sku", "qty"]}},
            "payment": {"anyOf": [
                {"type": "object", "properties": {"card": {"type": "string"}},
                 "required": ["card"]},
                {"type": "object", "properties": {"iban": {"type": "string"}},
                 "required": ["iban"]}]},
            "notes": {"type": ["string", "null"]}},
        "required": ["id", "customer", "items"]},
    # a wide flat record: many properties in a fixed order
    "profile": {
        "type": "object",
        "properties": {f"field_{i}": {"type": ["string", "integer", "boolean"][i % 3]}
                       for i in range(24)},
        "required": [f"field_{i}" for i in range(24)]},
}

DOCS = {
    "weather_args": {"city": "Paris", "unit": "celsius", "days": 3},
    "order": {"id": "ABC-1234", "customer": {"name": "Ada Lovelace", "vip": True},
              "items": [{"sku": "pen-blue", "qty": 3, "price": 1.5}, {"sku": "pad", "qty": 1}],
              "payment": {"card": "4111 1111 1111 1111"}, "notes": None},
    "profile": {f"field_{i}": ["text value %d" % i, i * 7, i % 2 == 0][i % 3] for i in range(24)},
}


def hf_tokenizers():
    """The default model's tokenizer, and one widened to 128,256 tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from aiollm.model import load_tokenizer

    base = load_tokenizer(None)
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    words = [p for p in pieces if p.isalpha() and len(p) > 2][:2000]
    nxt = max(vocab.values()) + 1
    target = 128256 - len(base.all_special_ids)
    for a in words:
        for b in words:
            if nxt >= target:
                break
            t = a + "Ġ" + b
            if t not in vocab:
                vocab[t] = nxt
                nxt += 1
        if nxt >= target:
            break
    wide = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   eos_token=base.eos_token, bos_token=base.bos_token)
    return {"49k": base, "128k": wide}


def bench_xgrammar(tok, eos: list[int]) -> dict:
    import torch
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), stop_token_ids=eos)
    setup = time.perf_counter() - t0
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)
    out = {"tokenizer_setup_s": setup, "schemas": {}}
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    for name, schema in SCHEMAS.items():
        s = json.dumps(schema)
        t0 = time.perf_counter()
        compiled = compiler.compile_json_schema(s)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiler.compile_json_schema(s)
        cached = time.perf_counter() - t0
        ids = tok.encode(json.dumps(DOCS[name]), add_special_tokens=False)
        m = xgr.GrammarMatcher(compiled)
        times = []
        for t in ids:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask, 0)
            ok = m.accept_token(t)
            times.append(time.perf_counter() - t0)
            assert ok, (name, t)
        torch.cuda.is_available()  # keep torch imported for the bitmask type
        out["schemas"][name] = _stats(cold, cached, times)
    return out


def bench_llguidance(tok, eos: list[int]) -> dict:
    import llguidance as llg
    import llguidance.hf
    import llguidance.torch

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=len(tok), eos_token=eos[0])
    setup = time.perf_counter() - t0
    out = {"tokenizer_setup_s": setup, "schemas": {}}
    mask = llguidance.torch.allocate_token_bitmask(1, lltok.vocab_size)
    for name, schema in SCHEMAS.items():
        grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        # llguidance builds its automaton lazily: "compile" is validation plus the matcher
        t0 = time.perf_counter()
        m = llg.LLMatcher(lltok, grammar)
        assert not m.is_error(), m.get_error()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        llg.LLMatcher(lltok, grammar)
        cached = time.perf_counter() - t0
        ids = tok.encode(json.dumps(DOCS[name]), add_special_tokens=False)
        times = []
        for t in ids:
            t0 = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(m, mask, 0)
            ok = m.consume_token(t)
            times.append(time.perf_counter() - t0)
            assert ok, (name, t, m.get_error())
        out["schemas"][name] = _stats(cold, cached, times)
    return out


def _stats(cold: float, cached: float, times: list[float]) -> dict:
    return {"compile_cold_ms": cold * 1e3, "compile_cached_ms": cached * 1e3,
            "mask_mean_us": statistics.fmean(times) * 1e6,
            "mask_p50_us": statistics.median(times) * 1e6,
            "mask_max_us": max(times) * 1e6, "tokens": len(times)}


def main() -> None:
    import importlib.metadata as md

    toks = hf_tokenizers()
    results = {}
    for vname, tok in toks.items():
        eos = [tok.eos_token_id]
        for lib, fn in (("xgrammar", bench_xgrammar), ("llguidance", bench_llguidance)):
            results[f"{lib}/{vname}"] = {"vocab": len(tok), "version": md.version(lib),
                                        **fn(tok, eos)}
    print(f"{'library/vocab':22} {'schema':13} {'cold ms':>9} {'cached ms':>9} "
          f"{'mask mean us':>12} {'mask max us':>11}")
    for key, r in results.items():
        for name, s in r["schemas"].items():
            print(f"{key:22} {name:13} {s['compile_cold_ms']:9.1f} {s['compile_cached_ms']:9.2f} "
                  f"{s['mask_mean_us']:12.1f} {s['mask_max_us']:11.1f}")
        print(f"{key:22} tokenizer set-up {r['tokenizer_setup_s'] * 1e3:.0f} ms")
    commit = tree_commit()
    now = datetime.now(timezone.utc)
    doc = {"date": now.isoformat(timespec="seconds"), "device": platform.processor() or "cpu",
           "cpus": __import__("os").cpu_count(), "commit": commit, "results": results}
    # the date as YYYYMMDD (UTC), as earlier grammar_libs-* files were named
    path = result_path("grammar_libs", commit=commit, day=f"{now:%Y%m%d}",
                       out_dir=Path(__file__).parent / "results")
    write_report(path, doc)
    print("wrote", path)


if __name__ == "__main__":
    main()
