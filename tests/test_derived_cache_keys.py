"""The keys of the GGUF cache's stored parts (aiollm/model/derived_cache.py): each must change
with the code that derives its part, or a part derived by an older aiollm is served after an
upgrade that derives it otherwise."""

from __future__ import annotations

import ast
import importlib.util

from aiollm.model import derived_cache

PACKAGE = "aiollm.model"
# weights_gguf's imports that decide no stored part: they find files and word errors
NOT_DERIVING = {"paths", "weights_hf"}


def _tree(module: str) -> ast.Module:
    with open(importlib.util.find_spec(f"{PACKAGE}.{module}").origin) as f:
        return ast.parse(f.read())


def _model_imports(module: str) -> dict[str, str]:
    """{name bound: the module of aiollm.model it comes from} of `module`'s imports, anywhere
    in its code (function-level ones too), in every spelling: `from aiollm.model.m import
    x`, `from aiollm.model import m`, `from .m import x`, `import aiollm.model.m`."""
    found = {}
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom):
            source = (PACKAGE + (f".{node.module}" if node.module else "") if node.level
                      else node.module or "")
            for a in node.names:
                if source == PACKAGE:  # the module itself is imported
                    found[a.asname or a.name] = a.name
                elif source.startswith(f"{PACKAGE}."):
                    found[a.asname or a.name] = source.split(".")[2]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(f"{PACKAGE}."):
                    found[a.asname or a.name] = a.name.split(".")[2]
    return found


def test_the_configs_key_covers_every_module_weights_gguf_draws_on():
    """gguf_gemma.py decides Gemma files' config (bf785ec's final_logit_softcapping) but was
    in no key: a config stored before a change to it was served after it (a capped Gemma 3
    file stayed uncapped). The config's key covers weights_gguf's imports at every depth,
    but those of NOT_DERIVING, whose own imports are not followed either."""
    closure, todo = set(), ["weights_gguf"]
    while todo:
        if (module := todo.pop()) not in closure | NOT_DERIVING:
            closure.add(module)
            todo.extend(_model_imports(module).values())
    assert {"gguf_gemma", "gguf_phi3", "gguf_metadata"} <= closure  # it sees what it must
    assert closure <= set(derived_cache._CONFIG_CODE)


def test_the_weights_and_layout_keys_cover_the_modules_iter_gguf_reads():
    """The weights' and the parameters' keys cover every module whose names iter_gguf reads,
    directly or through weights_gguf's constants and functions it calls (gguf_gemma.py's
    names of Gemma's extra norms, gguf_phi3.py's rope factors, which are no weights)."""
    tree = _tree("weights_gguf")
    imports = _model_imports("weights_gguf")
    defined = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            defined.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.FunctionDef):
            defined[node.name] = node

    read, todo = set(), ["iter_gguf"]
    while todo:
        if (name := todo.pop()) not in read:
            read.add(name)
            if name in defined:
                todo.extend(n.id for n in ast.walk(defined[name]) if isinstance(n, ast.Name))
    modules = {imports[n] for n in read if n in imports}
    assert {"gguf_gemma", "gguf_phi3"} <= modules  # the check sees what it is meant to
    assert modules <= set(derived_cache._WEIGHTS_CODE)
    assert modules <= set(derived_cache._LAYOUT_CODE)
