"""Bench scripts put bench/ in front of sys.path (for their sibling modules), in their own
processes and in the tests that load them (conftest.load_bench): so no script may share its
name with an installed module. bench/kernels.py did, with the `kernels` package transformers
depends on: transformers' import of it failed, and with it a later test's GGUF tokenizer load
(depending on which test files ran together) and bench scripts that load a model."""

import importlib.machinery
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_no_bench_script_shadows_an_installed_module():
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    clashes = {}
    for script in sorted(BENCH.glob("*.py")):
        name = script.stem
        spec = (name in sys.builtin_module_names
                or importlib.machinery.PathFinder.find_spec(name, elsewhere))
        if spec:
            clashes[name] = getattr(spec, "origin", "built in")
    assert not clashes, f"bench scripts named like installed modules: {clashes}"
