"""xgrammar (with the transformers it imports: 1-2 s of CPU) is imported on a compile
thread, where a grammar is compiled, never by the step loop for a request that has no
grammar: the first request of a fresh server with logit_bias, allowed_token_ids or
bad_words alone imported it on the event loop (Grammars.accept and the step's mask), and
held /health and every other stream 1.9 s. Seen from a fresh interpreter, since an import
is the process's once."""

from __future__ import annotations

from conftest import tiny_llama
from script_run import run_script

SCRIPT = """
import asyncio, sys
from aiollm import Engine, SamplingParams
from aiollm.constraint import Constraint

async def main():
    async with Engine({model!r}, load_format="dummy", kv_tokens=256, max_model_len=64,
                      warm_up=False) as eng:
        for params in (SamplingParams(max_tokens=3, constraint=Constraint(logit_bias={{5: -1.0}})),
                       SamplingParams(max_tokens=3, constraint=Constraint(
                           allowed_token_ids=[5, 6, 7])),
                       SamplingParams(max_tokens=3, bad_words=["Hello"]),
                       SamplingParams(max_tokens=3, constraint=Constraint(
                           allowed_token_ids=[5, 6, 7], logit_bias={{6: 2.0}}),
                                      bad_words=["Hello"])):
            out = await eng.generate("Hi", params)
            assert out.completion_tokens == 3, out
            print("xgrammar" in sys.modules)

asyncio.run(main())
"""


def test_constraints_without_a_grammar_import_no_xgrammar(tmp_path):
    model = tiny_llama(tmp_path, max_position_embeddings=64)
    run = run_script(SCRIPT.format(model=model), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["False"] * 4, (run.stdout, run.stderr[-2000:])
