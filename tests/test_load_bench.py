"""conftest.load_bench: loading a bench script for a test leaves installed packages first on
sys.path (bench scripts put bench/ in front of it for their sibling modules, and
bench/kernels.py then shadowed the `kernels` package that transformers imports: a later
test's GGUF tokenizer load failed, depending on test order)."""

import importlib.util
from pathlib import Path

from conftest import load_bench

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_bench_scripts_shadow_no_installed_package():
    load_bench("accuracy")  # puts bench/ in front of sys.path when it runs
    spec = importlib.util.find_spec("kernels")  # transformers depends on it
    assert spec is not None and not Path(spec.origin).resolve().is_relative_to(BENCH), spec
    assert importlib.util.find_spec("sim") is not None  # bench/serve.py's lazy sibling import
