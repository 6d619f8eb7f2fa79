"""The on-disk cache of what aiollm derives from a GGUF file, keyed by the file's SHA-256.

Opening a GGUF file costs seconds that depend on nothing but its bytes: GGUFReader walks every
metadata field (the tokenizer's tens of thousands of strings included), the weights are
dequantized block by block in numpy, and transformers parses the file a second time to rebuild
its tokenizer. The first start stores the results; later starts read them back:

    <root>/gguf-v1/<sha256 of the file>/
        config-<code>.json the ModelConfig (JSON), with the warnings deriving it gave (a
                           "warnings" list: logged again at every load of the file); <code>:
                           a hash of the code that derives and stores it (config.py,
                           weights_gguf.py and the gguf_*.py modules it reads the metadata
                           with, this file: CONFIG_CODE, and the gguf package's version),
                           so a config derived by another version, without a check added
                           since, is derived again
        model-<code>.safetensors
                           float32 weights under transformers' names, llama.cpp's q/k row
                           permutation undone (for GPU or tensor-parallel loads; <code>: a
                           hash of weights_gguf.py, which derives them, of the modules
                           whose names and config it reads, and of the gguf package's
                           version, which dequantizes them: WEIGHTS_CODE)
        params-<layout>-<dtype>.safetensors
                           a one-rank CPU model's own parameters (q/k/v and gate/up fused),
                           memory-mapped as the parameters at the next start: no copy
                           (<layout>: a hash of the code that decides that layout and
                           its values, and of the gguf package's version)
        tokenizer-<code>/  the converted tokenizer, as transformers' save_pretrained writes it,
                           and the SHA-256 of each of its files (sha256.json): a damaged or
                           incomplete copy is removed and converted again, never served
                           (<code>: a hash of tokenizer.py and this file and of the versions
                           of transformers, which converts it, tokenizers and gguf)

root: $AIOLLM_CACHE_DIR, else $XDG_CACHE_HOME/aiollm, else ~/.cache/aiollm. AIOLLM_CACHE_DIR=off
turns the cache off. Each part is written under a temporary name and renamed into place, so
concurrent writers (the ranks of a tensor-parallel group, two servers) never read half a part;
the temporaries of writers that died are removed at the next open or write (cache_files.py).
Storing a keyed part keeps at most one copy of it under another key (the most recently
written: what the version before an upgrade stored, or what another version sharing the cache
uses) and removes the rest: upgrades would otherwise leave a dead copy of up to
MAX_WEIGHT_BYTES behind each time, and removing every other copy would make two versions that
share the cache delete each other's parts and derive them again at every start.
A file's SHA-256 (0.1 s per 100 MB) is computed once per (path, size, mtime, ctime, inode) and
kept in
<root>/digests/. A part that fails to read is ignored and derived again; a cache that cannot be
written only costs the next start its time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator

import torch

from aiollm.model.cache_files import discard, remove_stale_temporaries, write_atomic, write_text
from aiollm.model.config import ModelConfig, MoeConfig
from aiollm.model.derived_cache_keys import (CONFIG_CODE, LAYOUT_CODE, TOKENIZER_CODE,
                                            TOKENIZER_LIBRARIES, WEIGHTS_CODE, source_key)
from aiollm.model.rope_config import RopeConfig

log = logging.getLogger(__name__)

FORMAT = "gguf-v1"  # bump when what is stored, or how it is derived, changes
# Dequantized float32 weights take 4 bytes a parameter (4-8x the quantized file): models whose
# weights or parameters would exceed this are dequantized at every start, not stored.
MAX_WEIGHT_BYTES = 4 * 2**30
MANIFEST_FILE = "sha256.json"  # in the tokenizer's directory: {file name: its hex SHA-256}


def cache_root() -> str | None:
    """The cache directory, or None when AIOLLM_CACHE_DIR=off. A leading ~ is the home
    directory (a quoted '~/x' reaches us unexpanded)."""
    root = os.environ.get("AIOLLM_CACHE_DIR")
    if root is not None:
        if root.strip().lower() in ("", "off", "0", "none"):
            return None
        return os.path.expanduser(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aiollm")


def file_digest(path: str) -> str:
    """Hex SHA-256 of a file's content, remembered per (path, size, mtime, ctime, inode).
    The ctime is in the stamp because a rewrite in place that keeps the size and sets the old
    mtime back (cp -p, rsync -t, tar x) keeps the other four."""
    st = os.stat(path)
    stamp = (f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
             f"\0{st.st_ino}")
    root = cache_root()
    memo = (os.path.join(root, "digests", hashlib.sha256(stamp.encode()).hexdigest())
            if root else None)
    if memo is not None:
        try:
            with open(memo) as f:
                digest = f.read().strip()
            if len(digest) == 64:
                return digest
        except OSError:
            pass
    digest = _sha256(path)
    if memo is not None:
        write_atomic(memo, lambda tmp: write_text(tmp, digest))
    return digest


class GGUFCache:
    """The cache entry of one GGUF file (every method is a no-op when the cache is off)."""

    def __init__(self, gguf_path: str):
        root = cache_root()
        self.dir = (os.path.join(root, FORMAT, file_digest(gguf_path)) if root else None)
        if self.dir is not None:  # those of writers that died (cache_files.py)
            remove_stale_temporaries(self.dir)

    # -- config ---------------------------------------------------------------------------
    def load_config(self) -> tuple[ModelConfig, tuple[str, ...]] | None:
        """The stored config and the warnings stored with it, None when none is stored (or it
        cannot be read)."""
        if self.dir is None:
            return None
        try:
            with open(self.config_path) as f:
                d = json.load(f)
            warnings = d.get("warnings") if isinstance(d, dict) else None
            if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
                raise ValueError(f"warnings must be a list of strings, got {warnings!r}")
            return config_from_dict(d), tuple(warnings)
        except (OSError, ValueError, TypeError, KeyError) as e:
            if not isinstance(e, FileNotFoundError):
                log.warning("ignoring the cached config in %s: %s", self.dir, e)
            return None

    def store_config(self, config: ModelConfig, warnings: Iterable[str] = ()) -> None:
        """Store `config` and the `warnings` its derivation gave, for load_config."""
        if self.dir is not None:
            text = json.dumps({**config_to_dict(config), "warnings": list(warnings)}, indent=1)
            _write_keyed(self.config_path, lambda tmp: write_text(tmp, text), "config", ".json")

    @property
    def config_path(self) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, f"config-{source_key(CONFIG_CODE)}.json")

    # -- weights --------------------------------------------------------------------------
    @property
    def weights_path(self) -> str | None:
        if self.dir is None:
            return None
        path = self._weights_file
        if not os.path.exists(path):
            return None
        from safetensors import safe_open

        try:  # reads the header, and checks that the file covers every tensor it lists
            with safe_open(path, framework="pt"):
                return path
        except Exception as e:  # noqa: BLE001 (safetensors' own error type): derive again
            log.warning("removing the damaged cached weights %s: %s", path, e)
            try:
                os.remove(path)
            except OSError:
                pass
            return None

    def recording(self, tensors: Iterable[tuple[str, torch.Tensor]],
                  config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """Pass `tensors` (transformers name, float32 CPU tensor) through and, once all have
        passed, store them as the entry's weights. Files past MAX_WEIGHT_BYTES pass through
        unrecorded."""
        if self.dir is None or config.num_params() * 4 > MAX_WEIGHT_BYTES:
            yield from tensors
            return
        kept: dict[str, torch.Tensor] = {}
        for name, t in tensors:
            kept[name] = t
            yield name, t
        from safetensors.torch import save_file

        _write_keyed(self._weights_file,
                     lambda tmp: save_file({n: t.contiguous() for n, t in kept.items()}, tmp),
                     "model", ".safetensors")

    @property
    def _weights_file(self) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, f"model-{source_key(WEIGHTS_CODE)}.safetensors")

    # -- parameters of a CPU model --------------------------------------------------------
    def params_path(self, dtype: torch.dtype) -> str:
        assert self.dir is not None
        name = (f"params-{source_key(LAYOUT_CODE)}-{str(dtype).removeprefix('torch.')}"
                ".safetensors")
        return os.path.join(self.dir, name)

    def load_params(self, model: torch.nn.Module, dtype: torch.dtype) -> bool:
        """Make the parameters of `model` (one rank, on the CPU) memory-mapped views of the
        stored ones: no copy, the OS reads pages at first use. False, and `model` unchanged,
        when nothing matching its parameters' names, shapes and dtype is stored."""
        if self.dir is None or not os.path.exists(path := self.params_path(dtype)):
            return False
        from safetensors import safe_open

        expected = dict(model.named_parameters())
        try:
            with safe_open(path, framework="pt") as f:
                if set(f.keys()) != set(expected):
                    return False
                stored = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:  # a damaged file (safetensors' own error type): derive again
            log.warning("ignoring the cached parameters %s: %s", path, e)
            return False
        if any(t.shape != expected[n].shape or t.dtype != expected[n].dtype
               for n, t in stored.items()):
            return False
        for name, t in stored.items():
            module, _, leaf = name.rpartition(".")
            # the file is mapped copy-on-write: a write to a parameter never reaches it
            model.get_submodule(module)._parameters[leaf] = torch.nn.Parameter(
                t, requires_grad=False)
        return True

    def store_params(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        """Store the parameters of a filled one-rank CPU model in its own layout (fused q/k/v
        and gate/up, the run dtype), for load_params. Models past MAX_WEIGHT_BYTES are not."""
        params = {n: p.detach().contiguous() for n, p in model.named_parameters()}
        if self.dir is None or sum(p.nbytes for p in params.values()) > MAX_WEIGHT_BYTES:
            return
        from safetensors.torch import save_file

        _write_keyed(self.params_path(dtype), lambda tmp: save_file(params, tmp), "params",
                     f"-{str(dtype).removeprefix('torch.')}.safetensors")

    # -- tokenizer ------------------------------------------------------------------------
    @property
    def tokenizer_dir(self) -> str | None:
        """The stored tokenizer's directory, or None when there is none or when its files are
        not those stored with it (a damaged copy, which is removed so that it is stored again)."""
        if self.dir is None:
            return None
        path = self._tokenizer_path
        if not os.path.isdir(path):
            return None
        if _matches_manifest(path):
            return path
        log.warning("converting the tokenizer again: the cached one in %s is damaged, or was "
                    "stored without its files' SHA-256 (by an older aiollm)", path)
        discard(path)
        return None

    def store_tokenizer(self, tokenizer) -> None:
        """Store a transformers tokenizer with save_pretrained, and its files' SHA-256.
        Named chat templates go into tokenizer_config.json (transformers' legacy list,
        which it and ServingTokenizer read): its own layout puts them in a subdirectory,
        and the manifest lists files."""
        def write(tmp: str) -> None:
            tokenizer.save_pretrained(
                tmp, save_jinja_files=not isinstance(tokenizer.chat_template, dict))
            digests = {name: _sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
            write_text(os.path.join(tmp, MANIFEST_FILE), json.dumps(digests, indent=1))

        if self.dir is not None:
            _write_keyed(self._tokenizer_path, write, "tokenizer", "")

    @property
    def _tokenizer_path(self) -> str:
        assert self.dir is not None
        key = source_key(TOKENIZER_CODE, TOKENIZER_LIBRARIES)
        return os.path.join(self.dir, f"tokenizer-{key}")


def config_to_dict(config: ModelConfig) -> dict:
    if config.torch_dtype is not None:
        raise ValueError("only GGUF configs (no checkpoint dtype) are cached")
    d = dataclasses.asdict(config)
    del d["torch_dtype"]
    return d


def config_from_dict(d: dict) -> ModelConfig:
    """The ModelConfig of config_to_dict's dict (its stored form: the "warnings" stored
    beside it are load_config's)."""
    d = dict(d)
    d.pop("warnings", None)
    ropes = []
    for stored in (d.pop("rope"), d.pop("rope_local", None)):  # Gemma 3's second: None here
        rope = None if stored is None else dict(stored)
        for key in ("freq_factors", "short_factor", "long_factor"):  # JSON gave lists
            if rope is not None and rope.get(key) is not None:
                rope[key] = tuple(rope[key])
        ropes.append(None if rope is None else RopeConfig(**rope))
    moe = d.pop("moe")
    if moe is not None:
        moe = MoeConfig(**{**moe, "dense_layers": tuple(moe["dense_layers"])})
    if d.get("sliding_layers") is not None:  # a JSON list
        d["sliding_layers"] = tuple(d["sliding_layers"])
    return ModelConfig(**d, rope=ropes[0], rope_local=ropes[1], moe=moe, torch_dtype=None)


def _sha256(path: str) -> str:
    """Hex SHA-256 of a file's content. hashlib.file_digest is Python 3.11's; on 3.10 the
    file is read in 1 MiB blocks."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        while block := f.read(1 << 20):
            h.update(block)
        return h.hexdigest()


def _matches_manifest(directory: str) -> bool:
    """Whether the files in `directory` are exactly those its MANIFEST_FILE lists, with their
    listed SHA-256 (a few milliseconds for a tokenizer's few MB)."""
    try:
        with open(os.path.join(directory, MANIFEST_FILE)) as f:
            digests = json.load(f)
        names = set(os.listdir(directory)) - {MANIFEST_FILE}
        return (isinstance(digests, dict) and names == set(digests)
                and all(_sha256(os.path.join(directory, n)) == digests[n] for n in names))
    except (OSError, ValueError):
        return False


KEPT_OTHER_COPIES = 1  # copies of a part under other keys that a store leaves in place


def _write_keyed(final: str, write: Callable[[str], object], prefix: str, suffix: str) -> None:
    """write_atomic, then remove the entry's other files or directories (a tokenizer's)
    named prefix*suffix (the same part stored under another code's key, or under the unkeyed
    name older versions used) but the KEPT_OTHER_COPIES most recently written. A reader that
    has a removed file open or memory-mapped keeps reading it (POSIX unlink)."""
    write_atomic(final, write)
    if not os.path.exists(final):
        return  # not written: leave what is there
    parent, keep = os.path.dirname(final), os.path.basename(final)
    others = []
    for name in os.listdir(parent):
        if name != keep and name.startswith(prefix) and name.endswith(suffix):
            try:
                others.append((os.stat(os.path.join(parent, name)).st_mtime_ns, name))
            except OSError:  # removed meanwhile
                pass
    for _, name in sorted(others, reverse=True)[KEPT_OTHER_COPIES:]:
        if os.path.isdir(path := os.path.join(parent, name)):  # a tokenizer's
            discard(path)
            continue
        try:
            os.remove(path)
        except OSError as e:  # another process removed it first, or read-only
            log.debug("could not remove %s: %s", name, e)
