"""The keys of the GGUF cache's stored parts (aiollm/model/derived_cache_keys.py): each must
change with the code that derives its part, or a part derived by an older aiollm is served
after an upgrade that derives it otherwise."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os

import torch

from aiollm.model import derived_cache, derived_cache_keys

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


def _config_deriving() -> set[str]:
    """weights_gguf's imports at every depth, but those of NOT_DERIVING, whose own imports
    are not followed either: the modules that derive a ModelConfig from a file."""
    closure, todo = set(), ["weights_gguf"]
    while todo:
        if (module := todo.pop()) not in closure | NOT_DERIVING:
            closure.add(module)
            todo.extend(_model_imports(module).values())
    assert {"gguf_gemma", "gguf_phi3", "gguf_metadata"} <= closure  # it sees what it must
    return closure


def test_the_configs_key_covers_every_module_weights_gguf_draws_on():
    """gguf_gemma.py decides Gemma files' config (bf785ec's final_logit_softcapping) but was
    in no key: a config stored before a change to it was served after it (a capped Gemma 3
    file stayed uncapped)."""
    assert _config_deriving() <= set(derived_cache_keys.CONFIG_CODE)


def test_the_weights_and_layout_keys_cover_the_config_they_are_derived_with():
    """iter_gguf reads the file's config (its architecture and head counts order the q/k
    rows, sandwich_norms names the norms): a config derived otherwise after an upgrade (a
    head count read by a changed gguf_metadata.py) gives other weights, so the weights'
    and the parameters' keys cover every module that derives it."""
    tree = _tree("weights_gguf")
    iter_gguf = next(n for n in tree.body
                     if isinstance(n, ast.FunctionDef) and n.name == "iter_gguf")
    assert any(isinstance(n, ast.Attribute) and n.attr == "config" for n in ast.walk(iter_gguf))
    assert _config_deriving() <= set(derived_cache_keys.WEIGHTS_CODE)
    assert _config_deriving() <= set(derived_cache_keys.LAYOUT_CODE)


def test_a_new_gguf_release_changes_every_keyed_parts_name(tmp_path, monkeypatch):
    """The gguf package parses the metadata and dequantizes the weights: parts stored under
    one release are not served under another (one that decodes a quantization type
    otherwise), as a change to aiollm's own code is not."""
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    (path := tmp_path / "m.gguf").write_bytes(b"GGUF")
    cache = derived_cache.GGUFCache(str(path))

    def names() -> list[str]:
        derived_cache_keys.source_key.cache_clear()
        return [cache.config_path, cache._weights_file, cache.params_path(torch.float32)]

    installed = importlib.metadata.version
    before = names()
    try:
        monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == "gguf"
                            else installed(name))
        after = names()
        monkeypatch.undo()
        assert names() == before
    finally:
        derived_cache_keys.source_key.cache_clear()
    assert all(a != b for a, b in zip(before, after)), (before, after)


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
    assert modules <= set(derived_cache_keys.WEIGHTS_CODE)
    assert modules <= set(derived_cache_keys.LAYOUT_CODE)


class _Tokenizer:
    """Stands in for a transformers tokenizer: save_pretrained writes one file."""

    chat_template = None

    def save_pretrained(self, directory: str, **options) -> None:
        os.makedirs(directory)
        with open(os.path.join(directory, "tokenizer.json"), "w") as f:
            f.write("{}")


def test_a_new_transformers_release_converts_the_tokenizer_again(tmp_path, monkeypatch):
    """transformers converts a GGUF file's tokenizer (its converter of each family changes
    between releases): a conversion stored under one release is not served under another,
    which stores its own; the last other copy stays for a version sharing the cache, older
    ones (an older aiollm's unkeyed tokenizer-v2) are removed."""
    monkeypatch.setenv("AIOLLM_CACHE_DIR", str(tmp_path / "cache"))
    (path := tmp_path / "m.gguf").write_bytes(b"GGUF")
    cache = derived_cache.GGUFCache(str(path))
    os.makedirs(older := os.path.join(cache.dir, "tokenizer-v2"))
    os.utime(older, (1, 1))
    installed = importlib.metadata.version
    try:
        derived_cache_keys.source_key.cache_clear()
        cache.store_tokenizer(_Tokenizer())
        first = cache.tokenizer_dir
        assert first is not None and os.path.isdir(older)
        monkeypatch.setattr(importlib.metadata, "version",
                            lambda name: "99.0" if name == "transformers" else installed(name))
        derived_cache_keys.source_key.cache_clear()
        assert cache.tokenizer_dir is None
        cache.store_tokenizer(_Tokenizer())
        assert cache.tokenizer_dir not in (None, first)
        assert sorted(n for n in os.listdir(cache.dir) if n.startswith("tokenizer")) == sorted(
            os.path.basename(p) for p in (first, cache.tokenizer_dir))
    finally:
        derived_cache_keys.source_key.cache_clear()
